"""The train state and the jitted train / eval steps.

One train step: model (train mode, BatchNorm batch statistics, a fresh
denoising group) -> criterion -> gradients -> optax update (clip, AdamW with
per-group lr) -> EMA of parameters and batch statistics. ``compute_dtype``
``bfloat16`` runs the model in bf16 on float32 master weights; the criterion
always runs in float32.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import flax
import jax
import jax.numpy as jnp
import optax

from deim_jax.train import ema as ema_lib


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # optimizer steps taken
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any
    ema_batch_stats: Any
    rng: jax.Array

    def variables(self, use_ema: bool = False) -> Dict[str, Any]:
        if use_ema:
            return {"params": self.ema_params, "batch_stats": self.ema_batch_stats}
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_state(variables: Dict[str, Any], tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    params = variables["params"]
    batch_stats = variables["batch_stats"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        ema_params=jax.tree_util.tree_map(jnp.copy, params),
        ema_batch_stats=jax.tree_util.tree_map(jnp.copy, batch_stats),
        rng=rng,
    )


def _cast_floats(tree, dtype):
    def cast(x):
        return x.astype(dtype) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree_util.tree_map(cast, tree)


def make_train_step(model, criterion: Callable, tx: optax.GradientTransformation, cfg,
                    steps_per_epoch: int = 1) -> Callable:
    """``train_step(state, batch) -> (state, metrics)``; batch = {image, boxes, labels, mask}.
    ``steps_per_epoch`` resolves ``cfg.ema.warmup_epochs``."""
    compute_dtype = jnp.dtype(cfg.compute_dtype)
    ema_cfg = cfg.ema
    ema_warmups = ema_lib.warmup_updates(ema_cfg, steps_per_epoch)
    skip_nonfinite = bool(cfg.skip_nonfinite_steps)

    def train_step(state: TrainState, batch: Dict[str, jax.Array]):
        rng = jax.random.fold_in(state.rng, state.step)
        targets = {"boxes": batch["boxes"], "labels": batch["labels"], "mask": batch["mask"]}

        def loss_fn(params):
            variables = {"params": _cast_floats(params, compute_dtype), "batch_stats": state.batch_stats}
            outputs, mutated = model.apply(
                variables,
                batch["image"].astype(compute_dtype),
                train=True,
                targets=targets,
                rngs={"denoising": rng},
                mutable=["batch_stats"],
            )
            losses = criterion(_cast_floats(outputs, jnp.float32), targets)
            total = sum(losses.values())
            return total, (losses, mutated["batch_stats"])

        (loss, (losses, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        step = state.step + 1
        if ema_cfg.enabled:
            decay = ema_lib.ema_decay(step, ema_cfg.decay, ema_warmups)
            ema_params = ema_lib.ema_apply(state.ema_params, params, decay)
            ema_batch_stats = ema_lib.ema_apply(state.ema_batch_stats, batch_stats, decay)
        else:
            ema_params, ema_batch_stats = params, batch_stats
        metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, **losses}
        new_state = state.replace(
            step=step,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            ema_params=ema_params,
            ema_batch_stats=ema_batch_stats,
        )
        if skip_nonfinite:  # keep the old state (step counter included) when the update is not finite
            new_state = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new_state, state)
        return new_state, metrics

    return train_step


def make_predict_step(model, cfg) -> Callable:
    """``predict_step(variables, images) -> {'pred_logits', 'pred_boxes'}`` in eval mode.

    ``variables``: ``{'params', 'batch_stats'}``, e.g. ``state.variables(use_ema=True)``.
    """
    compute_dtype = jnp.dtype(cfg.compute_dtype)

    def predict_step(variables: Dict[str, Any], images):
        variables = _cast_floats(variables, compute_dtype)
        out = model.apply(variables, images.astype(compute_dtype), train=False)
        return {k: out[k].astype(jnp.float32) for k in ("pred_logits", "pred_boxes")}

    return predict_step
