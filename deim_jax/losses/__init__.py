"""Losses: the DEIM criterion (``build(cfg)``, ``Criterion``), the Hungarian matcher, FDR helpers."""

from deim_jax.losses import fdr  # noqa: F401
from deim_jax.losses.criterion import Criterion, build, dn_matching, union_matching  # noqa: F401
