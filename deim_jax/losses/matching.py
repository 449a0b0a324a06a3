"""Matchings of one train step (deim_dfine.md §6.1, §6.2) and the gathers that read them.

A matching is a ``[B, Q] int32`` array per output: entry = matched target index in 0..M-1, or
-1. Targets are ``{'boxes': [B, M, 4] cxcywh, 'labels': [B, M] int, 'mask': [B, M] bool}`` with
the real targets packed first (mask True).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import jax
import jax.numpy as jnp

from deim_jax.losses import matcher
from deim_jax.ops import boxes as box_ops

Array = Any

# Box given to unmatched queries before box maths (see gather_boxes).
_DUMMY_BOX = (0.5, 0.5, 1.0, 1.0)


def union_matching(indices: Array, num_targets: int) -> Array:
    """Union ("go") set of several matchings: [K, B, Q] int (-1 unmatched) -> [B, Q] int.

    Each query keeps the target it is matched to most often across the K matchings; ties go to
    the smallest target index (stable sort on (count desc, (query, gt) asc), deim_dfine.md §6.2).
    """
    onehot = jax.nn.one_hot(indices, num_targets, dtype=jnp.int32)  # -1 -> all zeros
    counts = jnp.sum(onehot, axis=0)  # [B, Q, M]
    best = jnp.argmax(counts, axis=-1).astype(jnp.int32)
    return jnp.where(jnp.max(counts, axis=-1) > 0, best, -1)


def dn_matching(num_slots: int, max_gt, valid: Array, target_mask: Array) -> Array:
    """Fixed denoising matching: slot s of image b -> target j = s mod 2M if j < n_b and valid[s].

    num_slots: static D_max; max_gt: int scalar M (traced ok); valid [D_max] bool;
    target_mask [B, Mt] bool (real targets packed first). Returns [B, D_max] int32.
    """
    n = jnp.sum(target_mask.astype(jnp.int32), axis=-1)  # [B]
    s = jnp.arange(num_slots, dtype=jnp.int32)
    j = jnp.mod(s, 2 * jnp.maximum(jnp.asarray(max_gt, jnp.int32), 1))
    pos = (j[None, :] < n[:, None]) & jnp.asarray(valid, bool)[None, :]
    return jnp.where(pos, j[None, :], -1).astype(jnp.int32)


def gather_targets(*, idx: Array, targets: Array) -> Array:
    """idx [B, Q] int (-1 allowed), targets [B, M, ...] -> [B, Q, ...] (rows of -1 get target 0)."""
    safe = jnp.maximum(idx, 0)
    return jax.vmap(lambda t, i: t[i])(targets, safe)


def gather_boxes(*, idx: Array, tgt_boxes: Array) -> Array:
    """Matched target boxes: idx [B, Q], tgt_boxes [B, M, 4] -> [B, Q, 4] cxcywh.

    Unmatched queries get a dummy unit box so that no NaN (e.g. from a zero-area padding box
    against a degenerate prediction) can reach the gradients through a masked-out branch.
    Values of matched queries are unchanged.
    """
    tb = gather_targets(idx=idx, targets=tgt_boxes)
    return jnp.where((idx >= 0)[..., None], tb, jnp.asarray(_DUMMY_BOX, tb.dtype))


def matched_iou(*, pred_boxes: Array, tgt_boxes: Array) -> Array:
    """Detached IoU of aligned cxcywh boxes [..., 4] -> [...] (no epsilon, may be NaN)."""
    iou = box_ops.elementwise_box_iou(box_ops.cxcywh_to_xyxy(pred_boxes),
                                      box_ops.cxcywh_to_xyxy(tgt_boxes))
    return jax.lax.stop_gradient(iou)


def named_outputs(outputs: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """Non-DN outputs to match, in the official order: final, aux_i, pre, enc_i."""
    named = [("final", outputs)]
    for i, a in enumerate(outputs.get("aux_outputs", []) or []):
        named.append((f"aux_{i}", a))
    if outputs.get("pre_outputs") is not None:
        named.append(("pre", outputs["pre_outputs"]))
    for i, a in enumerate(outputs.get("enc_aux_outputs", []) or []):
        named.append((f"enc_{i}", a))
    return named


def hungarian_all(outputs, targets, *, cost_weights: Tuple[float, float, float], alpha: float,
                  gamma: float, method: str, mesh=None) -> Dict[str, Array]:
    """Hungarian matching of every non-DN output at once, plus their union set.

    outputs: model dict (§5.8 layout); targets as in the module docstring. cost_weights =
    (class, bbox, giou); alpha / gamma: focal cost parameters; method: matcher method; mesh:
    data-parallel mesh (each device then solves its own shard). Returns name -> [B, Q] int32 for
    'final', 'aux_i', 'pre', 'enc_i' and 'union_go'.
    """
    named = named_outputs(outputs)
    logits = jnp.stack([o["pred_logits"].astype(jnp.float32) for _, o in named])
    boxes = jnp.stack([o["pred_boxes"].astype(jnp.float32) for _, o in named])
    K = logits.shape[0]
    labels = jnp.broadcast_to(targets["labels"], (K,) + targets["labels"].shape)
    tboxes = jnp.broadcast_to(targets["boxes"], (K,) + targets["boxes"].shape)
    cost = matcher.match_cost(logits, boxes, labels, tboxes, weights=tuple(cost_weights),
                              alpha=alpha, gamma=gamma)
    mask = jnp.broadcast_to(targets["mask"], (K,) + targets["mask"].shape)
    if mesh is not None and mesh.size > 1:
        idx = matcher.assign_sharded(cost, mask, mesh, batch_axis=1, method=method)
    else:
        idx = matcher.assign(cost, mask, method=method)
    out = {name: idx[k] for k, (name, _) in enumerate(named)}
    out["union_go"] = union_matching(idx, targets["labels"].shape[-1])
    return out


def denoising_matching(outputs, targets) -> Array:
    """Fixed matching [B, D] int32 of the denoising slots (§6.1, ``get_cdn_matched_indices``).

    From the group's own ``positive`` / ``target_index`` when ``dn_meta`` has them (any mask
    order), else from the slot layout (:func:`dn_matching`).
    """
    meta = outputs["dn_meta"]
    if "positive" in meta and "target_index" in meta:
        return jnp.where(jnp.asarray(meta["positive"], bool),
                         jnp.asarray(meta["target_index"], jnp.int32), -1)
    D = outputs["dn_outputs"][0]["pred_logits"].shape[1]
    return dn_matching(D, meta["max_gt"], meta["valid"], targets["mask"])
