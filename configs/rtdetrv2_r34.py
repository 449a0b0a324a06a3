"""DEIM-RT-DETRv2-R34 on COCO (`--config=rtdetrv2_r34`); `--config=rtdetrv2_r34_baseline` is the RT-DETRv2 baseline."""

from configs import rtdetrv2


def get_config(arg=None):
    return rtdetrv2.get_config("r34" if not arg else f"r34,{arg}")
