"""DEIM-D-FINE-S on COCO (`--config=dfine_s`); `--config=dfine_s_baseline` is the original D-FINE-S recipe."""

from configs import dfine


def get_config(arg=None):
    return dfine.get_config("s" if not arg else f"s,{arg}")
