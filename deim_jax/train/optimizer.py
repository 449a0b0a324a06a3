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

Frozen parameters (torch ``decoder.up``, ``decoder.reg_scale`` and whatever the ``frozen(path)``
predicate over full params paths selects, e.g. a frozen backbone) get no update at all (label
``'frozen'`` -> ``optax.set_to_zero`` in the ``optax.multi_transform``), no weight decay, and are
left out of the gradient norm (their torch ``.grad`` is ``None``): their gradients are zeroed
before the clipping.

One update, as the official loop (deim_dfine.md §9.1, §9.2): ``clip_grad_norm_(max_norm=0.1)``
over all trainable gradients (``coef = min(1, max / (norm + 1e-6))``), then per group
``torch.optim.AdamW`` (betas (0.9, 0.999), eps 1e-8): ``p <- p * (1 - lr * wd)`` then
``p <- p - lr * m_hat / (sqrt(v_hat) + eps)``, i.e. ``update = -lr * (adam + wd * p)``; the lr of
step ``t`` follows ``schedule.lr_used_at_step``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from deim_jax.convert import torch_param_name
from deim_jax.train import schedule as schedule_lib

FROZEN = "frozen"
ALWAYS_FROZEN = ("decoder.up", "decoder.reg_scale")

# ``frozen(path) -> bool``; path = full Flax params path tuple, e.g. ('backbone', 'stem', ...).
FrozenFn = Callable[[Tuple[str, ...]], bool]


def _groups(opt_cfg) -> List[Tuple[Optional[str], float, float]]:
    """``[(regex, lr, wd), ...]`` from ``optimizer.groups`` (mappings with ``regex``, ``lr``,
    ``weight_decay``), then the default group (regex None, ``optimizer.lr`` / ``weight_decay``)."""
    out = [(g["regex"], float(g["lr"]), float(g["weight_decay"])) for g in opt_cfg["groups"]]
    out.append((None, float(opt_cfg["lr"]), float(opt_cfg["weight_decay"])))
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


def param_labels(params, cfg, frozen: Optional[FrozenFn] = None):
    """Tree like ``params`` of labels ``'group_<i>'`` (i = config order, default last) or ``'frozen'``."""
    regexes = [g[0] for g in _groups(cfg["optimizer"])[:-1]]
    flat = traverse_util.flatten_dict(params)
    names = [torch_param_name(p) for p in flat]
    labels = {}
    for p, n, g in zip(flat, names, assign_groups(names, regexes)):
        is_frozen = n in ALWAYS_FROZEN or (frozen is not None and bool(frozen(p)))
        labels[p] = FROZEN if is_frozen else f"group_{g}"
    return traverse_util.unflatten_dict(labels)


def clip_by_global_norm_torch(max_norm: float, eps: float = 1e-6) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_``: scale by ``min(1, max_norm / (norm + 1e-6))``.

    (``optax.clip_by_global_norm`` scales by ``max_norm / norm`` without the 1e-6: other numbers.)
    """

    def clip(updates, params=None):
        del params
        coef = jnp.minimum(1.0, max_norm / (optax.tree.norm(updates) + eps))
        return jax.tree_util.tree_map(lambda g: (g * coef).astype(g.dtype), updates)

    return optax.stateless(clip)


def zero_frozen(labels) -> optax.GradientTransformation:
    """Zero the gradients of the leaves labelled ``'frozen'`` (so they do not count in the clipping norm).

    Stateless (``EmptyState``) like the checkpoints of this version store it; ``optax.masked`` would
    give the same numbers but another optimizer-state tree.
    """

    def zero(updates, params=None):
        del params
        return jax.tree_util.tree_map(lambda g, l: jnp.zeros_like(g) if l == FROZEN else g, updates, labels)

    return optax.stateless(zero)


def build_optimizer(cfg, params, steps_per_epoch: int, frozen: Optional[FrozenFn] = None) -> optax.GradientTransformation:
    """The official optimizer for ``params`` (a Flax ``params`` tree or a tree of ShapeDtypeStructs).

    ``cfg.optimizer``: ``lr``, ``weight_decay``, ``betas``, ``eps``, ``clip_norm``, ``groups``;
    ``cfg.schedule``: see ``schedule.schedule_constants``; ``cfg.epochs``. ``steps_per_epoch``: the
    run's optimizer steps per epoch. ``frozen``: predicate over full params paths (see ``param_labels``).
    """
    opt_cfg = cfg["optimizer"]
    b1, b2 = (float(b) for b in opt_cfg["betas"])
    eps, clip = float(opt_cfg["eps"]), opt_cfg["clip_norm"]
    labels = param_labels(params, cfg, frozen)

    transforms: Dict[str, optax.GradientTransformation] = {FROZEN: optax.set_to_zero()}
    for i, (_, lr, wd) in enumerate(_groups(opt_cfg)):
        sched = schedule_lib.make_schedule(lr, cfg["schedule"], steps_per_epoch, int(cfg["epochs"]))
        parts = [optax.scale_by_adam(b1=b1, b2=b2, eps=eps)]
        if wd:
            parts.append(optax.add_decayed_weights(wd))
        parts.append(optax.scale_by_learning_rate(sched))
        transforms[f"group_{i}"] = optax.chain(*parts)

    chain = [zero_frozen(labels)]
    if clip is not None and clip > 0:
        chain.append(clip_by_global_norm_torch(float(clip)))
    chain.append(optax.multi_transform(transforms, labels))
    return optax.chain(*chain)


def param_group_report(params, cfg, frozen: Optional[FrozenFn] = None) -> List[Dict[str, Any]]:
    """One dict per group (config order, default, then frozen): regex, lr, weight_decay, num_params, numel, names."""
    groups = _groups(cfg["optimizer"]) + [(None, 0.0, 0.0)]
    labels = traverse_util.flatten_dict(param_labels(params, cfg, frozen))
    rows = [dict(group=f"group_{i}" if i < len(groups) - 1 else FROZEN, regex=r, lr=lr, weight_decay=wd,
                 num_params=0, numel=0, names=[]) for i, (r, lr, wd) in enumerate(groups)]
    index = {r["group"]: r for r in rows}
    for p, leaf in traverse_util.flatten_dict(params).items():
        row = index[labels[p]]
        row["num_params"] += 1
        row["numel"] += int(np.prod(leaf.shape))
        row["names"].append(torch_param_name(p))
    return rows


@dataclasses.dataclass
class _GroupRow:
    group: str
    params: int
    values: int
    lr: str
    wd: str
    regex: str


def format_param_group_report(rows) -> str:
    """The groups as a table (``clu.parameter_overview.make_table``)."""
    from clu import parameter_overview  # only for this report: the train step itself needs no clu

    table = [_GroupRow(r["group"], r["num_params"], r["numel"], f"{r['lr']:g}", f"{r['weight_decay']:g}",
                       str(r["regex"] or "-")) for r in rows]
    return parameter_overview.make_table(table)
