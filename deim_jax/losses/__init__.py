"""Losses: the DEIM criterion (``build(cfg)``, ``Criterion``) and the Hungarian matcher."""

from deim_jax.losses.criterion import Criterion, build, dn_matching, union_matching  # noqa: F401
