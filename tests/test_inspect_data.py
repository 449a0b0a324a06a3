"""``deim_jax.tools.inspect_data`` and the start-up checks it shares with training, on a tiny set with
every kind of defect and one dense image; the expected numbers are counted here from the JSON."""

import collections
import itertools
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deim_jax import configs, models
from deim_jax.train import loop
from tests.train_helpers import tiny_config, tiny_dataset

DENSE = 35  # boxes of the dense image: more than the tiny config's max_boxes (16) and num_queries (30)


def _add_defects(root):
    """Append to the train split: an image without boxes, a duplicated image entry, an orphan, a crowd,
    a NaN and a zero-width box, an image whose file is missing and an image with DENSE boxes."""
    path = os.path.join(root, "annotations", "instances_train.json")
    data = json.load(open(path))
    first = data["images"][0]["id"]
    for iid in (900, 902):
        Image.new("RGB", (200, 120), (90, 90, 90)).save(os.path.join(root, "train", f"{iid}.jpg"))
    data["images"] += [{"id": 900, "file_name": "900.jpg", "width": 200, "height": 120}, dict(data["images"][0]),
                       {"id": 901, "file_name": "missing.jpg", "width": 50, "height": 50},
                       {"id": 902, "file_name": "902.jpg", "width": 200, "height": 120}]

    ids = itertools.count(10 ** 6)

    def ann(image_id, bbox, cat=2, **kw):
        return {"id": next(ids), "image_id": image_id, "category_id": cat, "bbox": bbox,
                "area": 1.0, "iscrowd": 0, **kw}

    extra = [ann(123456, [1, 1, 5, 5]), ann(first, [1, 1, 5, 5], iscrowd=1), ann(first, [1, float("nan"), 5, 5]),
             ann(first, [1, 1, 0, 5]), ann(901, [1, 1, 40, 40], cat=1)]
    extra += [ann(902, [5 + 10 * (k % 18), 5 + 40 * (k // 18), 6, 30 + k]) for k in range(DENSE)]
    data["annotations"] += extra
    with open(path, "w") as f:
        json.dump(data, f)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tiny_dataset(str(tmp_path_factory.mktemp("dirty")))
    _add_defects(root)
    return root


def _expected(root, split):
    """What the tool must print, counted straight from the JSON (all boxes lie inside their images)."""
    data = json.load(open(os.path.join(root, "annotations", f"instances_{split}.json")))
    names = {c["id"]: c["name"] for c in data["categories"]}
    images = {im["id"] for im in data["images"] if os.path.isfile(os.path.join(root, split, im["file_name"]))}
    per_class, areas = collections.Counter(), collections.Counter()
    per_image = collections.Counter({i: 0 for i in images})
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        if a["image_id"] in images and not a["iscrowd"] and math.isfinite(y) and w > 0 and h > 0:
            per_class[names[a["category_id"]]] += 1
            per_image[a["image_id"]] += 1
            areas["small" if w * h < 32 ** 2 else "medium" if w * h < 96 ** 2 else "large"] += 1
    return dict(per_class=per_class, areas=areas, empty=sum(n == 0 for n in per_image.values()),
                most=max(per_image.values()))


def _printed(stdout):
    """(name -> (train, val) of the class table, area range -> (train, val), row text -> (train, val))."""
    classes = {m[1]: (int(m[2]), int(m[3])) for m in re.finditer(r"^ *\d+ +\d+ +(\w+) +(\d+) +(\d+)$", stdout, re.M)}
    areas = {m[1]: (int(m[2]), int(m[3]))
             for m in re.finditer(r"^(small|medium|large) \(.*?\) +(\d+) +(\d+)$", stdout, re.M)}
    rows = {m[1]: (int(m[2]), int(m[3]))
            for m in re.finditer(r"^([a-zA-Z].*?)  +(\d+)  +(\d+)(?:  .*)?$", stdout, re.M)}
    return classes, areas, rows


def test_inspect_data_prints_the_counts_and_writes_the_picture(root, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "deim_jax.tools.inspect_data", f"--config=tests/tiny_config.py:{root}",
                        f"--out={tmp_path}/out"], capture_output=True, text=True, cwd=configs.REPO_ROOT, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    classes, areas, rows = _printed(r.stdout)
    train, val = _expected(root, "train"), _expected(root, "val")
    names = ("square", "circle", "triangle", "cross")
    assert classes == {n: (train["per_class"][n], val["per_class"][n]) for n in names}
    assert areas == {a: (train["areas"][a], val["areas"][a]) for a in ("small", "medium", "large")}
    assert rows["images without boxes"] == (train["empty"], val["empty"]) and train["empty"] >= 1
    assert rows["most boxes in one image"] == (DENSE, val["most"])
    assert rows["images over max_boxes=16"][0] == 1 and rows["images over num_queries=30"][0] == 1
    for what, count in [("duplicated image id, identical entries", 1), ("annotation for an image id not listed", 1),
                        ("iscrowd == 1", 1), ("NaN / inf / missing / malformed bbox", 1),
                        ("zero / negative width or height", 1), ("missing image file", 1),
                        ("more boxes than max_boxes=16", DENSE - 16)]:
        assert rows[what] == (count, 0), what
    assert re.search(r"^missing image file +1 +0 +train: dropped before training with one warning", r.stdout, re.M)
    assert (f"warning: train: 1 image holds more than config.data.max_boxes=16 boxes (max {DENSE}): "
            "the extra boxes are dropped") in r.stdout
    assert (f"warning: train: 1 image holds more than config.model.decoder.num_queries=30 boxes (max {DENSE}): "
            "a DETR cannot detect more objects than it has queries") in r.stdout
    picture = tmp_path / "out" / "demo_data.png"
    assert f"wrote {picture}" in r.stdout
    with Image.open(picture) as im:
        assert im.size == (4 * 256, 256) and np.asarray(im).std() > 0  # a batch of 4, drawn


def test_training_start_up_takes_num_classes_from_the_data_and_warns(root, caplog):
    cfg = tiny_config(root)
    cfg.num_classes = 0
    with caplog.at_level("INFO", logger="deim_jax"):
        train, _ = loop.load_records(cfg)
    assert cfg.num_classes == cfg.data.num_classes == 4
    messages = [rec.getMessage() for rec in caplog.records]
    assert f"num_classes=4 from {train.annotations_file}: names square, circle, triangle, cross" in messages
    assert [m for m in messages if "hold" in m] == [
        f"train: 1 image holds more than config.data.max_boxes=16 boxes (max {DENSE}): the extra boxes are dropped",
        f"train: 1 image holds more than config.model.decoder.num_queries=30 boxes (max {DENSE}): a DETR cannot "
        "detect more objects than it has queries"]
    head = models.init_shapes(models.build(cfg), cfg)["params"]["decoder"]["enc_score_head"]["kernel"]
    assert head.shape[-1] == 4
