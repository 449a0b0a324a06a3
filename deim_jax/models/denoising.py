"""Contrastive denoising groups (deim_dfine.md §5.4) with static shapes.

The official code builds ``D = 2 * M * G`` denoising queries, ``M`` = largest target count in
the batch and ``G = num_denoising // M`` (at least 1), laid out as ``G`` groups of
``[M positive slots, M negative slots]``. Here ``M`` and ``G`` are traced values and the queries
live in a fixed number of slots ``D_max``; slots ``s >= D`` are *invalid*: nobody attends to
them and each attends only to itself (so attention rows stay finite). Invalid slots carry the
padding class and a zero box.
"""

from __future__ import annotations

from typing import Dict, Optional

import jax
import jax.numpy as jnp

from deim_jax.ops import boxes as box_ops
from deim_jax.models.layers import inverse_sigmoid


def num_slots(num_denoising: int, num_targets_padded: int, max_slots: Optional[int] = None) -> int:
    """Static slot count ``D_max`` (enough for every possible ``2 * M * G``)."""
    return int(max_slots) if max_slots else 2 * max(int(num_denoising), int(num_targets_padded))


def group_layout(num_gt: jax.Array, num_denoising: int, num_slots_: int):
    """Deterministic part of the layout.

    ``num_gt`` [B] int (real targets per image). Returns ``max_gt`` M, ``num_group`` G (int32
    scalars, both 0 when no image has a target or ``num_denoising == 0``), ``valid`` [D_max]
    bool (``s < 2MG``), ``target`` [D_max] int32 (``s mod 2M mod M``: target of the slot),
    ``negative`` [D_max] bool and ``group`` [D_max] int32 (``s // 2M``).
    """
    m = jnp.max(num_gt).astype(jnp.int32) if num_gt.size else jnp.int32(0)
    on = (m > 0) & (num_denoising > 0)
    m_safe = jnp.maximum(m, 1)
    g = jnp.where(on, jnp.maximum(num_denoising // m_safe, 1), 0).astype(jnp.int32)
    m = jnp.where(on, m, 0).astype(jnp.int32)
    s = jnp.arange(num_slots_, dtype=jnp.int32)
    j = s % (2 * m_safe)
    valid = s < 2 * m * g
    negative = j >= m_safe
    target = jnp.where(negative, j - m_safe, j)
    group = s // (2 * m_safe)
    return m, g, valid, target, negative, group


def attention_mask(valid: jax.Array, group: jax.Array, num_queries: int) -> jax.Array:
    """[D_max + Q, D_max + Q] bool, True = blocked.

    Matching queries (rows >= D_max) see no denoising slot; a valid slot sees the valid slots of
    its own group and every matching query; invalid slots are seen by nobody and see only
    themselves.
    """
    d = valid.shape[0]
    n = d + num_queries
    r = jnp.arange(n)[:, None]
    c = jnp.arange(n)[None, :]
    v_pad = jnp.concatenate([valid, jnp.zeros((num_queries,), bool)])
    g_pad = jnp.concatenate([group, jnp.full((num_queries,), -1, group.dtype)])
    row_dn = r < d
    col_dn = c < d
    # matching rows: blocked on every denoising column
    blocked = jnp.where(row_dn, False, col_dn)
    # valid denoising rows: blocked on invalid or other-group denoising columns
    other = col_dn & ((~v_pad[None, :]) | (g_pad[None, :] != g_pad[:, None]))
    blocked = jnp.where(row_dn & v_pad[:, None], other, blocked)
    # invalid denoising rows: everything except the diagonal
    blocked = jnp.where(row_dn & ~v_pad[:, None], r != c, blocked)
    return blocked


def make_contrastive_group(
    rng: jax.Array,
    labels: jax.Array,
    boxes: jax.Array,
    mask: jax.Array,
    num_classes: int,
    num_denoising: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
    max_slots: Optional[int] = None,
    num_queries: int = 300,
) -> Dict[str, jax.Array]:
    """Draw one contrastive denoising group.

    Args: ``labels`` [B, M_pad] int, ``boxes`` [B, M_pad, 4] normalized cxcywh, ``mask``
    [B, M_pad] bool (real targets; they need not be contiguous, their order is kept).
    Returns a dict: ``query_class`` [B, D_max] int32 (``num_classes`` = padding),
    ``query_bbox_unact`` [B, D_max, 4] (inverse-sigmoid of the noised boxes), ``attn_mask``
    [D_max + Q, D_max + Q] bool (True = blocked), ``num_group`` G and ``max_gt`` M (int32
    scalars), ``valid`` [D_max] bool, plus ``positive`` [B, D_max] bool (slot is a positive of a
    real target) and ``target_index`` [B, D_max] int32 (index into the ``M_pad`` axis of the
    target the slot was made from; meaningful where the slot holds a real target).
    """
    b, m_pad = labels.shape
    d_max = num_slots(num_denoising, m_pad, max_slots)
    mask = mask.astype(bool)
    num_gt = jnp.sum(mask, axis=1).astype(jnp.int32)
    # real targets first, order kept
    order = jnp.argsort(~mask, axis=1, stable=True).astype(jnp.int32)
    m, g, valid, target, negative, group = group_layout(num_gt, num_denoising, d_max)

    tgt_c = jnp.minimum(target, m_pad - 1) if m_pad > 0 else jnp.zeros_like(target)
    if m_pad > 0:
        src = jnp.take_along_axis(order, jnp.broadcast_to(tgt_c[None], (b, d_max)), axis=1)  # [B, D]
        cls = jnp.take_along_axis(labels.astype(jnp.int32), src, axis=1)
        box = jnp.take_along_axis(boxes.astype(jnp.float32), src[..., None], axis=1)
    else:
        src = jnp.zeros((b, d_max), jnp.int32)
        cls = jnp.zeros((b, d_max), jnp.int32)
        box = jnp.zeros((b, d_max, 4), jnp.float32)
    real = valid[None, :] & (target[None, :] < num_gt[:, None])  # [B, D]
    cls = jnp.where(real, cls, num_classes)
    box = jnp.where(real[..., None], box, 0.0)

    k1, k2, k3, k4 = jax.random.split(rng, 4)
    if label_noise_ratio > 0:
        flip = jax.random.uniform(k1, (b, d_max)) < (label_noise_ratio * 0.5)
        new = jax.random.randint(k2, (b, d_max), 0, num_classes, dtype=jnp.int32)
        cls = jnp.where(flip & real, new, cls)

    if box_noise_scale > 0:
        xyxy = box_ops.cxcywh_to_xyxy(box)
        diff = jnp.tile(box[..., 2:] * 0.5, (1, 1, 2)) * box_noise_scale
        sign = jax.random.randint(k3, (b, d_max, 4), 0, 2).astype(jnp.float32) * 2.0 - 1.0
        part = jax.random.uniform(k4, (b, d_max, 4))
        part = jnp.where(negative[None, :, None], part + 1.0, part)
        xyxy = jnp.clip(xyxy + sign * part * diff, 0.0, 1.0)
        box = jnp.abs(box_ops.xyxy_to_cxcywh(xyxy))
    bbox_unact = inverse_sigmoid(box)

    return {
        "query_class": cls.astype(jnp.int32),
        "query_bbox_unact": bbox_unact.astype(jnp.float32),
        "attn_mask": attention_mask(valid, group, num_queries),
        "num_group": g,
        "max_gt": m,
        "valid": valid,
        "positive": real & ~negative[None, :],
        "target_index": src,
    }
