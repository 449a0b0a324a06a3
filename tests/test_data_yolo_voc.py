"""YOLO and Pascal VOC sets: the same generated set in three formats loads to the same records,
every bad-input row of the tables in deim_jax.data.yolo / deim_jax.data.voc, format detection,
the config helpers and checks, evaluation ground truth, and a train iterator on each format."""

import logging
import os
import re

import numpy as np
import pytest
from PIL import Image

from deim_jax import configs, data
from deim_jax.data import demo, formats, prepare, voc, yolo
from deim_jax.data import coco as C
from deim_jax.errors import ConfigError, DataError, MissingDataError

DEMO_NAMES = ("square", "circle", "triangle", "cross")  # the COCO json's category order


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """The same generated demo set (5 train, 3 val images) in each format: format -> root."""
    base = tmp_path_factory.mktemp("formats")
    return {f: demo.generate(str(base / f), num_train=5, num_val=3, seed=4, format=f)["root"]
            for f in ("coco", "yolo", "voc")}


def _coco(root, split):
    return C.load_coco(os.path.join(root, split), os.path.join(root, "annotations", f"instances_{split}.json"), 4)


@pytest.mark.parametrize("split", ["train", "val"])
def test_three_formats_of_one_set_load_to_the_same_records(sets, split):
    ref = _coco(sets["coco"], split)
    y = yolo.load_yolo(sets["yolo"], split, 4)
    v = voc.load_voc(sets["voc"], split, 4, names=DEMO_NAMES)
    v_sorted = voc.load_voc(sets["voc"], split, 4)  # names: the sorted set found in Annotations/
    assert len(ref) == {"train": 5, "val": 3}[split]
    for r in (y, v, v_sorted):
        assert [os.path.basename(f) for f in r.file_names] == [os.path.basename(f) for f in ref.file_names]
        assert all(os.path.isabs(f) for f in r.file_names)
        np.testing.assert_array_equal(r.image_ids, ref.image_ids)  # numeric file stems keep their ids
        np.testing.assert_array_equal(r.widths, ref.widths)
        np.testing.assert_array_equal(r.heights, ref.heights)
        np.testing.assert_array_equal(r.box_offsets, ref.box_offsets)
        assert r.boxes.dtype == np.float32 and r.labels.dtype == np.int32
        np.testing.assert_allclose(r.boxes, ref.boxes, atol=2e-3)  # YOLO: 6 decimals of normalized
        names = [r.category_names[int(l)] for l in r.labels]
        assert names == [ref.category_names[int(l)] for l in ref.labels]
        assert {k: r.stats[k] for k in ref.stats} == ref.stats
    np.testing.assert_array_equal(v.boxes, ref.boxes)  # VOC's 1-based inclusive pixels are exact
    for r in (y, v):
        np.testing.assert_array_equal(r.labels, ref.labels)
        assert r.category_names == ref.category_names and r.label_to_category == {0: 0, 1: 1, 2: 2, 3: 3}
    assert v_sorted.category_names == dict(enumerate(sorted(DEMO_NAMES)))
    assert (y.source_format, v.source_format, ref.source_format) == ("yolo", "voc", "coco")


def test_converted_ground_truth_scores_its_own_boxes_ap_one(sets):
    from deim_jax.evaluate.coco_eval import CocoEvaluator, ground_truth
    r = yolo.load_yolo(sets["yolo"], "val", 4)
    gt = r.as_coco_dict()
    assert len(gt["annotations"]) == len(r.boxes) and [c["name"] for c in gt["categories"]] == list(DEMO_NAMES)
    ev = CocoEvaluator(ground_truth(r))
    for i in range(len(r)):
        b, l = r.boxes_of(i)
        ev.add(r.image_ids[i:i + 1], b[None], np.ones([1, len(b)]), [[r.label_to_category[int(x)] for x in l]])
    stats = ev.summarize()
    assert stats["AP"] == pytest.approx(1.0) and set(stats["per_class"]) <= set(DEMO_NAMES)


def test_in_memory_dict_gets_the_checks_of_a_json(tmp_path):
    bad = {"images": [{"id": 1, "file_name": "a.png", "height": 3}], "categories": [{"id": 0}]}
    with pytest.raises(DataError, match=r"^src.yaml: images\[0\] \(id 1\) has no 'width'$"):
        C.load_coco(str(tmp_path), "src.yaml", 1, dataset=bad)


# ----------------------------------------------------------------------------- YOLO

YAML = "names: [a, b]\ntrain: images/train\nval: images/val\n"


def _image(path, size=(20, 10)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, (90, 30, 200)).save(path)


def _yolo(tmp_path, labels, yaml_text=YAML, split="train"):
    """A YOLO set: one 20x10 png per stem of ``labels`` (text of its label file, None: no file)."""
    root = tmp_path / "y"
    for stem, text in labels.items():
        _image(str(root / "images" / split / f"{stem}.png"))
        if text is not None:
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{stem}.txt").write_text(text)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    if yaml_text is not None:
        (root / "data.yaml").write_text(yaml_text)
    return str(root)


def test_yolo_boxes_background_and_names_mapping(tmp_path):
    root = _yolo(tmp_path, {"p": "0 0.5 0.5 0.5 0.4\n\n3 0.25 0.25 0.5 0.5\n", "q": "", "r": None},
                 yaml_text="path: .\nnames: {0: a, 3: d}\nnc: 2\ntrain: images/train\n")
    r = yolo.load_yolo(root, "train", 2)
    assert [os.path.basename(f) for f in r.file_names] == ["p.png", "q.png", "r.png"]
    np.testing.assert_array_equal(r.image_ids, [1, 2, 3])  # non-numeric stems: 1..N in sorted order
    np.testing.assert_array_equal(r.box_offsets, [0, 2, 2, 2])  # empty file and no file: background
    np.testing.assert_allclose(r.boxes, [[5, 3, 15, 7], [0, 0, 10, 5]])
    np.testing.assert_array_equal(r.labels, [0, 1])
    assert r.label_to_category == {0: 0, 1: 3} and r.category_names == {0: "a", 1: "d"}
    assert r.stats["no_label_file"] == 1 and r.annotations_file == os.path.join(root, "data.yaml")


def test_yolo_classes_txt_layout_and_yaml_file_as_root(tmp_path):
    root = _yolo(tmp_path, {"1": "1 0.5 0.5 1 1\n"}, yaml_text=None, split="val")
    (tmp_path / "y" / "classes.txt").write_text("a\nb\n\n")
    r = yolo.load_yolo(root, "val", 2)
    np.testing.assert_allclose(r.boxes, [[0, 0, 20, 10]])
    assert r.category_names == {0: "a", 1: "b"}
    (tmp_path / "y" / "other.yaml").write_text("names: [x, y]\nval: images/val\n")
    assert yolo.load_yolo(os.path.join(root, "other.yaml"), "val", 2).category_names == {0: "x", 1: "y"}


def test_yolo_roboflow_parent_paths(tmp_path):
    """Roboflow exports name '../train/images' next to the yaml; it resolves without the '../'."""
    root = tmp_path / "rf"
    _image(str(root / "train" / "images" / "a.jpg"))
    (root / "train" / "labels").mkdir()
    (root / "train" / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("names: [a]\ntrain: ../train/images\n")
    assert len(yolo.load_yolo(str(root), "train", 1).boxes) == 1


@pytest.mark.parametrize("yaml_text, message", [
    ("names: [a\ntrain: x", r":2:6: malformed YAML: expected ',' or ']', but got ':'"),
    ("- a\n- b\n", "the top level is not a mapping"),
    ("train: images/train\n", "no 'names'"),
    ("names: a\ntrain: images/train\n", "'names' is 'a', not a list or a mapping"),
    ("names: {x: a}\ntrain: images/train\n", "'names' key 'x' is not a class index"),
    ("names: [a, b]\nnc: 3\ntrain: images/train\n", "'nc' is 3 but 'names' has 2 entries"),
    ("names: []\ntrain: images/train\n", "'names' is empty"),
    ("names: [a]\nval: images/val\n", r"no 'train' entry \(config.data.<train\|val>.split"),
    ("names: [a]\ntrain: train.txt\n", "'train' is 'train.txt', a list of image files"),
    ("names: [a]\ntrain: 3\n", "'train' is 3, not a folder name"),
], ids=["syntax", "top-level", "no-names", "names-type", "names-key", "nc", "empty", "no-split", "txt", "entry"])
def test_yolo_bad_yaml_is_a_data_error_naming_the_file(tmp_path, yaml_text, message):
    root = _yolo(tmp_path, {"a": None}, yaml_text=yaml_text)
    with pytest.raises(DataError, match=re.escape(os.path.join(root, "data.yaml")) + ".*" + message):
        yolo.load_yolo(root, "train", 2)


def test_yolo_missing_paths(tmp_path):
    with pytest.raises(MissingDataError, match="has no data.yaml or classes.txt"):
        yolo.load_yolo(str(tmp_path), "train", 1)
    root = _yolo(tmp_path, {"a": None})
    with pytest.raises(MissingDataError, match=r"the 'val' image folder .*images/val does not exist"):
        yolo.load_yolo(root, "val", 2)
    (tmp_path / "y" / "pics").mkdir()
    (tmp_path / "y" / "data.yaml").write_text("names: [a]\ntrain: pics\n")
    with pytest.raises(DataError, match="has no 'images' folder in its path, so its labels cannot be found"):
        yolo.load_yolo(root, "train", 1)
    (tmp_path / "y" / "classes.txt").write_text("a\n\nb\n")
    os.remove(tmp_path / "y" / "data.yaml")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'y' / 'classes.txt'}:2: empty class name")):
        yolo.load_yolo(root, "train", 2)


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.5", "4 fields, expected 5: class cx cy w h$"),
    ("0 0.1 0.1 0.2 0.1 0.2 0.2", r"7 fields, expected 5: class cx cy w h \(a segment polygon\?"),
    ("a 0.5 0.5 0.5 0.5", "class 'a' is not an integer"),
    ("0.0 0.5 0.5 0.5 0.5", "class '0.0' is not an integer"),
    ("1 0.5 x 0.5 0.5", "cy 'x' is not a number"),
    ("2 0.5 0.5 0.5 0.5", "class 2 is not one of the 2 classes named in .*data.yaml"),
    ("-1 0.5 0.5 0.5 0.5", "class -1 is not one of the 2 classes"),
], ids=["4-fields", "polygon", "class-text", "class-float", "coordinate", "class-range", "class-negative"])
def test_yolo_bad_label_line_names_file_and_line(tmp_path, line, message):
    root = _yolo(tmp_path, {"a": f"0 0.5 0.5 0.2 0.2\n{line}\n"})
    label = os.path.join(root, "labels", "train", "a.txt")
    with pytest.raises(DataError, match=re.escape(f"{label}:2: ") + message):
        yolo.load_yolo(root, "train", 2)


def test_yolo_out_of_range_clipped_or_dropped(tmp_path, caplog):
    root = _yolo(tmp_path, {"a": "0 0.5 0.5 1.01 1.0\n0 0.5 0.5 0.5 0.5\n0 1.2 0.5 0.2 0.2\n0 0.5 0.5 nan 0.1\n"})
    with caplog.at_level(logging.WARNING):
        r = yolo.load_yolo(root, "train", 2)
    np.testing.assert_allclose(r.boxes, [[0, 0, 20, 10], [5, 2.5, 15, 7.5]])  # the first one clipped
    assert r.stats["out_of_range"] == 1 and r.stats["nonfinite"] == 1
    assert re.search(r"1 box\(es\) with a corner outside \[-0.01, 1.01\].*first: .*a.txt:3", caplog.text)


def test_yolo_orphan_labels_and_unlabelled_split_warn(tmp_path, caplog):
    root = _yolo(tmp_path, {"a": None, "b": None})
    for name in ("ghost.txt", "classes.txt"):  # classes.txt (labelImg puts it there) is no label file
        (tmp_path / "y" / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (tmp_path / "y" / "labels" / "train" / name).write_text("0 0.5 0.5 0.1 0.1\n")
    with caplog.at_level(logging.WARNING):
        r = yolo.load_yolo(root, "train", 2)
    assert r.stats["orphan_labels"] == 1 and r.stats["no_label_file"] == 2 and len(r.boxes) == 0
    assert "1 label file(s) without an image" in caplog.text and "ghost.txt" in caplog.text
    assert "none of the 2 'train' images has a label file" in caplog.text


def test_yolo_unreadable_image_is_dropped_in_train_and_an_error_in_val(tmp_path, caplog):
    root = _yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": "0 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "y" / "images" / "train" / "b.png").write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING):
        r = yolo.load_yolo(root, "train", 2)
    assert [os.path.basename(f) for f in r.file_names] == ["a.png"] and len(r.boxes) == 1
    assert "1 image file(s) missing or unreadable" in caplog.text and "b.png" in caplog.text
    with pytest.raises(DataError, match="1 image file.s. missing or unreadable, so their size is unknown"):
        yolo.load_yolo(root, "train", 2, missing="error")


def test_yolo_num_classes_checked_like_coco(tmp_path):
    root = _yolo(tmp_path, {"a": "1 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(DataError, match="num_classes=1 does not cover the data"):
        yolo.load_yolo(root, "train", 1)


# ----------------------------------------------------------------------------- VOC

def _obj(name, box=(1, 1, 10, 5), difficult=0):
    coords = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>{coords}</bndbox></object>"


def _voc(tmp_path, xmls, split="train", size_tag=(20, 10), images=None):
    """A VOC set: per id the body of its XML (None: no XML) and a 20x10 png (ids of ``images``)."""
    root = tmp_path / "v"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for vid, body in xmls.items():
        if images is None or vid in images:
            _image(str(root / "JPEGImages" / f"{vid}.png"))
        if body is not None:
            size = f"<size><width>{size_tag[0]}</width><height>{size_tag[1]}</height></size>" if size_tag else ""
            (root / "Annotations" / f"{vid}.xml").write_text(f"<annotation>{size}{body}</annotation>")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{v}\n" for v in xmls))
    return str(root)


def test_voc_boxes_one_based_difficult_kept_and_sorted_names(tmp_path):
    root = _voc(tmp_path, {"b": _obj("dog", (1, 1, 10, 5)) + _obj("cat", (11, 2, 20, 10), difficult=1),
                           "a": _obj("dog", (3, 3, 3, 3)), "c": ""})
    r = voc.load_voc(root, "train", 2)
    assert [os.path.basename(f) for f in r.file_names] == ["b.png", "a.png", "c.png"]  # list order
    np.testing.assert_array_equal(r.image_ids, [1, 2, 3])
    np.testing.assert_allclose(r.boxes, [[0, 0, 10, 5], [10, 1, 20, 10], [2, 2, 3, 3]])
    np.testing.assert_array_equal(r.labels, [1, 0, 1])
    assert r.category_names == {0: "cat", 1: "dog"} and r.stats["difficult"] == 1
    assert r.annotations_file == os.path.join(root, "ImageSets", "Main", "train.txt")


def test_voc_missing_paths(tmp_path):
    with pytest.raises(MissingDataError, match="has no JPEGImages/ folder"):
        voc.load_voc(str(tmp_path), "train", 1)
    root = _voc(tmp_path, {"a": _obj("dog")})
    with pytest.raises(MissingDataError, match=r"ImageSets/Main/test.txt does not exist: it lists the ids of the 'test'"):
        voc.load_voc(root, "test", 1)


def test_voc_malformed_xml_names_file_line_and_column(tmp_path):
    root = _voc(tmp_path, {"a": _obj("dog")})
    xml = os.path.join(root, "Annotations", "a.xml")
    with open(xml, "w") as f:
        f.write("<annotation>\n  <object><name>dog</object>\n</annotation>")
    with pytest.raises(DataError, match=re.escape(f"{xml}:2:22: malformed XML: mismatched tag: line 2, column 21")):
        voc.load_voc(root, "train", 1)


@pytest.mark.parametrize("xmls, names, message", [
    ({"a": "<object><difficult>0</difficult></object>"}, (), r"a.xml: object 0 has no <name>"),
    ({"a": _obj("dog") + _obj("cow")}, ("dog",), r"a.xml: object 'cow' is not one of config.data.voc_classes \['dog'\]"),
], ids=["no-name", "unknown-name"])
def test_voc_bad_objects(tmp_path, xmls, names, message):
    root = _voc(tmp_path, xmls)
    with pytest.raises(DataError, match=message):
        voc.load_voc(root, "train", 2, names=names)


def test_voc_split_list_rows(tmp_path, caplog):
    root = _voc(tmp_path, {"a": _obj("dog"), "b": None})
    lst = os.path.join(root, "ImageSets", "Main", "train.txt")
    with open(lst, "w") as f:
        f.write("a\n\nb\na\n")
    with caplog.at_level(logging.WARNING):
        r = voc.load_voc(root, "train", 1)
    assert len(r) == 2 and r.stats["duplicate_images"] == 1 and r.stats["no_annotation_file"] == 1
    np.testing.assert_array_equal(r.box_offsets, [0, 1, 1])  # b: no XML, a background image
    assert "1 listed id(s) have no XML" in caplog.text
    with open(lst, "w") as f:
        f.write("a\nb 1\n")
    with pytest.raises(DataError, match=re.escape(f"{lst}:2: 'b 1' is not one image id")):
        voc.load_voc(root, "train", 1)


def test_voc_malformed_bndbox_dropped_and_counted(tmp_path):
    root = _voc(tmp_path, {"a": _obj("dog", ("x", 1, 5, 5)) + "<object><name>dog</name></object>" + _obj("dog")})
    r = voc.load_voc(root, "train", 1)
    assert r.stats["nonfinite"] == 2 and len(r.boxes) == 1


def test_voc_size_tag_checked_against_the_image(tmp_path):
    root = _voc(tmp_path, {"a": _obj("dog"), "b": _obj("dog")}, size_tag=(10, 20))
    with pytest.raises(DataError, match=r"a.xml: <size> is 10x20 but the image .*a.png is 20x10 \(2 file\(s\)"):
        voc.load_voc(root, "train", 1)
    for tag in (None, (0, 0)):  # no <size>, or 0 x 0: the image's size
        root = _voc(tmp_path / str(tag), {"a": _obj("dog", (1, 1, 30, 30))}, size_tag=tag)
        r = voc.load_voc(root, "train", 1)
        assert (r.widths[0], r.heights[0]) == (20, 10)
        np.testing.assert_allclose(r.boxes, [[0, 0, 20, 10]])  # clipped to the image


def test_voc_missing_and_unreadable_images(tmp_path, caplog):
    root = _voc(tmp_path, {"a": _obj("dog"), "b": _obj("dog")}, images={"a"})
    with caplog.at_level(logging.WARNING):
        r = voc.load_voc(root, "train", 1)
    assert len(r) == 1 and r.stats["missing_files"] == 1 and "b.jpg" in caplog.text
    with pytest.raises(MissingDataError, match=r"1 image file\(s\) missing under .*JPEGImages"):
        voc.load_voc(root, "train", 1, missing="error")
    root = _voc(tmp_path / "u", {"a": _obj("dog"), "b": _obj("dog")}, size_tag=None)
    (tmp_path / "u" / "v" / "JPEGImages" / "b.png").write_bytes(b"broken")
    assert len(voc.load_voc(root, "train", 1)) == 1
    with pytest.raises(DataError, match=r"1 image file\(s\) missing or unreadable.*b.png"):
        voc.load_voc(root, "train", 1, missing="error")


# ----------------------------------------------------------------------------- config, detection

def _block(helper="coco_data", **fields):
    """A data block of ``configs/defaults.py``'s ``helper`` (batch 2, 64 px); ``fields`` set data
    fields (``root`` is the helper's argument for yolo_data / voc_data)."""
    defaults = configs.module("defaults")
    c = defaults.run("test", "deim", epochs=3, batch_size=2, num_classes=4, eval_size=64)
    kw = dict(eval_batch_size=2, base_size_repeat=None, policy_epochs=(1, 2, 3), mixup_epochs=(1, 2), stop_epoch=3)
    args = (fields.pop("root"),) if helper != "coco_data" else ()
    c.data = getattr(defaults, helper)(c, *args, **kw)
    c.remap_mscoco_category = False
    c.data.num_parallel_calls = 1
    for k, v in fields.items():
        c.data[k] = v
    return c.data


def test_format_auto_detection_logs_once(sets, tmp_path, caplog):
    formats._LOGGED.clear()
    with caplog.at_level(logging.INFO, logger="deim_jax.data.formats"):
        assert formats.detect(_block(root=sets["yolo"])) == "yolo"  # a recipe's COCO fields + root
        assert formats.detect(_block(root=sets["yolo"])) == "yolo"
    assert caplog.text.count("data format: yolo (config.data.format='auto': found ") == 1
    assert formats.detect(_block(root=os.path.join(sets["yolo"], "data.yaml"))) == "yolo"
    os.makedirs(tmp_path / "labels_only" / "labels")
    assert formats.detect(_block(root=str(tmp_path / "labels_only"))) == "yolo"
    assert formats.detect(_block(root=sets["voc"])) == "voc"
    assert formats.detect(_block()) == "coco"  # train.annotations: instances_train2017.json
    assert formats.detect(_block(root=sets["coco"])) == "coco"  # a COCO folder is no YOLO/VOC set
    tf = _block(tfds_name="coco/2017")
    tf.train.images = tf.train.annotations = ""
    assert formats.detect(tf) == "tfds"
    assert formats.detect(_block(root=sets["yolo"], format="voc")) == "voc"  # named, not detected
    with pytest.raises(ConfigError, match="config.data.format = 'yaml': expected one of auto, coco, yolo, voc, tfds"):
        formats.detect(_block(format="yaml"))


def test_load_split_and_prepare_per_format(sets, tmp_path):
    y = _block("yolo_data", root=sets["yolo"])
    assert len(data.load_split(y, "train")) == 5 and len(data.load_split(y, "val")) == 3
    v = _block("voc_data", root=sets["voc"], voc_classes=DEMO_NAMES)
    np.testing.assert_array_equal(data.load_split(v, "val").labels, _coco(sets["coco"], "val").labels)
    prepare.check_or_generate(y)
    prepare.check_or_generate(v)
    v.val.split = "test"
    with pytest.raises(MissingDataError, match="ImageSets/Main/test.txt does not exist"):
        prepare.check_or_generate(v)
    with pytest.raises(MissingDataError, match="has no data.yaml or classes.txt"):
        prepare.check_or_generate(_block("yolo_data", root=str(tmp_path)))
    with pytest.raises(ConfigError, match="reads the set in config.data.root, which is empty"):
        data.load_split(_block(format="voc"), "train")
    remap = _block("yolo_data", root=sets["yolo"])
    remap.remap_mscoco_category = True
    with pytest.raises(ConfigError, match="remap_mscoco_category=True maps COCO's category ids.*yolo set"):
        prepare.check_or_generate(remap)


def test_generate_demo_in_the_block_format(tmp_path):
    d = _block("voc_data", root=str(tmp_path / "demo_voc"), generate_demo=True)
    prepare.check_or_generate(d, splits=("val",))
    assert len(os.listdir(tmp_path / "demo_voc" / "JPEGImages")) == 256 + 64
    assert len(voc.load_voc(d.root, "val", 4)) == 64


def test_strict_files_makes_an_unreadable_yolo_image_a_start_up_error(tmp_path):
    root = _yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": None})
    (tmp_path / "y" / "images" / "train" / "b.png").write_bytes(b"broken")
    assert len(data.load_split(_block("yolo_data", root=root), "train")) == 1
    with pytest.raises(DataError, match=r"1 image file\(s\) missing or unreadable.*b.png"):
        data.load_split(_block("yolo_data", root=root, strict_files=True), "train")


def test_demo_command_line_writes_each_format(tmp_path):
    demo.main(["--out", str(tmp_path / "y"), "--format", "yolo", "--num_train", "2", "--num_val", "1"])
    assert len(yolo.load_yolo(str(tmp_path / "y"), "val", 4)) == 1
    assert sorted(os.listdir(tmp_path / "y")) == ["data.yaml", "images", "labels"]


@pytest.mark.parametrize("fmt", ["yolo", "voc"])
def test_yolo_and_voc_sets_build_a_train_iterator(sets, fmt):
    d = _block(f"{fmt}_data", root=sets[fmt], max_boxes=8)
    b = next(data.build_train_iterator(d, seed=0, state=dict(epoch=0, pos=0, step_in_epoch=0)))
    assert b["image"].shape == (2, 64, 64, 3) and b["boxes"].shape == (2, 8, 4)
    assert b["mask"].sum() > 0 and np.all(b["labels"][b["mask"]] < 4)


def test_voc_classes_from_the_command_line():
    from deim_jax.data.voc import class_list

    assert class_list(("cat,dog",)) == ("cat", "dog") == class_list("cat, dog") == class_list(("cat", "dog"))
    assert class_list(()) == ()
