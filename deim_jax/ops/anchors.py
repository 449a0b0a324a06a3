"""Anchor grid and valid mask of the D-FINE / RT-DETR query selection (deim_dfine.md §5.2)."""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


def generate_anchors(
    spatial_shapes: Sequence[Tuple[int, int]], grid_size: float = 0.05, eps: float = 0.01, log=np.log
) -> Tuple[np.ndarray, np.ndarray]:
    """Anchor logits for feature maps of sizes ``[(h, w), ...]`` (finest level first).

    Level l, cell (y, x): box ``((x + .5) / w, (y + .5) / h, grid_size * 2**l, grid_size * 2**l)``
    (cxcywh), raster order, levels concatenated. Computed in float32 like the reference.

    Returns ``anchors`` [1, sum HW, 4] float32 logits (``log(a / (1 - a))``), ``+inf`` where
    invalid, and ``valid_mask`` [1, sum HW, 1] bool (all four numbers strictly in (eps, 1 - eps)).
    Shapes are static Python ints, so the result is a host constant. ``log`` computes the float32
    logarithm; float32 ``log`` implementations differ in the last ulp, so the converter passes
    PyTorch's when it is installed to write bit-identical checkpoints.
    """
    out = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        h, w = int(h), int(w)
        gy, gx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
        cx = (gx + np.float32(0.5)) / np.float32(w)
        cy = (gy + np.float32(0.5)) / np.float32(h)
        wh = np.full_like(cx, np.float32(grid_size) * np.float32(2.0**lvl))
        out.append(np.stack([cx, cy, wh, wh], -1).reshape(h * w, 4))
    a = np.concatenate(out, 0)[None].astype(np.float32)
    valid = np.all((a > np.float32(eps)) & (a < np.float32(1 - eps)), axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        logits = np.asarray(log(a / (np.float32(1) - a)), np.float32)
    logits = np.where(valid, logits, np.float32(np.inf)).astype(np.float32)
    return logits, valid
