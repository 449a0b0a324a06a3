"""The demo model trained with the D-FINE baseline recipe, to compare with ``--config=demo``.

    python -m deim_jax.main --config=demo_baseline --workdir=runs/demo_baseline

Same as ``demo``: the model (DEIM-D-FINE-N with a 64-wide encoder/decoder, SiLU), the demo set,
256 px, batch 8, 16 epochs, evaluation points, lr 1e-3, EMA, stage 2 from epoch 14. What the
baseline recipe (``configs/dfine.py``, recipe ``baseline``) changes:

* classification loss VFL (alpha 0.75, gamma 2) instead of MAL (gamma 1.5);
* no Dense O2O: no Mosaic, no MixUp; photometric distortion, zoom-out and IoU crop until epoch 14;
* lr: linear warm-up (50 steps here), then constant (no flat-cosine decay).
"""

from configs import demo, dfine


def get_config(arg=None):
    c = dfine.get_config("n,baseline")
    c.name = "demo_baseline"
    c.model.decoder.activation = c.model.decoder.mlp_act = "silu"  # the demo model, not D-FINE's ReLU
    demo.narrow_dfine(c)
    demo.demo_recipe(c)
    stop = c.data.stop_epoch
    c.data.policy_epochs, c.data.mixup_epochs = (0, 0, stop), (0, 0)
    c.data.mosaic_prob = c.data.mixup_prob = 0.0
    return c
