"""Learning-rate schedules of the official trainers, including their off-by-one quirks.

``FlatCosine`` (DEIM, deim_dfine.md §9.3), per group with base lr ``lr0`` and ``lr_min = lr_gamma * lr0``::

    lr(it) = lr0 * (it / Wu)^2                                   it <= Wu            (quadratic warm-up)
           = lr0                                                 Wu < it <= F        (flat)
           = lr_min                                              it >= T - A         (no-aug phase)
           = lr_min + (lr0 - lr_min) * 0.5 * (1 + cos(pi * (it - F) / (T - F - A)))   otherwise

with ``T = epochs * iters``, ``F = flat_epoch * iters``, ``A = no_aug_epoch * iters``, ``Wu = warmup_iter``
(or ``round(warmup_epochs * iters)`` when ``warmup_epochs`` is set).

Quirk: the official loop steps the scheduler *after* the optimizer step, so the optimizer step of
iteration ``t`` uses ``lr(t - 1)``; the very first step (``t = 0``) uses ``lr0 / D`` where ``D`` is
the duration of a ``LinearWarmup`` object that the trainer builds (which sets every group to
``lr0 / D`` at construction) and then never steps again: ``D = 500`` for the DEIM-D-FINE configs,
``D = 2000`` for DEIM-RT-DETRv2 (``cfg.schedule.first_step_divisor``). So step 1 runs at ``lr(0) = 0``.

``linear_warmup`` (the original D-FINE recipe): the LinearWarmup object is stepped after every
optimizer step, so step ``t`` uses ``lr0 * min(1, (t + 1) / warmup_iter)``, then constant.

All functions are ``jnp`` and work on traced (jit) integer steps. Values are float32.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import jax.numpy as jnp

from deim_jax.errors import ConfigError

log = logging.getLogger(__name__)


def warn_on_phases_past_the_end(cfg: Any) -> None:
    """Log a warning when the run's epochs end before its phases do (e.g. ``--config.epochs`` set
    lower without scaling the recipe's phase epochs): augmentation would never stop, stage 2 never run."""
    epochs, stop = int(cfg.epochs), int(cfg.data.stop_epoch)
    if stop >= epochs:
        log.warning("config.data.stop_epoch=%d >= config.epochs=%d: augmentation runs to the last epoch, the "
                    "no-augmentation phase and stage 2 never start (scale the phases with the epochs; "
                    "configs/finetune_dfine.py does: --config=configs/finetune_dfine.py:s,epochs=%d)",
                    stop, epochs, epochs)


def warmup_iters(cfg: Any, iters_per_epoch: int) -> int:
    """``warmup_epochs * iters_per_epoch`` (rounded, at least 1) when ``warmup_epochs`` is set, else
    ``warmup_iter``: a warm-up in epochs keeps its length on a data set of any size."""
    epochs = cfg.get("warmup_epochs")
    if epochs is None:
        return int(cfg["warmup_iter"])
    return max(1, round(float(epochs) * int(iters_per_epoch)))


def schedule_constants(cfg: Any, iters_per_epoch: int, epochs: int) -> dict:
    """Resolved constants ``{name, warmup_iter, first_step_divisor}`` plus, for ``flatcosine``,
    ``{lr_gamma, total_iter, flat_iter, no_aug_iter}``.

    ``cfg`` is the ``schedule`` config (a ConfigDict, or a dict) with ``name``, ``warmup_iter``,
    ``first_step_divisor`` and, for ``flatcosine``, ``flat_epoch``, ``no_aug_epoch``, ``lr_gamma``;
    a missing field is an error. ``iters_per_epoch`` / ``epochs`` are the run's (``constant`` and
    ``linear_warmup`` ignore them).
    """
    name = cfg["name"]
    out = dict(name=name, first_step_divisor=float(cfg["first_step_divisor"]))
    if name in ("flatcosine", "linear_warmup"):
        out["warmup_iter"] = warmup_iters(cfg, iters_per_epoch)
    if name == "flatcosine":
        out.update(
            lr_gamma=float(cfg["lr_gamma"]),
            total_iter=int(iters_per_epoch) * int(epochs),
            flat_iter=int(iters_per_epoch) * int(cfg["flat_epoch"]),
            no_aug_iter=int(iters_per_epoch) * int(cfg["no_aug_epoch"]),
        )
    elif name not in ("linear_warmup", "constant"):
        raise ConfigError(f"cfg.schedule.name={name!r}: not one of ['flatcosine', 'linear_warmup', 'constant']")
    return out


def flat_cosine_factor(it, warmup_iter: int, flat_iter: int, total_iter: int, no_aug_iter: int, lr_gamma: float):
    """``lr(it) / lr0`` of ``FlatCosineLRScheduler`` (the value ``scheduler.step(it)`` sets), float32."""
    it = jnp.asarray(it)
    itf = it.astype(jnp.float32)
    warm = (itf / float(warmup_iter)) ** 2
    span = float(total_iter - flat_iter - no_aug_iter)
    if span == 0.0:  # degenerate config; the official code would divide by zero here
        span = 1.0
    cos = lr_gamma + (1.0 - lr_gamma) * 0.5 * (1.0 + jnp.cos(math.pi * ((it - flat_iter).astype(jnp.float32) / span)))
    return jnp.where(
        it <= warmup_iter,
        warm,
        jnp.where(it <= flat_iter, 1.0, jnp.where(it >= total_iter - no_aug_iter, lr_gamma, cos)),
    ).astype(jnp.float32)


def lr_scheduled(it, base_lr, cfg: Any, iters_per_epoch: int, epochs: int):
    """The lr that the official scheduler *sets* at ``step(it)`` (used by the next optimizer step)."""
    c = schedule_constants(cfg, iters_per_epoch, epochs)
    it = jnp.asarray(it)
    if c["name"] == "flatcosine":
        f = flat_cosine_factor(it, c["warmup_iter"], c["flat_iter"], c["total_iter"], c["no_aug_iter"], c["lr_gamma"])
    elif c["name"] == "linear_warmup":
        f = jnp.minimum(1.0, (it.astype(jnp.float32) + 2.0) / float(c["warmup_iter"]))
    else:  # constant
        f = jnp.ones_like(it, jnp.float32)
    return jnp.float32(base_lr) * f


def lr_used_at_step(step, base_lr, cfg: Any, iters_per_epoch: int, epochs: int):
    """Learning rate of the optimizer step of (0-based) iteration ``step``, with the official quirks.

    ``step == 0`` -> ``base_lr / first_step_divisor``; ``step >= 1`` -> ``lr_scheduled(step - 1)``.
    """
    c = schedule_constants(cfg, iters_per_epoch, epochs)
    step = jnp.asarray(step)
    prev = lr_scheduled(jnp.maximum(step - 1, 0), base_lr, cfg, iters_per_epoch, epochs)
    first = jnp.float32(base_lr) / jnp.float32(c["first_step_divisor"])
    return jnp.where(step == 0, first, prev).astype(jnp.float32)


def make_schedule(base_lr, cfg: Any, iters_per_epoch: int, epochs: int) -> Callable:
    """An ``optax`` schedule ``count -> lr``; ``count`` = optimizer steps already taken (the iteration index)."""
    schedule_constants(cfg, iters_per_epoch, epochs)  # validate eagerly

    def schedule(count):
        return lr_used_at_step(count, base_lr, cfg, iters_per_epoch, epochs)

    return schedule
