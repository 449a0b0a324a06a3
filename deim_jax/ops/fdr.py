"""Fine-grained distribution refinement maths (deim_dfine.md §5.7, §6.5): the bin values W,
decoding edge distances to boxes (decoder) and binning target distances (loss).

All functions broadcast over leading axes and are jit-able. Boxes are cxcywh unless named xyxy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from deim_jax.ops import boxes


def weighting_function(reg_max: int, up, reg_scale):
    """Non-uniform bin values W, shape [reg_max + 1] (33 for reg_max 32), symmetric around 0.

    up, reg_scale: scalars or shape-[1] arrays (the model's `up` / `reg_scale` outputs).
    """
    up = jnp.reshape(jnp.asarray(up, jnp.float32), ())
    reg_scale = jnp.reshape(jnp.asarray(reg_scale, jnp.float32), ())
    u1 = jnp.abs(up) * jnp.abs(reg_scale)
    u2 = 2.0 * u1
    step = (u1 + 1.0) ** (2.0 / (reg_max - 2))
    half = reg_max // 2
    left = [-(step ** i) + 1 for i in range(half - 1, 0, -1)]
    right = [step ** i - 1 for i in range(1, half)]
    vals = [-u2] + left + [jnp.zeros(())] + right + [u2]
    return jnp.stack([jnp.asarray(v, jnp.float32) for v in vals])


def translate_gt(d, reg_max: int, up, reg_scale):
    """Soft bin assignment of distances d [...] -> (index [...] float, weight_right, weight_left).

    index is clamped to [0, reg_max - 0.1]; the loss uses floor(index) with weight_left and
    floor(index) + 1 with weight_right.
    """
    w = weighting_function(reg_max, up, reg_scale)  # [R+1]
    left_idx = jnp.sum(w <= d[..., None], axis=-1) - 1  # [...]
    valid = (left_idx >= 0) & (left_idx < reg_max)
    li = jnp.clip(left_idx, 0, reg_max - 1)
    w_lo = w[li]
    w_hi = w[li + 1]
    dl = jnp.abs(d - w_lo)
    dr = jnp.abs(w_hi - d)
    wr_valid = dl / (dl + dr)
    weight_right = jnp.where(valid, wr_valid, jnp.where(left_idx < 0, 0.0, 1.0))
    weight_left = jnp.where(valid, 1.0 - wr_valid, jnp.where(left_idx < 0, 1.0, 0.0))
    index = jnp.where(valid, left_idx.astype(jnp.float32),
                      jnp.where(left_idx < 0, 0.0, reg_max - 0.1))
    index = jnp.clip(index, 0.0, reg_max - 0.1)
    return index, weight_right, weight_left


def bbox2distance(points, bbox_xyxy, reg_max: int, up, reg_scale, eps: float = 0.1):
    """Distances of xyxy boxes from reference boxes points (cxcywh), in W units, then binned.

    Returns (index [..., 4], weight_right [..., 4], weight_left [..., 4]); edges l, t, r, b.
    """
    rs = jnp.abs(jnp.reshape(jnp.asarray(reg_scale, jnp.float32), ()))
    cx, cy, w, h = (points[..., i] for i in range(4))
    x1, y1, x2, y2 = (bbox_xyxy[..., i] for i in range(4))
    left = (cx - x1) / (w / rs + 1e-16) - 0.5 * rs
    top = (cy - y1) / (h / rs + 1e-16) - 0.5 * rs
    right = (x2 - cx) / (w / rs + 1e-16) - 0.5 * rs
    bottom = (y2 - cy) / (h / rs + 1e-16) - 0.5 * rs
    d = jnp.stack([left, top, right, bottom], axis=-1)
    index, wr, wl = translate_gt(d, reg_max, up, reg_scale)
    index = jnp.clip(index, 0.0, reg_max - eps)
    return index, wr, wl


def integral(corners, project, reg_max: int):
    """[..., 4 * (R+1)] corner logits -> [..., 4] expected distances (softmax per edge, dot W)."""
    p = jax.nn.softmax(corners.reshape(corners.shape[:-1] + (4, reg_max + 1)), axis=-1)
    return jnp.einsum("...en,n->...e", p, project)


def distance2bbox(points, distance, reg_scale):
    """Reference boxes ``points`` (cxcywh) + edge distances [..., 4] -> cxcywh boxes (no clamping)."""
    rs = jnp.abs(jnp.reshape(jnp.asarray(reg_scale), (-1,))[0].astype(points.dtype))
    cx, cy, w, h = (points[..., i] for i in range(4))
    x1 = cx - (0.5 * rs + distance[..., 0]) * (w / rs)
    y1 = cy - (0.5 * rs + distance[..., 1]) * (h / rs)
    x2 = cx + (0.5 * rs + distance[..., 2]) * (w / rs)
    y2 = cy + (0.5 * rs + distance[..., 3]) * (h / rs)
    return boxes.xyxy_to_cxcywh(jnp.stack([x1, y1, x2, y2], -1))
