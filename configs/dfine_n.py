"""DEIM-D-FINE-N on COCO (`--config=dfine_n`); `--config=dfine_n_baseline` is the original D-FINE-N recipe."""

from configs import dfine


def get_config(arg=None):
    return dfine.get_config("n" if not arg else f"n,{arg}")
