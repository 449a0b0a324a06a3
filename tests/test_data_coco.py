"""COCO-format loading: category handling and the bad-annotation rows of the table (no TF)."""

import hashlib
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from deim_jax.data import coco as C
from deim_jax.data import demo
from deim_jax.errors import DataError, MissingDataError, UserError


def _write(tmp_path, images, annotations, categories, files=True):
    (tmp_path / "img").mkdir(exist_ok=True)
    if files:
        for im in images:
            Image.new("RGB", (im["width"], im["height"])).save(tmp_path / "img" / im["file_name"])
    p = tmp_path / "ann.json"
    p.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(tmp_path / "img"), str(p)


def _img(i, w=40, h=30):
    return {"id": i, "file_name": f"{i}.png", "width": w, "height": h}


def _ann(i, img, cat, bbox, crowd=0):
    return {"id": i, "image_id": img, "category_id": cat, "bbox": bbox, "iscrowd": crowd, "area": 1.0}


def test_mscoco_remap_and_custom_contiguous(tmp_path):
    cats = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}]
    d, a = _write(tmp_path, [_img(1)], [_ann(1, 1, 90, [1, 1, 5, 5]), _ann(2, 1, 1, [2, 2, 5, 5])], cats)
    r = C.load_coco(d, a, 80, remap_mscoco_category=True)
    assert r.labels.tolist() == [79, 0]
    assert r.label_to_category[79] == 90 and len(C.MSCOCO_CATEGORY_IDS) == 80
    r = C.load_coco(d, a, 2, remap_mscoco_category=False)
    assert r.labels.tolist() == [1, 0] and r.label_to_category == {0: 1, 1: 90}
    assert r.category_names == {0: "person", 1: "toothbrush"}


def test_num_classes_zero_takes_them_from_the_data(tmp_path, caplog):
    """0 = as many classes as the data need (the mapping is unchanged); a larger count is kept."""
    from deim_jax import configs
    from deim_jax.data.classes import adopt_num_classes, num_classes_of

    cats = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}]
    d, a = _write(tmp_path, [_img(1)], [_ann(1, 1, 90, [1, 1, 5, 5]), _ann(2, 1, 1, [2, 2, 5, 5])], cats)
    r = C.load_coco(d, a, 0)
    assert r.labels.tolist() == [1, 0] and r.label_to_category == {0: 1, 1: 90} and num_classes_of(r) == 2
    assert num_classes_of(C.load_coco(d, a, 0, remap_mscoco_category=True)) == 80
    c = configs.module("defaults").run("test", "deim", epochs=1, batch_size=2, eval_size=64)
    c.data = configs.module("defaults").demo_data(c, str(tmp_path))
    assert c.num_classes == 0  # the default: from the data set
    with caplog.at_level("INFO", logger="deim_jax"):
        assert adopt_num_classes(c.data, r) == 2 and c.num_classes == 2
        c.num_classes = 7
        assert adopt_num_classes(c.data, r) == 7 and C.load_coco(d, a, 7).label_to_category == {0: 1, 1: 90}
    assert [rec.getMessage() for rec in caplog.records] == [f"num_classes=2 from {a}: names person, toothbrush"]
    # --mode=eval: the classes a checkpoint was trained with win over those the val set lists
    from deim_jax.data.classes import Classes

    stored = Classes({0: "person", 1: "toothbrush", 2: "kite"}, {0: 1, 1: 90, 2: 38})
    c.num_classes = 0
    caplog.clear()
    with caplog.at_level("INFO", logger="deim_jax"):
        assert adopt_num_classes(c.data, r, stored, "runs/x/checkpoints") == 3 and c.num_classes == 3
    assert caplog.records[0].getMessage() == "num_classes=3 from runs/x/checkpoints: names person, toothbrush, kite"


def test_category_errors_name_file_and_ids(tmp_path):
    cats = [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    d, a = _write(tmp_path, [_img(1)], [_ann(1, 1, 9, [1, 1, 5, 5])], cats)
    with pytest.raises(ValueError, match=r"ann.json.*\[9\]"):
        C.load_coco(d, a, 2)
    d, a = _write(tmp_path, [_img(1)], [_ann(1, 1, 7, [1, 1, 5, 5])], cats)
    with pytest.raises(ValueError, match=r"ann.json.*num_classes=1"):
        C.load_coco(d, a, 1)
    with pytest.raises(ValueError, match="not COCO ids"):
        C.category_mapping([{"id": 95}], 80, True, a)
    d, a = _write(tmp_path, [_img(1)], [], [])
    with pytest.raises(ValueError, match=r"ann.json.*empty"):
        C.load_coco(d, a, 5)


def test_bad_boxes_crowd_nan_clip_and_empty_images(tmp_path):
    cats = [{"id": 1, "name": "a"}]
    anns = [_ann(1, 1, 1, [-5, -5, 10, 10]),          # clipped to [0,0,5,5]
            _ann(2, 1, 1, [30, 20, 50, 50]),           # clipped to [30,20,40,30]
            _ann(3, 1, 1, [1, 1, 0, 5]),               # zero width -> dropped
            _ann(4, 1, 1, [1, 1, -3, 5]),              # negative -> dropped
            _ann(5, 1, 1, [100, 100, 5, 5]),           # outside -> degenerate after clip
            _ann(6, 1, 1, [float("nan"), 1, 5, 5]),    # NaN -> dropped
            _ann(7, 1, 1, [1, 1, 5, 5], crowd=1),      # crowd -> dropped
            _ann(8, 99, 1, [1, 1, 5, 5])]              # unknown image -> dropped
    d, a = _write(tmp_path, [_img(2), _img(1)], anns, cats)
    r = C.load_coco(d, a, 1)
    assert r.image_ids.tolist() == [1, 2]              # sorted, image without boxes kept
    np.testing.assert_allclose(r.boxes_of(0)[0], [[0, 0, 5, 5], [30, 20, 40, 30]])
    assert len(r.boxes_of(1)[0]) == 0
    assert r.stats["degenerate"] == 3 and r.stats["nonfinite"] == 1 and r.stats["crowd"] == 1
    assert r.stats["orphan_annotations"] == 1


def test_duplicate_ids_and_missing_files(tmp_path):
    cats = [{"id": 1, "name": "a"}]
    d, a = _write(tmp_path, [_img(1), _img(1), _img(2)], [], cats)
    r = C.load_coco(d, a, 1)
    assert len(r) == 2 and r.stats["duplicate_images"] == 1
    d, a = _write(tmp_path, [_img(1), _img(1, w=50)], [], cats)
    with pytest.raises(ValueError, match=r"duplicated image ids.*\[1\]"):
        C.load_coco(d, a, 1)
    d, a = _write(tmp_path, [_img(1), _img(2)], [_ann(1, 2, 1, [1, 1, 4, 4])], cats)
    os.remove(os.path.join(d, "1.png"))
    r = C.load_coco(d, a, 1)
    assert r.image_ids.tolist() == [2] and r.stats["missing_files"] == 1 and len(r.boxes_of(0)[0]) == 1
    with pytest.raises(FileNotFoundError, match="1.png"):
        C.load_coco(d, a, 1, missing="error")


def test_demo_generator_deterministic_and_boxes_tight(tmp_path):
    p1 = demo.generate(str(tmp_path / "a"), num_train=6, num_val=2, seed=3)
    p2 = demo.generate(str(tmp_path / "b"), num_train=6, num_val=2, seed=3)

    def digest(root):
        h = hashlib.sha256()
        for dp, _, fs in sorted(os.walk(root)):
            for f in sorted(fs):
                h.update(f.encode() + open(os.path.join(dp, f), "rb").read())
        return h.hexdigest()

    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    r = C.load_coco(p1["train_images"], p1["train_annotations"], 4)
    assert len(r) == 6 and len(r.boxes) >= 6 and set(r.labels.tolist()) <= {0, 1, 2, 3}
    assert r.label_to_category == {0: 1, 1: 2, 2: 3, 3: 5}
    for i in range(len(r)):
        assert 64 <= r.widths[i] <= 256 and 64 <= r.heights[i] <= 256


def test_prepare_generates_demo_and_reports_missing(tmp_path):
    from deim_jax import configs
    from deim_jax.data import prepare
    defaults = configs.module("defaults")
    c = defaults.run("test", "deim", epochs=1, batch_size=2, num_classes=4, eval_size=64)
    c.data = defaults.demo_data(c, str(tmp_path / "d"))
    with pytest.raises(FileNotFoundError, match="config.data.train.annotations"):
        prepare.check_or_generate(c.data)
    c.data.generate_demo = True
    prepare.check_or_generate(c.data)
    assert os.path.isfile(c.data.val.annotations) and len(os.listdir(c.data.train.images)) == 256


def test_malformed_json_names_file_line_and_column(tmp_path):
    p = tmp_path / "instances_train.json"
    p.write_text('{"images": [],\n "annotations": [] "categories": []}')
    with pytest.raises(DataError, match=re.escape(
            f"{p}:2:20: malformed JSON: Expecting ',' delimiter (line 2, column 20)")):
        C.load_coco(str(tmp_path), str(p), 1)


@pytest.mark.parametrize("content, message", [
    ([], "the top level is a JSON list, not an object"),
    ({"images": {}}, "'images' is a JSON object, not a list"),
    ({"images": [_img(1), {"id": 2, "file_name": "2.png", "height": 3}]}, r"images\[1\] \(id 2\) has no 'width'"),
    ({"images": ["1.png"]}, r"images\[0\] is a JSON string, not an object"),
    ({"images": [dict(_img(1), width=0)]}, r"images\[0\] \(id 1\) 'width' is 0, not a positive size"),
    ({"images": [dict(_img(1), file_name=7)]}, r"images\[0\] \(id 1\) 'file_name' is 7, not a string"),
    ({"annotations": [{"id": 5, "image_id": 1, "bbox": [0, 0, 1, 1]}]},
     r"annotations\[0\] \(id 5\) has no 'category_id'"),
    ({"categories": [{"id": "cat"}]}, r"categories\[0\] \(id 'cat'\) 'id' is 'cat', not an integer"),
], ids=["top-level", "images-type", "no-width", "entry-type", "zero-width", "file-name", "no-category",
        "category-id"])
def test_bad_structure_names_the_file_entry_and_field(tmp_path, content, message):
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(content))
    with pytest.raises(DataError, match=re.escape(str(p)) + ": " + message):
        C.load_coco(str(tmp_path), str(p), 1)


def test_data_errors_are_user_errors(tmp_path):
    """The errors of the table are UserErrors (one line on the command line) and keep their old
    builtin bases for callers that catch those."""
    cats = [{"id": 1, "name": "a"}]
    d, a = _write(tmp_path, [_img(1)], [_ann(1, 1, 9, [1, 1, 5, 5])], cats)
    with pytest.raises(DataError) as e:
        C.load_coco(d, a, 1)
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
    d, a = _write(tmp_path, [_img(2)], [], cats, files=False)  # no 2.png
    with pytest.raises(MissingDataError) as e:
        C.load_coco(d, a, 1, missing="error")
    assert isinstance(e.value, UserError) and isinstance(e.value, FileNotFoundError)
