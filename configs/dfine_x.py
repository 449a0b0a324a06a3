"""DEIM-D-FINE-X on COCO (`--config=dfine_x`); `--config=dfine_x_baseline` is the original D-FINE-X recipe."""

from configs import dfine


def get_config(arg=None):
    return dfine.get_config("x" if not arg else f"x,{arg}")
