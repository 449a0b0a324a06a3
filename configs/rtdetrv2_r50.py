"""DEIM-RT-DETRv2-R50 on COCO (`--config=rtdetrv2_r50`); `--config=rtdetrv2_r50_baseline` is the RT-DETRv2 baseline."""

from configs import rtdetrv2


def get_config(arg=None):
    return rtdetrv2.get_config("r50" if not arg else f"r50,{arg}")
