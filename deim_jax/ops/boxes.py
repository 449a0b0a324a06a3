"""Box conversions and overlaps with the official (torchvision-style) numerics.

Boxes are ``cxcywh`` (normalized) or ``xyxy``; all functions broadcast over
leading axes. ``box_iou``/``generalized_box_iou`` have no epsilon, exactly as
the reference: degenerate pairs give NaN, which callers sanitize.
"""

from __future__ import annotations

import jax.numpy as jnp


def cxcywh_to_xyxy(b):
    """[..., 4] cxcywh -> xyxy; widths/heights are clamped at >= 0 first (official criterion helper)."""
    cx, cy, w, h = jnp.moveaxis(b, -1, 0)
    w = jnp.maximum(w, 0.0)
    h = jnp.maximum(h, 0.0)
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def cxcywh_to_xyxy_unclamped(b):
    """[..., 4] cxcywh -> xyxy without clamping (torchvision ``box_convert``, used by the post-processor)."""
    cx, cy, w, h = jnp.moveaxis(b, -1, 0)
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def xyxy_to_cxcywh(b):
    x1, y1, x2, y2 = jnp.moveaxis(b, -1, 0)
    return jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def box_area(b):
    """Area of xyxy boxes [..., 4] -> [...]."""
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def box_iou(a, b):
    """Pairwise IoU of xyxy boxes a [..., N, 4] and b [..., M, 4] -> (iou, union), each [..., N, M]."""
    area_a = box_area(a)[..., :, None]
    area_b = box_area(b)[..., None, :]
    lt = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = jnp.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a + area_b - inter
    return inter / union, union


def generalized_box_iou(a, b):
    """Pairwise GIoU of xyxy boxes a [..., N, 4] and b [..., M, 4] -> [..., N, M]."""
    iou, union = box_iou(a, b)
    lt = jnp.minimum(a[..., :, None, :2], b[..., None, :, :2])
    rb = jnp.maximum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = jnp.clip(rb - lt, 0.0, None)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull


def elementwise_box_iou(a, b):
    """IoU of aligned xyxy boxes a [..., 4], b [..., 4] -> [...] (no epsilon)."""
    lt = jnp.maximum(a[..., :2], b[..., :2])
    rb = jnp.minimum(a[..., 2:], b[..., 2:])
    wh = jnp.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (box_area(a) + box_area(b) - inter)


def elementwise_generalized_box_iou(a, b):
    """GIoU of aligned xyxy boxes a [..., 4], b [..., 4] -> [...]."""
    lt = jnp.maximum(a[..., :2], b[..., :2])
    rb = jnp.minimum(a[..., 2:], b[..., 2:])
    wh = jnp.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a) + box_area(b) - inter
    iou = inter / union
    lt = jnp.minimum(a[..., :2], b[..., :2])
    rb = jnp.maximum(a[..., 2:], b[..., 2:])
    wh = jnp.clip(rb - lt, 0.0, None)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull
