"""DEIM-RT-DETRv2-R18 on COCO (`--config=rtdetrv2_r18`); `--config=rtdetrv2_r18_baseline` is the RT-DETRv2 baseline."""

from configs import rtdetrv2


def get_config(arg=None):
    return rtdetrv2.get_config("r18" if not arg else f"r18,{arg}")
