"""Post-processor (deim_dfine.md §10): top-k over sigmoid scores, boxes to original-size pixels.

``postprocess(pred_logits [B,Q,C], pred_boxes [B,Q,4] normalized cxcywh, orig_sizes [B,2] (w, h))``
-> ``{'labels' [B,K] int32, 'boxes' [B,K,4] xyxy pixels, 'scores' [B,K] float32}``, sorted by score
descending, K = num_top_queries. Jit-able (static K, static remap flag).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from deim_jax.ops import boxes as box_ops
from deim_jax.ops.coco_categories import label_to_category

def postprocess(pred_logits, pred_boxes, orig_sizes, num_top_queries: int = 300,
                remap_mscoco_category: bool = True):
    """Top-``num_top_queries`` detections per image over the flattened Q*C sigmoid scores.

    Boxes: cxcywh -> xyxy (no clamping, no clipping) times (w, h, w, h) of ``orig_sizes``.
    Labels: class index (``index mod C``), mapped to COCO category ids when ``remap_mscoco_category``.
    """
    logits = jnp.asarray(pred_logits, jnp.float32)
    B, Q, C = logits.shape
    sizes = jnp.asarray(orig_sizes, jnp.float32)
    boxes = box_ops.cxcywh_to_xyxy_unclamped(jnp.asarray(pred_boxes, jnp.float32))
    boxes = boxes * jnp.concatenate([sizes, sizes], axis=-1)[:, None, :]
    scores = jax.nn.sigmoid(logits).reshape(B, Q * C)
    top_scores, index = jax.lax.top_k(scores, num_top_queries)
    query = jax.lax.div(index, jnp.int32(C))  # index >= 0: truncating division, which ONNX exporters map to Div
    labels = (index - query * C).astype(jnp.int32)
    top_boxes = jnp.take_along_axis(boxes, query[..., None], axis=1)
    if remap_mscoco_category:
        labels = label_to_category(labels)
    return {"labels": labels, "boxes": top_boxes, "scores": top_scores}
