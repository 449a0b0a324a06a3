"""The deployed detection function, the official ``deploy`` signature with post-processing:

``detect(variables, images, orig_sizes)``: ``images`` [B, H, W, 3] uint8 (0..255) or float in
[0, 1] at the model's input size, ``orig_sizes`` [B, 2] (width, height) of the images before
they were resized -> ``{'labels' [B, K] int32, 'boxes' [B, K, 4] float32 xyxy pixels of the
original image, 'scores' [B, K] float32}``, the top K = ``cfg.num_top_queries`` detections sorted by
score. Labels are class indices, or COCO category ids where ``remap_mscoco_category`` (the
official COCO weights). Any input size (a multiple of 32) works: anchors and valid masks follow the
feature maps.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import jax.numpy as jnp

from deim_jax import models
from deim_jax.evaluate.postprocess import postprocess

OUTPUT_NAMES = ("labels", "boxes", "scores")


def make_detect(cfg, remap_mscoco_category: Optional[bool] = None, size: Optional[Tuple[int, int]] = None
                ) -> Callable[..., Dict]:
    """``detect(variables, images, orig_sizes)`` of the module docstring for ``cfg``'s model at
    input ``size`` (H, W; default ``cfg.eval_spatial_size``: the encoder's precomputed position
    embedding is made for it); ``remap_mscoco_category``: default ``cfg``'s."""
    if size is not None and tuple(size) != tuple(cfg.eval_spatial_size):
        cfg = cfg.copy_and_resolve_references()
        cfg.eval_spatial_size = tuple(int(v) for v in size)
    model = models.build(cfg)
    remap = bool(cfg.remap_mscoco_category if remap_mscoco_category is None else remap_mscoco_category)
    top = int(cfg.num_top_queries)

    def detect(variables, images, orig_sizes):
        x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images.astype(jnp.float32)
        out = model.apply(variables, x, train=False)
        return postprocess(out["pred_logits"], out["pred_boxes"], orig_sizes.astype(jnp.float32),
                           num_top_queries=top, remap_mscoco_category=remap)

    return detect
