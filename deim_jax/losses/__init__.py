"""Losses: the DEIM criterion (``build(cfg)``, ``Criterion``), its loss terms and matchings, and
the Hungarian matcher.

    criterion.py  Criterion: matching, the loss table (LOSS_MAP) name -> function, weighting
    terms.py      the individual loss functions (MAL, VFL, focal, boxes, FGL, DDF)
    matching.py   union set, denoising matching, the gathers of matched targets
    matcher.py    Hungarian matcher (cost, exact assignment on device or with scipy)
"""

from deim_jax.losses.criterion import LOSS_MAP, Criterion, build  # noqa: F401
from deim_jax.losses.matching import dn_matching, union_matching  # noqa: F401
