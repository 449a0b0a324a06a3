"""COCO box AP with pycocotools, accumulated batch by batch.

Detections are ``xyxy`` pixel boxes of the original image, scores and COCO
category ids (what ``postprocess`` returns); every detection is kept (no score
threshold, no NMS), as the official evaluator does.
"""

from __future__ import annotations

import contextlib
import functools
import io
from typing import Dict, Iterable, List, Mapping, Optional

import numpy as np

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class CocoEvaluator:
    """Collects detections and computes the 12 COCO numbers plus per-class AP.

    ``coco_gt`` is a ``pycocotools.coco.COCO`` object or the path of an
    ``instances_*.json`` file.
    """

    def __init__(self, coco_gt):
        if isinstance(coco_gt, str):
            coco_gt = load_ground_truth(coco_gt)
        self.coco_gt = coco_gt
        self.detections: List[Dict] = []
        self.image_ids: set = set()

    def add(self, image_ids, boxes_xyxy, scores, category_ids, valid: Optional[Iterable[bool]] = None):
        """Add a batch: image_ids [B], boxes [B, K, 4] xyxy pixels, scores [B, K], category_ids [B, K]."""
        image_ids = np.asarray(image_ids)
        boxes_xyxy = np.asarray(boxes_xyxy, np.float64)
        scores = np.asarray(scores, np.float64)
        category_ids = np.asarray(category_ids)
        valid = np.ones(len(image_ids), bool) if valid is None else np.asarray(valid, bool)
        for b in np.nonzero(valid)[0]:
            iid = int(image_ids[b])
            if iid in self.image_ids:
                raise ValueError(f"image id {iid} was evaluated twice (eval pipeline padding/sharding bug)")
            self.image_ids.add(iid)
            x1, y1, x2, y2 = boxes_xyxy[b].T
            for k in range(len(scores[b])):
                self.detections.append(
                    {
                        "image_id": iid,
                        "category_id": int(category_ids[b, k]),
                        "bbox": [float(x1[k]), float(y1[k]), float(x2[k] - x1[k]), float(y2[k] - y1[k])],
                        "score": float(scores[b, k]),
                    }
                )

    def summarize(self) -> Dict:
        """{'AP': ..., ..., 'ARl': ..., 'per_class': {name: AP}} (fractions in [0, 1]; -1 where undefined).

        pycocotools' progress chatter and its 12-line summary are captured, not printed
        (``format_stats`` gives the compact table).
        """
        from pycocotools.cocoeval import COCOeval

        img_ids = sorted(self.image_ids)
        if not self.detections:
            stats = {k: 0.0 for k in STAT_NAMES}
            stats["per_class"] = {c["name"]: 0.0 for c in self.coco_gt.loadCats(self.coco_gt.getCatIds())}
            return stats
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = self.coco_gt.loadRes(self.detections)
            ev = COCOeval(self.coco_gt, coco_dt, "bbox")
            ev.params.imgIds = img_ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}
        stats["per_class"] = per_class_ap(ev, self.coco_gt)
        return stats


@functools.lru_cache(maxsize=2)
def load_ground_truth(annotations_file: str):
    """``pycocotools.coco.COCO`` of an annotation file, read once per file (its chatter captured)."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(annotations_file)


def ground_truth(records):
    """``pycocotools.coco.COCO`` of the records' ground truth: their COCO json, or for a set
    read from another format (YOLO, VOC) the records themselves (``CocoRecords.as_coco_dict``)."""
    if records.source_format == "coco":
        return load_ground_truth(records.annotations_file)
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = records.as_coco_dict()
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def format_stats(stats: Mapping[str, float]) -> str:
    """The 12 COCO numbers as one compact two-line table (percent)."""
    head = " ".join(f"{k:>6}" for k in STAT_NAMES)
    vals = " ".join(f"{100 * stats[k]:6.2f}" if stats[k] >= 0 else f"{'-':>6}" for k in STAT_NAMES)
    return f"{head}\n{vals}"


def per_class_ap(ev, coco_gt) -> Dict[str, float]:
    """AP@[.5:.95] per category from an accumulated COCOeval (area all, maxDets 100); -1 if no GT."""
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    out = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        name = coco_gt.loadCats([cat_id])[0]["name"]
        out[name] = float(np.mean(p)) if p.size else -1.0
    return out


def format_per_class(per_class: Mapping[str, float]) -> str:
    width = max((len(n) for n in per_class), default=8)
    lines = [f"{'class':<{width}}  AP"]
    lines += [f"{n:<{width}}  {ap * 100:5.1f}" if ap >= 0 else f"{n:<{width}}    -" for n, ap in per_class.items()]
    return "\n".join(lines)
