"""The individual DEIM / D-FINE loss terms (deim_dfine.md §6.3-§6.6), one output at a time.

Every function is keyword-only and unweighted; shapes: B images, Q queries, C classes, M target
slots, R = reg_max. ``idx`` [B, Q] int32 is the output's matching (target index or -1);
``num_boxes`` the normalizer (scalar); ``query_valid`` ([B, Q] or [Q] bool, optional) excludes
slots (unused denoising slots) from every sum. All losses are computed in float32.

optax is used where it gives the same numbers (tests/test_criterion.py checks each):
``softmax_cross_entropy_with_integer_labels`` and ``kl_divergence_with_log_targets`` (bitwise).
Not ``sigmoid_binary_cross_entropy`` (see :func:`bce_with_logits`) nor ``sigmoid_focal_loss``
(see :func:`loss_focal`).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from deim_jax.losses.matching import gather_boxes, gather_targets, matched_iou
from deim_jax.ops import boxes as box_ops
from deim_jax.ops import fdr

Array = Any


def _class_targets(*, logits, boxes, idx, tgt_labels, tgt_boxes) -> Tuple[Array, Array]:
    """One-hot matched class t [B, Q, C] (0 for unmatched queries) and the detached IoU [B, Q]
    of each matched query's box with its target (0 when unmatched)."""
    matched = idx >= 0
    labels = gather_targets(idx=idx, targets=tgt_labels)
    t = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32) * matched[..., None]
    iou = matched_iou(pred_boxes=boxes, tgt_boxes=gather_boxes(idx=idx, tgt_boxes=tgt_boxes))
    return t, jnp.where(matched, iou, 0.0)


def _normalized_sum(loss, *, idx, num_boxes, query_valid):
    """sum over [B, Q, C] of ``loss`` with invalid slots removed, / num_boxes."""
    if query_valid is not None:
        loss = loss * jnp.broadcast_to(query_valid, idx.shape)[..., None]
    return jnp.sum(loss) / num_boxes


def bce_with_logits(x, t):
    """Elementwise binary cross entropy of logits ``x`` against soft targets ``t`` in [0, 1].

    torch's ``binary_cross_entropy_with_logits`` formula. Not optax's, which is rearranged: equal
    for 0/1 targets but up to 3 ulps apart on the soft IoU targets of MAL / VFL, enough to send a
    whole training run along another float32 path than the official one."""
    return jnp.maximum(x, 0.0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))


def loss_mal(*, logits, boxes, idx, tgt_labels, tgt_boxes, num_boxes, gamma: float,
             alpha: Optional[float], query_valid=None):
    """Matchability-aware loss (§6.3): sum BCE(x, (IoU t)^gamma) (alpha p^gamma (1-t) + t) / N.

    logits [B, Q, C], boxes [B, Q, 4] cxcywh, idx [B, Q], tgt_labels [B, M], tgt_boxes [B, M, 4];
    alpha None (official) leaves the negative weight p^gamma unscaled. Returns a scalar.
    """
    logits = logits.astype(jnp.float32)
    t, iou = _class_targets(logits=logits, boxes=boxes, idx=idx, tgt_labels=tgt_labels,
                            tgt_boxes=tgt_boxes)
    score = (iou[..., None] * t) ** gamma
    p = jax.lax.stop_gradient(jax.nn.sigmoid(logits))
    neg = p ** gamma * (1.0 - t)
    if alpha is not None:
        neg = alpha * neg
    loss = bce_with_logits(logits, score) * (neg + t)
    return _normalized_sum(loss, idx=idx, num_boxes=num_boxes, query_valid=query_valid)


def loss_vfl(*, logits, boxes, idx, tgt_labels, tgt_boxes, num_boxes, gamma: float, alpha: float,
             query_valid=None):
    """Varifocal loss (§6.3, D-FINE recipe): sum BCE(x, IoU t) (alpha p^gamma (1-t) + IoU t) / N.

    Shapes as :func:`loss_mal`. Returns a scalar.
    """
    logits = logits.astype(jnp.float32)
    t, iou = _class_targets(logits=logits, boxes=boxes, idx=idx, tgt_labels=tgt_labels,
                            tgt_boxes=tgt_boxes)
    score = iou[..., None] * t
    p = jax.lax.stop_gradient(jax.nn.sigmoid(logits))
    w = alpha * p ** gamma * (1.0 - t) + score
    loss = bce_with_logits(logits, score) * w
    return _normalized_sum(loss, idx=idx, num_boxes=num_boxes, query_valid=query_valid)


def loss_focal(*, logits, idx, tgt_labels, num_boxes, gamma: float, alpha: float,
               query_valid=None):
    """Sigmoid focal loss on one-hot targets / N (implemented officially, not configured).

    logits [B, Q, C], idx [B, Q], tgt_labels [B, M]. Returns a scalar.
    """
    # not optax.sigmoid_focal_loss: its exp(gamma log(1 - p_t)) differs from torchvision's
    # (1 - p_t) ** gamma far beyond float32 noise on confident logits (3x relative on tiny values)
    logits = logits.astype(jnp.float32)
    matched = idx >= 0
    labels = gather_targets(idx=idx, targets=tgt_labels)
    t = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32) * matched[..., None]
    p = jax.nn.sigmoid(logits)
    ce = bce_with_logits(logits, t)
    p_t = p * t + (1 - p) * (1 - t)
    loss = (alpha * t + (1 - alpha) * (1 - t)) * (ce * (1 - p_t) ** gamma)
    return _normalized_sum(loss, idx=idx, num_boxes=num_boxes, query_valid=query_valid)


def loss_boxes(*, boxes, idx, tgt_boxes, num_boxes) -> Tuple[Array, Array]:
    """(sum of L1 over cxcywh, sum of 1 - GIoU) over matched queries, each / N (§6.4).

    boxes [B, Q, 4] cxcywh, idx [B, Q], tgt_boxes [B, M, 4]. Returns two scalars.
    """
    boxes = boxes.astype(jnp.float32)
    matched = idx >= 0
    tb = gather_boxes(idx=idx, tgt_boxes=tgt_boxes)
    l1 = jnp.sum(jnp.where(matched[..., None], jnp.abs(boxes - tb), 0.0)) / num_boxes
    giou = box_ops.elementwise_generalized_box_iou(box_ops.cxcywh_to_xyxy(boxes),
                                                   box_ops.cxcywh_to_xyxy(tb))
    lg = jnp.sum(jnp.where(matched, 1.0 - giou, 0.0)) / num_boxes
    return l1, lg


def loss_fgl(*, corners, boxes, ref_points, idx, tgt_boxes, num_boxes, up, reg_scale,
             reg_max: int):
    """Fine-grained localization loss (§6.5) over matched queries, / N.

    corners [B, Q, 4 (R+1)] edge logits, boxes / ref_points [B, Q, 4] cxcywh, idx [B, Q],
    tgt_boxes [B, M, 4], up / reg_scale: the decoder's FDR constants. Returns a scalar.
    """
    B, Q = idx.shape
    matched = idx >= 0
    tb = gather_boxes(idx=idx, tgt_boxes=tgt_boxes)
    index, wr, wl = fdr.bbox2distance(jax.lax.stop_gradient(ref_points.astype(jnp.float32)),
                                      box_ops.cxcywh_to_xyxy(tb), reg_max, up, reg_scale)
    index, wr, wl = (jax.lax.stop_gradient(a) for a in (index, wr, wl))
    lo = jnp.floor(index).astype(jnp.int32)
    logits = corners.astype(jnp.float32).reshape(B, Q, 4, reg_max + 1)
    ce = optax.softmax_cross_entropy_with_integer_labels
    per_edge = ce(logits, lo) * wl + ce(logits, lo + 1) * wr  # [B, Q, 4]
    per_edge = per_edge * matched_iou(pred_boxes=boxes, tgt_boxes=tb)[..., None]
    return jnp.sum(jnp.where(matched[..., None], per_edge, 0.0)) / num_boxes


def _masked_mean(x, m):
    cnt = jnp.sum(m)
    return jnp.where(cnt > 0, jnp.sum(jnp.where(m, x, 0.0)) / jnp.maximum(cnt, 1), 0.0)


def ddf_per_edge(*, corners, teacher_corners, teacher_logits, boxes, idx, tgt_boxes, reg_max: int,
                 temperature: float) -> Tuple[Array, Array]:
    """Per-edge distillation loss wq T^2 KL(teacher || pred) [B, Q, 4] (§6.6) and whether the
    corners differ from the teacher's anywhere (scalar bool).

    corners / teacher_corners [B, Q, 4 (R+1)], teacher_logits [B, Q, C], boxes [B, Q, 4],
    idx [B, Q], tgt_boxes [B, M, 4]. wq is the teacher's max class probability, or the IoU of
    the matched box for matched queries; teacher and wq are detached.
    """
    B, Q = idx.shape
    T = temperature
    pred = corners.astype(jnp.float32).reshape(B, Q, 4, reg_max + 1)
    teacher = jax.lax.stop_gradient(teacher_corners.astype(jnp.float32)).reshape(pred.shape)
    differs = jnp.any(pred != teacher)
    wq = jnp.max(jax.nn.sigmoid(jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))), axis=-1)
    iou = matched_iou(pred_boxes=boxes, tgt_boxes=gather_boxes(idx=idx, tgt_boxes=tgt_boxes))
    wq = jax.lax.stop_gradient(jnp.where(idx >= 0, iou, wq))
    kl = optax.losses.kl_divergence_with_log_targets(jax.nn.log_softmax(pred / T, axis=-1),
                                                     jax.nn.log_softmax(teacher / T, axis=-1))
    return wq[..., None] * (T ** 2) * kl, differs


def loss_ddf(*, corners, teacher_corners, teacher_logits, boxes, idx, tgt_boxes, reg_max: int,
             temperature: float, num_pos, num_neg, query_valid=None):
    """Decoupled distillation focal loss (§6.6): (m_pos N_pos + m_neg N_neg) / (N_pos + N_neg).

    Arrays as :func:`ddf_per_edge`; m_pos / m_neg: mean per-edge loss over the edges of matched
    / unmatched valid queries (0 if none); num_pos / num_neg: N_pos, N_neg of the union set.
    Returns a scalar, 0 when the corners equal the teacher's exactly.
    """
    loss_e, differs = ddf_per_edge(corners=corners, teacher_corners=teacher_corners,
                                   teacher_logits=teacher_logits, boxes=boxes, idx=idx,
                                   tgt_boxes=tgt_boxes, reg_max=reg_max, temperature=temperature)
    B, Q = idx.shape
    matched = idx >= 0
    valid = jnp.ones((B, Q), bool) if query_valid is None else jnp.broadcast_to(query_valid, (B, Q))
    m_pos = _masked_mean(loss_e, jnp.broadcast_to((matched & valid)[..., None], (B, Q, 4)))
    m_neg = _masked_mean(loss_e, jnp.broadcast_to((~matched & valid)[..., None], (B, Q, 4)))
    val = (m_pos * num_pos + m_neg * num_neg) / (num_pos + num_neg)
    return jnp.where(differs, val, 0.0)


def ddf_normalizers(union: Array) -> Tuple[Array, Array]:
    """(N_pos, N_neg) = sqrt(#matched / #unmatched edges of the union set [B, Q] * 8 / B) (§6.6)."""
    pos_cnt = jnp.sum(union >= 0) * 4
    scale = 8.0 / union.shape[0]
    return jnp.sqrt(pos_cnt * scale), jnp.sqrt((union.size * 4 - pos_cnt) * scale)
