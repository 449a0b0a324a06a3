"""DEIM-RT-DETRv2-R50M on COCO (`--config=rtdetrv2_r50m`); `--config=rtdetrv2_r50m_baseline` is the RT-DETRv2 baseline."""

from configs import rtdetrv2


def get_config(arg=None):
    return rtdetrv2.get_config("r50m" if not arg else f"r50m,{arg}")
