"""The official optimizer recipe: regex parameter groups, AdamW, global-norm clipping, flat-cosine lr.

Parameter groups (deim_dfine.md §1.4, rtdetrv2.md §1.4): each group's regex is applied with
``re.findall`` to the **PyTorch parameter name** (``deim_jax.convert.torch_param_name``) of every
trainable parameter; a parameter joins the first group (in config order) whose regex finds anything;
the rest form a final default group with the base lr and weight decay. Regex quirks reproduced as is:

* ``^(?=.*backbone)(?!.*norm|bn).*$`` (N, L, X backbone group): the alternation inside the negative
  look-ahead is ``.*norm`` **or** ``bn`` *at the start of the name*, so it only excludes names that
  contain ``norm``. HGNetv2 BatchNorms are named ``...bn...``, so backbone BN parameters fall in the
  backbone group **with** weight decay, and N's group meant for them
  (``^(?=.*backbone)(?=.*norm|bn).*$``) ends up empty.
* N's third group matches every encoder/decoder ``bias`` too (wd 0 for all of them); in the other
  configs biases keep weight decay. S/M put backbone BNs at the *base* lr with wd 0; so does
  DEIM-RT-DETRv2 (``^(?=.*(?:norm|bn)).*$``).

Frozen parameters (torch ``decoder.up``, ``decoder.reg_scale`` and whatever the ``frozen`` predicate
selects, e.g. a frozen backbone) get no update at all (``optax.set_to_zero``), no weight decay, and
are left out of the gradient norm (their torch ``.grad`` is ``None``).

One update, as the official loop (deim_dfine.md §9.1, §9.2): ``clip_grad_norm_(max_norm=0.1)``
over all trainable gradients (``coef = min(1, max / (norm + 1e-6))``), then per group
``torch.optim.AdamW`` (betas (0.9, 0.999), eps 1e-8): ``p <- p * (1 - lr * wd)`` then
``p <- p - lr * m_hat / (sqrt(v_hat) + eps)``, i.e. ``update = -lr * (adam + wd * p)``; the lr of
step ``t`` follows ``schedule.lr_used_at_step``.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from deim_jax.convert import torch_param_name
from deim_jax.train import schedule as schedule_lib

FROZEN = "frozen"
ALWAYS_FROZEN = ("decoder.up", "decoder.reg_scale")

# ``frozen(path)`` or ``frozen(path, torch_name)``; path = full Flax params path tuple.
FrozenFn = Callable[..., bool]


def _get(cfg, name, default=None):
    return schedule_lib._get(cfg, name, default)


def _groups(opt_cfg) -> List[Tuple[Optional[str], float, float]]:
    """``[(regex, lr, wd), ...]`` from the optimizer config, the default group (regex None) last."""
    out = []
    for g in _get(opt_cfg, "groups", []) or []:
        if isinstance(g, (tuple, list)):
            r, lr, wd = g
        else:
            r, lr, wd = _get(g, "regex"), _get(g, "lr", _get(opt_cfg, "lr")), _get(g, "weight_decay", _get(opt_cfg, "weight_decay"))
        out.append((r, float(lr), float(wd)))
    out.append((None, float(_get(opt_cfg, "lr")), float(_get(opt_cfg, "weight_decay", 0.0))))
    return out


def assign_groups(names: Sequence[str], regexes: Sequence[str]) -> List[int]:
    """Group index of every torch parameter name: first regex with a ``re.findall`` hit, else ``len(regexes)``."""
    out = []
    for n in names:
        idx = len(regexes)
        for i, r in enumerate(regexes):
            if len(re.findall(r, n)) > 0:
                idx = i
                break
        out.append(idx)
    return out


def _arity(fn) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in params)


def _is_frozen(path: Tuple[str, ...], name: str, frozen) -> bool:
    if name in ALWAYS_FROZEN:
        return True
    if frozen is None:
        return False
    return bool(frozen(path, name)) if _arity(frozen) >= 2 else bool(frozen(path))


def under(prefix: str, predicate: Callable[[Tuple[str, ...]], bool]) -> Callable[[Tuple[str, ...]], bool]:
    """Lift a predicate over paths relative to submodule ``prefix`` (e.g. a backbone's
    ``frozen_param_filter``) to full params paths; paths outside ``prefix`` are not frozen."""

    def pred(path: Tuple[str, ...]) -> bool:
        return len(path) > 1 and path[0] == prefix and bool(predicate(tuple(path[1:])))

    return pred


def param_labels(params, cfg, frozen: Optional[FrozenFn] = None):
    """Tree like ``params`` of labels ``'group_<i>'`` (i = config order, default last) or ``'frozen'``.

    ``frozen(path) -> bool`` or ``frozen(path, torch_name) -> bool`` marks more frozen parameters
    (path = full Flax params path tuple; wrap a backbone-relative predicate with ``under('backbone', pred)``).
    """
    opt_cfg = _get(cfg, "optimizer", cfg)
    regexes = [g[0] for g in _groups(opt_cfg)[:-1]]
    flat = traverse_util.flatten_dict(params)
    paths = list(flat.keys())
    names = [torch_param_name(p) for p in paths]
    groups = assign_groups(names, regexes)
    labels = {}
    for p, n, g in zip(paths, names, groups):
        labels[p] = FROZEN if _is_frozen(p, n, frozen) else f"group_{g}"
    return traverse_util.unflatten_dict(labels)


def clip_by_global_norm_torch(max_norm: float, eps: float = 1e-6) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_``: scale by ``min(1, max_norm / (norm + 1e-6))``."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        coef = jnp.minimum(1.0, max_norm / (norm + eps))
        return jax.tree_util.tree_map(lambda g: (g * coef).astype(g.dtype), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def _zero_frozen(labels) -> optax.GradientTransformation:
    """Zero the gradients of frozen leaves (so they do not count in the clipping norm)."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        out = jax.tree_util.tree_map(lambda g, l: jnp.zeros_like(g) if l == FROZEN else g, updates, labels)
        return out, state

    return optax.GradientTransformation(init_fn, update_fn)


def build_optimizer(cfg, params, frozen: Optional[FrozenFn] = None, iters_per_epoch: Optional[int] = None,
                    epochs: Optional[int] = None) -> optax.GradientTransformation:
    """The official optimizer for ``params`` (a Flax ``params`` tree or a tree of ShapeDtypeStructs).

    ``cfg.optimizer``: ``lr``, ``weight_decay``, ``betas``, ``eps``, ``clip_norm``, ``groups`` (list of
    ``{regex, lr, weight_decay}`` or ``(regex, lr, weight_decay)``). ``cfg.schedule``: see
    ``schedule.schedule_constants``; ``epochs`` / ``iters_per_epoch`` come from the arguments, else
    ``cfg.schedule``, else ``cfg.epochs``.
    """
    opt_cfg = _get(cfg, "optimizer")
    sched_cfg = _get(cfg, "schedule")
    if epochs is None and _get(sched_cfg, "epochs") is None:
        epochs = _get(cfg, "epochs")
    b1, b2 = tuple(_get(opt_cfg, "betas", (0.9, 0.999)))
    eps = float(_get(opt_cfg, "eps", 1e-8))
    clip = _get(opt_cfg, "clip_norm", 0.1)
    labels = param_labels(params, cfg, frozen)

    transforms: Dict[str, optax.GradientTransformation] = {FROZEN: optax.set_to_zero()}
    for i, (_, lr, wd) in enumerate(_groups(opt_cfg)):
        sched = schedule_lib.make_schedule(lr, sched_cfg, iters_per_epoch, epochs)
        parts = [optax.scale_by_adam(b1=float(b1), b2=float(b2), eps=eps)]
        if wd:
            parts.append(optax.add_decayed_weights(wd))
        parts.append(optax.scale_by_learning_rate(sched))
        transforms[f"group_{i}"] = optax.chain(*parts)

    chain = [_zero_frozen(labels)]
    if clip is not None and clip > 0:
        chain.append(clip_by_global_norm_torch(float(clip)))
    chain.append(optax.multi_transform(transforms, labels))
    return optax.chain(*chain)


def param_group_report(params, cfg, frozen: Optional[FrozenFn] = None) -> List[Dict[str, Any]]:
    """One dict per group (config order, default, then frozen): regex, lr, weight_decay, num_params, numel, names."""
    opt_cfg = _get(cfg, "optimizer")
    groups = _groups(opt_cfg)
    labels = traverse_util.flatten_dict(param_labels(params, cfg, frozen))
    flat = traverse_util.flatten_dict(params)
    rows = [dict(group=f"group_{i}", regex=r, lr=lr, weight_decay=wd, num_params=0, numel=0, names=[])
            for i, (r, lr, wd) in enumerate(groups)]
    rows.append(dict(group=FROZEN, regex=None, lr=0.0, weight_decay=0.0, num_params=0, numel=0, names=[]))
    index = {r["group"]: r for r in rows}
    for p, leaf in flat.items():
        row = index[labels[p]]
        row["num_params"] += 1
        row["numel"] += int(jnp.size(leaf)) if not hasattr(leaf, "shape") else int(_numel(leaf.shape))
        row["names"].append(torch_param_name(p))
    return rows


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def format_param_group_report(rows) -> str:
    """Human-readable one line per group."""
    return "\n".join(
        f"{r['group']}: {r['num_params']} params ({r['numel']:,} values) lr={r['lr']:g} wd={r['weight_decay']:g} regex={r['regex']}"
        for r in rows
    )
