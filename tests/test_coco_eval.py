"""COCO evaluation: the 12 numbers equal a direct pycocotools run; perfect detections give AP 1."""

import contextlib
import io
import json

import numpy as np
import pytest

from deim_jax.evaluate.coco_eval import STAT_NAMES, CocoEvaluator


@pytest.fixture()
def gt_file(tmp_path):
    images = [{"id": i, "width": 200, "height": 100, "file_name": f"{i}.png"} for i in (1, 2, 3)]
    cats = [{"id": 3, "name": "car"}, {"id": 7, "name": "dog"}]
    boxes = {1: [(10, 10, 50, 40, 3), (100, 20, 60, 60, 7)], 2: [(5, 5, 20, 20, 3)], 3: [(30, 30, 100, 50, 7)]}
    anns, aid = [], 1
    for iid, bs in boxes.items():
        for x, y, w, h, c in bs:
            anns.append({"id": aid, "image_id": iid, "category_id": c, "bbox": [x, y, w, h], "area": w * h,
                         "iscrowd": 0})
            aid += 1
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path), boxes


def test_perfect_detections_give_ap_one(gt_file):
    path, boxes = gt_file
    ev = CocoEvaluator(path)
    for iid, bs in boxes.items():
        b = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in bs], np.float32)[None]
        ev.add([iid], b, np.ones((1, len(bs))), np.array([[c for *_, c in bs]]))
    s = ev.summarize()
    assert s["AP"] == pytest.approx(1.0) and s["AP50"] == pytest.approx(1.0)
    assert s["per_class"] == {"car": pytest.approx(1.0), "dog": pytest.approx(1.0)}


def test_numbers_equal_direct_pycocotools(gt_file):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    path, boxes = gt_file
    rng = np.random.default_rng(0)
    ev = CocoEvaluator(path)
    dets = []
    for iid, bs in boxes.items():
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in bs], np.float64)
        xyxy = np.concatenate([xyxy + rng.normal(0, 4, xyxy.shape), rng.uniform(0, 100, (3, 4)).cumsum(-1)])
        scores = rng.uniform(0.1, 1.0, len(xyxy))
        cats = np.array([c for *_, c in bs] + [3, 7, 3])
        ev.add([iid], xyxy[None], scores[None], cats[None])
        for b, s, c in zip(xyxy, scores, cats):
            dets.append({"image_id": iid, "category_id": int(c), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                         "score": s})
    mine = ev.summarize()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(path)
        ref = COCOeval(gt, gt.loadRes(dets), "bbox")
        ref.evaluate(), ref.accumulate(), ref.summarize()
    for name, value in zip(STAT_NAMES, ref.stats):
        assert mine[name] == pytest.approx(value, abs=1e-12), name
    assert 0 < mine["AP"] < 1


def test_same_image_twice_is_an_error(gt_file):
    path, _ = gt_file
    ev = CocoEvaluator(path)
    ev.add([1], np.zeros((1, 1, 4)), np.ones((1, 1)), np.array([[3]]))
    with pytest.raises(ValueError, match="image id 1"):
        ev.add([1, 2], np.zeros((2, 1, 4)), np.ones((2, 1)), np.array([[3], [3]]), valid=[True, False])
