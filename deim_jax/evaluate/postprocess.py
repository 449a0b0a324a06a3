"""Post-processor (deim_dfine.md §10): top-k over sigmoid scores, boxes to original-size pixels.

``postprocess(pred_logits [B,Q,C], pred_boxes [B,Q,4] normalized cxcywh, orig_sizes [B,2] (w, h))``
-> ``{'labels' [B,K] int32, 'boxes' [B,K,4] xyxy pixels, 'scores' [B,K] float32}``, sorted by score
descending, K = num_top_queries. Jit-able (static K, static remap flag).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from deim_jax.models import box_ops

# The 80 COCO category ids (1..90 with gaps), ascending: contiguous label i -> MSCOCO_CATEGORY_IDS[i].
MSCOCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)
MSCOCO_LABEL2CATEGORY = {i: c for i, c in enumerate(MSCOCO_CATEGORY_IDS)}
MSCOCO_CATEGORY2LABEL = {c: i for i, c in enumerate(MSCOCO_CATEGORY_IDS)}


def label_to_category(labels):
    """Contiguous labels 0..79 (any int array) -> COCO category ids."""
    table = jnp.asarray(np.asarray(MSCOCO_CATEGORY_IDS, np.int32))
    return table[labels]


def category_to_label(categories):
    """COCO category ids (numpy ints) -> contiguous labels; unknown ids give -1."""
    table = np.full(max(MSCOCO_CATEGORY_IDS) + 1, -1, np.int64)
    table[list(MSCOCO_CATEGORY_IDS)] = np.arange(len(MSCOCO_CATEGORY_IDS))
    return table[np.asarray(categories)]


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
    labels = (index % C).astype(jnp.int32)
    query = index // C
    top_boxes = jnp.take_along_axis(boxes, query[..., None], axis=1)
    if remap_mscoco_category:
        labels = label_to_category(labels)
    return {"labels": labels, "boxes": top_boxes, "scores": top_scores}
