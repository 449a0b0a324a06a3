"""DEIM-RT-DETRv2-R101 on COCO (`--config=rtdetrv2_r101`); `--config=rtdetrv2_r101_baseline` is the RT-DETRv2 baseline."""

from configs import rtdetrv2


def get_config(arg=None):
    return rtdetrv2.get_config("r101" if not arg else f"r101,{arg}")
