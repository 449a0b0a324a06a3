"""The one training setup of a config: model, criterion, optimizer (with its frozen mask), jitted steps.

``setup(cfg, mesh, steps_per_epoch) -> Setup`` is what the train loop, ``--mode=eval``, the
benchmarks and the tests all build, so they train the same thing (frozen-backbone baselines
included). ``init_state(s, variables, rng)`` makes the replicated :class:`TrainState`.

Steps (``deim_jax.train.train_step``):

* ``s.train_step(state, batch) -> (state, metrics)``: batch sharded over the mesh's ``data`` axis,
  the state replicated and donated;
* ``s.predict_step(variables, images) -> {'pred_logits', 'pred_boxes'}`` in eval mode, for any
  ``{'params', 'batch_stats'}`` (e.g. ``state.variables(use_ema=True)``).

Setups are cached by the config's JSON, the mesh and ``steps_per_epoch`` (one at a time), so that
runs of the same config in one process (a resume, the tests) compile once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import optax

from deim_jax import losses, models
from deim_jax.train import optimizer, sharding
from deim_jax.train.train_step import TrainState, create_state, make_predict_step, make_train_step

FrozenFn = Callable[[Tuple[str, ...]], bool]


@dataclasses.dataclass(frozen=True)
class Setup:
    cfg: Any
    mesh: jax.sharding.Mesh
    steps_per_epoch: int
    model: Any
    criterion: Callable
    frozen: Optional[FrozenFn]  # full params path -> frozen? (None: only the always-frozen decoder constants)
    tx: optax.GradientTransformation
    train_step: Callable
    predict_step: Callable


_CACHE: Dict[Any, Setup] = {}


def setup(cfg, mesh: Optional[jax.sharding.Mesh] = None, steps_per_epoch: int = 1) -> Setup:
    """Everything a training run of ``cfg`` on ``mesh`` (default: all devices) compiles."""
    mesh = mesh if mesh is not None else sharding.make_mesh()
    key = (cfg.to_json_best_effort(), mesh, int(steps_per_epoch))
    if key in _CACHE:
        return _CACHE[key]
    model = models.build(cfg)
    criterion = losses.build(cfg, mesh)
    frozen = models.frozen_filter(cfg)
    shapes = models.init_shapes(model, cfg)["params"]
    tx = optimizer.build_optimizer(cfg, shapes, steps_per_epoch, frozen=frozen)
    repl, batch = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    train_step = jax.jit(make_train_step(model, criterion, tx, cfg, steps_per_epoch), in_shardings=(repl, batch),
                         out_shardings=(repl, repl), donate_argnums=(0,))
    predict_step = jax.jit(make_predict_step(model, cfg), in_shardings=(repl, batch), out_shardings=batch)
    s = Setup(cfg=cfg, mesh=mesh, steps_per_epoch=int(steps_per_epoch), model=model, criterion=criterion,
              frozen=frozen, tx=tx, train_step=train_step, predict_step=predict_step)
    _CACHE.clear()  # keep one config's executables at a time
    _CACHE[key] = s
    return s


def init_state(s: Setup, variables: Dict[str, Any], rng: jax.Array) -> TrainState:
    """Fresh train state (optimizer state, EMA = the weights) of ``variables``, replicated on ``s.mesh``."""
    return sharding.replicate(create_state(jax.device_get(variables), s.tx, rng), s.mesh)
