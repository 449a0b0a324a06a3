"""DEIM-D-FINE-M on COCO (`--config=dfine_m`); `--config=dfine_m_baseline` is the original D-FINE-M recipe."""

from configs import dfine


def get_config(arg=None):
    return dfine.get_config("m" if not arg else f"m,{arg}")
