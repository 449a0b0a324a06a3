"""DEIM-D-FINE-L on COCO (`--config=dfine_l`); `--config=dfine_l_baseline` is the original D-FINE-L recipe."""

from configs import dfine


def get_config(arg=None):
    return dfine.get_config("l" if not arg else f"l,{arg}")
