"""Counts of a split's ``CocoRecords`` (numpy only, no decoding): boxes per image and per class,
box sizes by COCO area range, and the start-up warnings for images denser than the config allows
(``startup_warnings``: logged by the train loop, printed by ``deim_jax.tools.inspect_data``).

Areas are those of the loaded boxes (clipped to the image) in original image pixels, binned as
COCO's evaluation does: small < 32², medium < 96², large the rest.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional

import numpy as np

log = logging.getLogger(__name__)

AREA_RANGES = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2), ("large", 96.0 ** 2, np.inf))

# what happens to the boxes beyond a limit (the field that sets it -> consequence)
LIMITS = {
    "config.data.max_boxes": "the extra boxes are dropped",
    "config.model.decoder.num_queries": "a DETR cannot detect more objects than it has queries",
}


def boxes_per_image(records) -> np.ndarray:
    """[N] int64: the number of boxes of each image."""
    return np.diff(records.box_offsets)


def class_counts(records) -> Dict[int, int]:
    """label -> number of boxes, for every label of ``records.category_names`` (0 if it has none)."""
    counts = np.bincount(records.labels, minlength=max(records.category_names, default=-1) + 1)
    return {label: int(counts[label]) for label in sorted(records.category_names)}


def area_counts(records) -> Dict[str, int]:
    """COCO area range name -> number of boxes."""
    wh = records.boxes[:, 2:] - records.boxes[:, :2]
    area = wh[:, 0].astype(np.float64) * wh[:, 1]
    return {name: int(((area >= lo) & (area < hi)).sum()) for name, lo, hi in AREA_RANGES}


def boxes_beyond(records, limit: int) -> int:
    """Boxes that images hold beyond ``limit`` each (what the pipeline drops at ``max_boxes=limit``)."""
    return int(np.maximum(boxes_per_image(records) - limit, 0).sum())


def limit_warnings(records, split: str, max_boxes: Optional[int] = None,
                   num_queries: Optional[int] = None) -> List[str]:
    """One line per limit (None: not checked) that some images of ``records`` exceed, e.g.
    ``train: 37 images hold more than config.data.max_boxes=100 boxes (max 143): the extra boxes
    are dropped``."""
    counts = boxes_per_image(records)
    out = []
    for field, limit in zip(LIMITS, (max_boxes, num_queries)):
        if limit is None or not len(counts) or counts.max() <= limit:
            continue
        n = int((counts > limit).sum())
        images = "1 image holds" if n == 1 else f"{n} images hold"
        out.append(f"{split}: {images} more than {field}={int(limit)} boxes (max {int(counts.max())}): "
                   f"{LIMITS[field]}")
    return out


def adopt_max_boxes(d, records, num_queries: int) -> int:
    """``d.max_boxes``, set from the train ``records`` when it is 0: the most boxes of one image,
    times 4 with Mosaic and 2 with MixUp on (what one augmented sample can hold), at most
    ``num_queries`` (one-to-one matching leaves targets beyond the queries unmatched); logged."""
    if int(d.max_boxes) == 0:
        per_image = int(boxes_per_image(records).max(initial=1))
        factor = (4 if d.mosaic_prob > 0 else 1) * (2 if d.mixup_prob > 0 else 1)
        d.max_boxes = max(1, min(int(num_queries), per_image * factor))
        log.info("max_boxes=%d from the train set (at most %d boxes per image, x%d with Mosaic/MixUp, "
                 "at most num_queries=%d)", int(d.max_boxes), per_image, factor, int(num_queries))
    return int(d.max_boxes)


def startup_warnings(train, val, max_boxes: int, num_queries: int) -> List[str]:
    """The limit warnings of a training run: train against both limits, val against ``num_queries``
    only (AP is computed from the annotation file, so val boxes beyond ``max_boxes`` cost nothing)."""
    return limit_warnings(train, "train", max_boxes, num_queries) + limit_warnings(val, "val", num_queries=num_queries)
