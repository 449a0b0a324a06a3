"""Model EMA as the official ``ModelEMA`` (deim_dfine.md §9.4).

``d(u) = decay * (1 - exp(-u / warmups))`` for the ``u``-th update (``u = t + 1`` after the optimizer
step of 0-based iteration ``t``), ``v <- d * v + (1 - d) * v_model`` over every floating-point leaf
(parameters and batch statistics). Integer leaves (``num_batches_tracked``) are not averaged: the
EMA keeps its own value. The decay function always uses the constructor's ``decay`` (0.9999): the
official "restart decay" assignments are no-ops. Warm-ups: 1000 (DEIM-D-FINE), 2000 (DEIM-RT-DETRv2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def warmup_updates(ema_cfg, steps_per_epoch: int) -> float:
    """The warm-up in updates: ``ema_cfg.warmup_epochs * steps_per_epoch`` when that is set (at
    least 1), else ``ema_cfg.warmups``."""
    epochs = ema_cfg.get("warmup_epochs")
    if epochs is None:
        return float(ema_cfg.warmups)
    return max(1.0, float(epochs) * int(steps_per_epoch))


def ema_decay(updates, decay: float = 0.9999, warmups: float = 1000.0):
    """Decay of the ``updates``-th EMA update (1-based), float32; ``-expm1`` keeps small values accurate."""
    u = jnp.asarray(updates).astype(jnp.float32)
    return (jnp.float32(decay) * -jnp.expm1(-u / jnp.float32(warmups))).astype(jnp.float32)


def ema_apply(ema_tree, new_tree, d):
    """``v <- d * v + (1 - d) * new`` on floating leaves; integer/bool leaves keep the EMA's value.

    ``optax.incremental_update(a, b, s)`` computes ``s * a + (1 - s) * b``; with ``a`` = the EMA and
    ``s = d`` that is the official formula term for term (bit-equal to ``v * d + (1 - d) * new``,
    tests/test_ema.py).
    """
    d = jnp.asarray(d, jnp.float32)

    def one(v, n):
        v = jnp.asarray(v)
        if not jnp.issubdtype(v.dtype, jnp.floating):
            return v
        return optax.incremental_update(v, jnp.asarray(n).astype(v.dtype), d.astype(v.dtype)).astype(v.dtype)

    return jax.tree_util.tree_map(one, ema_tree, new_tree)


def ema_update(ema_vars, new_vars, updates, decay: float = 0.9999, warmups: float = 1000.0):
    """EMA of a variables tree (e.g. ``{'params': ..., 'batch_stats': ...}``) after update number ``updates``.

    ``updates`` is the 1-based count of this update (``t + 1`` after optimizer step ``t``).
    """
    return ema_apply(ema_vars, new_vars, ema_decay(updates, decay, warmups))
