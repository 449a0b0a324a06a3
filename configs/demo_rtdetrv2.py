"""A small DEIM-RT-DETRv2 (PResNet-18vd, narrow encoder/decoder) on the generated demo set.

    python -m deim_jax.main --config=demo_rtdetrv2 --workdir=runs/demo_rtdetrv2

The RT-DETRv2 family on the same demo recipe as ``demo`` (MAL, own-matching box losses, no
FDR); heavier than ``demo`` (an 11M-parameter backbone), so it runs fewer epochs by default.
"""

from configs import rtdetrv2
from configs.demo import demo_recipe


def get_config(arg=None):
    c = rtdetrv2.get_config("r18")
    c.name = "demo_rtdetrv2"
    enc = c.model.encoder
    enc.hidden_dim = 64
    enc.dim_feedforward = 256
    dec = c.model.decoder
    dec.feat_channels = (64, 64, 64)
    dec.hidden_dim = 64
    dec.dim_feedforward = 256
    return demo_recipe(c, epochs=8)
