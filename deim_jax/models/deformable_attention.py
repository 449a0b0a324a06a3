"""Multi-scale deformable attention (deim_dfine.md §5.6, rtdetrv2.md §5.6) and its samplers.

Value layout: the encoder memory [B, S, d] (levels concatenated, finest first, each row-major) is
viewed as ``[B, S, nH, hd]`` (head h owns channels ``h*hd:(h+1)*hd``). Sampling locations are
normalized (x, y) in [0, 1]; the points of a head are grouped level by level. Both samplers turn
every tap of every level into one row of that flat table, so an attention call is one gather and
one weighted reduction (on CPU, in float32, one C++ kernel that does both: ``kernels.gather_sum``):

* ``'default'``: bilinear with zero padding, equal to ``F.grid_sample(mode='bilinear',
  padding_mode='zeros', align_corners=False)`` (4 corner taps per point);
* ``'discrete'``: the nearest pixel ``trunc(loc * [W, H] + 0.5)`` clamped to ``[0, H_l - 1]`` on
  both axes (the official square-map assumption), one tap per point.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deim_jax.kernels import gather_sum
from deim_jax.models.layers import use_native_sampling, xavier_uniform

SpatialShapes = Sequence[Tuple[int, int]]


def bilinear_taps(loc: jax.Array, height: int, width: int):
    """Corner taps of bilinear sampling at normalized locations ``loc`` [..., 2] = (x, y) in [0, 1].

    Pixel coordinates follow grid_sample with ``align_corners=False`` on ``grid = 2 * loc - 1``:
    ``u = ((grid_x + 1) * W - 1) / 2``. Returns ``(flat_index [..., 4] int32, weight [..., 4])``
    with corners (nw, ne, sw, se); out-of-range corners get weight 0 and a clipped index.
    """
    grid = 2.0 * loc - 1.0
    x = ((grid[..., 0] + 1.0) * width - 1.0) / 2.0
    y = ((grid[..., 1] + 1.0) * height - 1.0) / 2.0
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    x1 = x0 + 1.0
    y1 = y0 + 1.0
    wx0, wx1 = x1 - x, x - x0
    wy0, wy1 = y1 - y, y - y0
    xs = jnp.stack([x0, x1, x0, x1], -1)
    ys = jnp.stack([y0, y0, y1, y1], -1)
    w = jnp.stack([wx0 * wy0, wx1 * wy0, wx0 * wy1, wx1 * wy1], -1)
    inb = (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)
    w = jnp.where(inb, w, 0.0)
    xi = jnp.clip(xs, 0, width - 1).astype(jnp.int32)
    yi = jnp.clip(ys, 0, height - 1).astype(jnp.int32)
    return yi * width + xi, w


def discrete_taps(loc: jax.Array, height: int, width: int):
    """The one tap of ``method='discrete'``: ``(flat_index [..., 1] int32, weight [..., 1] = 1)``."""
    c = jnp.trunc(loc * jnp.asarray([width, height], loc.dtype) + 0.5).astype(jnp.int32)
    c = jnp.clip(c, 0, height - 1)
    return (c[..., 1] * width + c[..., 0])[..., None], jnp.ones(loc.shape[:-1] + (1,), loc.dtype)


def grid_sample_bilinear(value: jax.Array, loc: jax.Array) -> jax.Array:
    """Bilinear sampling with zero padding, ``align_corners=False``.

    ``value`` [N, H, W, C]; ``loc`` [N, K, 2] normalized (x, y) in [0, 1] (i.e. the torch grid is
    ``2 * loc - 1``). Returns [N, K, C]. Equals ``F.grid_sample(value_nchw, 2*loc[:, :, None] - 1)``.
    """
    n, h, w, c = value.shape
    idx, wt = bilinear_taps(loc, h, w)  # [N, K, 4]
    flat = value.reshape(n, h * w, c)
    taps = jnp.take_along_axis(flat, idx.reshape(n, -1, 1), axis=1).reshape(idx.shape + (c,))
    return jnp.einsum("nkt,nktc->nkc", wt.astype(value.dtype), taps)


def sampling_offset_bias(num_heads: int, num_points: Sequence[int]) -> np.ndarray:
    """Offset bias init: head h points along (cos, sin)(2 pi h / nH) / max(|cos|, |sin|), times j+1."""
    theta = np.arange(num_heads, dtype=np.float32) * np.float32(2.0 * math.pi / num_heads)
    grid = np.stack([np.cos(theta), np.sin(theta)], -1)
    grid = grid / np.abs(grid).max(-1, keepdims=True)
    scale = np.concatenate([np.arange(1, n + 1, dtype=np.float32) for n in num_points])
    grid = grid[:, None, :] * scale[None, :, None]  # [nH, sumP, 2]
    return grid.reshape(-1).astype(np.float32)


def num_points_scale(num_points: Sequence[int]) -> np.ndarray:
    """[sum P] float32: 1/n for each point of a level with n points."""
    return np.asarray([1.0 / n for n in num_points for _ in range(n)], np.float32)


def split_heads(memory: jax.Array, num_heads: int) -> jax.Array:
    """[B, S, d] -> [B, S, nH, hd] (the value layout; compute once per decoder call)."""
    b, s, d = memory.shape
    return memory.reshape(b, s, num_heads, d // num_heads)


_TAPS = {"default": bilinear_taps, "discrete": discrete_taps}
CROSS_ATTN_METHODS = tuple(_TAPS)


def deformable_sample(
    value: jax.Array,
    spatial_shapes: SpatialShapes,
    loc: jax.Array,
    weights: jax.Array,
    num_points: Sequence[int],
    method: str = "default",
) -> jax.Array:
    """Weighted multi-level sampling, one gather for all levels.

    ``value`` [B, S, nH, hd]; ``loc`` [B, Q, nH, sumP, 2] normalized (x, y); ``weights``
    [B, Q, nH, sumP] (softmaxed attention); ``method`` 'default' (bilinear) or 'discrete'
    (nearest pixel). Returns [B, Q, nH * hd].
    """
    if method not in _TAPS:
        raise ValueError(f"cross_attn_method {method!r}: choose one of {CROSS_ATTN_METHODS}")
    b, s, nh, hd = value.shape
    q = loc.shape[1]
    idx_l, w_l = [], []
    start, p0 = 0, 0
    for (h, w), n in zip(spatial_shapes, num_points):
        idx, wt = _TAPS[method](loc[:, :, :, p0 : p0 + n], h, w)  # [B, Q, nH, n, T]
        idx_l.append(idx + start)
        w_l.append(wt)
        start += h * w
        p0 += n
    idx = jnp.concatenate(idx_l, axis=3)  # [B, Q, nH, P, T]
    wt = jnp.concatenate(w_l, axis=3) * weights[..., None]
    # flat row of (b, s, h) in value.reshape(B*S*nH, hd)
    # (iotas, not arange()[:, None]: a batch that is a symbolic dimension in an export cannot be sliced)
    base = (jax.lax.broadcasted_iota(jnp.int32, (b, 1, 1, 1, 1), 0) * (s * nh)
            + jax.lax.broadcasted_iota(jnp.int32, (1, 1, nh, 1, 1), 2))
    rows = base + idx * nh
    table = value.reshape(b * s * nh, hd)
    if value.dtype == jnp.float32 and use_native_sampling():
        k = rows.shape[3] * rows.shape[4]
        out = gather_sum.weighted_rows(table, rows.reshape(-1, k), wt.astype(jnp.float32).reshape(-1, k))
    else:
        taps = jnp.take(table, rows.reshape(-1), axis=0, mode="clip").reshape(rows.shape + (hd,))
        out = jnp.einsum("bqhpt,bqhptc->bqhc", wt.astype(value.dtype), taps)
    return out.reshape(b, q, nh * hd)


class MSDeformableAttention(nn.Module):
    """Deformable cross-attention: ``sampling_offsets``, ``attention_weights`` (zero-init kernels)
    and, with ``use_projections`` (RT-DETRv2), ``value_proj`` / ``output_proj`` (xavier).

    ``__call__(query [B, Q, d], reference [B, Q, 4] cxcywh in (0, 1), value, spatial_shapes)
    -> [B, Q, d]``. ``value``: the memory split in heads [B, S, nH, hd] (``split_heads``) without
    projections, the raw memory [B, S, d] with them. Sampling location = ``ref_xy + off * (1/n_l)
    * ref_wh * offset_scale``; softmax over all points of a head jointly. ``method='discrete'``
    (unused by the configs) samples the nearest pixel; the optimizer must then keep
    ``sampling_offsets`` frozen, as the official code does.
    """

    embed_dim: int
    num_heads: int = 8
    num_points: Tuple[int, ...] = (3, 6, 3)
    offset_scale: float = 0.5
    use_projections: bool = False
    method: str = "default"

    @nn.compact
    def __call__(self, query, reference, value, spatial_shapes: SpatialShapes):
        b, q, _ = query.shape
        nh = self.num_heads
        tp = int(sum(self.num_points))
        bias = sampling_offset_bias(nh, self.num_points)
        off = nn.Dense(
            nh * tp * 2,
            kernel_init=nn.initializers.zeros,
            bias_init=lambda *_: jnp.asarray(bias),
            name="sampling_offsets",
        )(query).reshape(b, q, nh, tp, 2)
        aw = nn.Dense(nh * tp, kernel_init=nn.initializers.zeros, name="attention_weights")(query)
        aw = jax.nn.softmax(aw.reshape(b, q, nh, tp), axis=-1)
        if self.use_projections:
            value = split_heads(nn.Dense(self.embed_dim, kernel_init=xavier_uniform, name="value_proj")(value), nh)
        scale = jnp.asarray(num_points_scale(self.num_points), query.dtype)[:, None]  # [P, 1]
        ref = reference[:, :, None, None, :]
        loc = ref[..., :2] + off * scale * ref[..., 2:] * self.offset_scale
        out = deformable_sample(value, spatial_shapes, loc, aw, self.num_points, self.method)
        if self.use_projections:
            out = nn.Dense(self.embed_dim, kernel_init=xavier_uniform, name="output_proj")(out)
        return out
