"""Deterministic generator of a small demo data set (no download needed), in COCO, YOLO or VOC layout.

``python -m deim_jax.data.demo --out DIR [--format coco|yolo|voc] [--num_train 256] [--num_val 64]
[--seed 0]`` writes the same images and boxes in the layout of each format::

    coco  DIR/train/000000000001.jpg ...   DIR/annotations/instances_train.json
          DIR/val/000000100001.jpg ...     DIR/annotations/instances_val.json
    yolo  DIR/images/{train,val}/*.jpg     DIR/labels/{train,val}/*.txt   DIR/data.yaml
    voc   DIR/JPEGImages/*.jpg             DIR/Annotations/*.xml          DIR/ImageSets/Main/{train,val}.txt

Images are 64..256 px (random width and height) with a textured background (noise,
stripes or a gradient) and 1..6 filled shapes of 4 classes: ``square`` (id 1),
``circle`` (id 2), ``triangle`` (id 3), ``cross`` (id 5; the gap makes the
contiguous mapping matter). Each class has its own hue (jittered), so that a small
model trained from scratch on a CPU learns it within minutes. Boxes are the tight pixel extent of each visible shape
(shapes do not overlap), so a transformed box can be checked against the pixels.
YOLO class indices are the contiguous labels of the COCO json (square 0, circle 1, triangle 2,
cross 3); VOC boxes are 1-based inclusive (``xmin = x + 1``, ``xmax = x + w``).
Same seed -> byte-identical files. A few hundred images take a few seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import yaml
from PIL import Image, ImageDraw

# Base colour per category (RGB); each shape is jittered around it.
_CLASS_COLORS = {1: (220, 50, 50), 2: (50, 200, 60), 3: (60, 90, 230), 5: (235, 210, 40)}

CATEGORIES = [
    {"id": 1, "name": "square", "supercategory": "shape"},
    {"id": 2, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 5, "name": "cross", "supercategory": "shape"},
]


def _background(rng, w, h):
    kind = rng.integers(3)
    base = rng.integers(40, 200, size=3)
    if kind == 0:
        img = base + rng.normal(0, 18, size=(h, w, 3))
    elif kind == 1:
        period = rng.integers(6, 24)
        xx = np.arange(w)[None, :, None] + np.arange(h)[:, None, None] * rng.choice([-1, 0, 1])
        img = base + 30 * np.sign(np.sin(2 * np.pi * xx / period)) + np.zeros((h, w, 3))
    else:
        g = np.linspace(0, 1, w)[None, :, None] * rng.integers(-80, 80, size=3)
        img = base + g + np.zeros((h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def draw_shape(draw, cat, x0, y0, s, color):
    """Fill shape ``cat`` (a demo category id) into the ``s``-px square at (x0, y0)."""
    if cat == 1:
        draw.rectangle([x0, y0, x0 + s - 1, y0 + s - 1], fill=color)
    elif cat == 2:
        draw.ellipse([x0, y0, x0 + s - 1, y0 + s - 1], fill=color)
    elif cat == 3:
        draw.polygon([(x0, y0 + s - 1), (x0 + s - 1, y0 + s - 1), (x0 + (s - 1) / 2, y0)], fill=color)
    else:
        t = max(2, s // 4)
        c = s // 2
        draw.rectangle([x0, y0 + c - t // 2, x0 + s - 1, y0 + c - t // 2 + t - 1], fill=color)
        draw.rectangle([x0 + c - t // 2, y0, x0 + c - t // 2 + t - 1, y0 + s - 1], fill=color)


def make_image(rng):
    """One image (PIL RGB) and its annotations [(category_id, [x, y, w, h])]."""
    w, h = int(rng.integers(64, 257)), int(rng.integers(64, 257))
    img = _background(rng, w, h)
    mask = np.zeros((h, w), bool)
    draw = ImageDraw.Draw(img)
    anns = []
    for _ in range(int(rng.integers(1, 7))):
        for _try in range(10):
            s = int(rng.integers(12, max(13, (min(w, h) * 3) // 5)))
            x0, y0 = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            if not mask[max(0, y0 - 2):y0 + s + 2, max(0, x0 - 2):x0 + s + 2].any():
                break
        else:
            continue
        cat = int(rng.choice([c["id"] for c in CATEGORIES]))
        color = tuple(int(np.clip(c + v, 0, 255)) for c, v in zip(_CLASS_COLORS[cat], rng.integers(-35, 36, size=3)))
        layer = Image.new("L", (w, h), 0)
        draw_shape(ImageDraw.Draw(layer), cat, x0, y0, s, 255)
        m = np.asarray(layer) > 0
        ys, xs = np.nonzero(m)
        if len(xs) == 0:
            continue
        draw_shape(draw, cat, x0, y0, s, color)
        mask |= m
        bx, by = int(xs.min()), int(ys.min())
        anns.append((cat, [bx, by, int(xs.max()) + 1 - bx, int(ys.max()) + 1 - by]))
    return img, anns


def _samples(split, num, seed, first_id):
    """(image id, PIL image, [(category_id, [x, y, w, h])]) of each image of the split."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    for k in range(num):
        yield (first_id + k, *make_image(rng))


def _stem(iid):
    return f"{iid:012d}"


def write_coco(out, split, samples):
    """Write ``samples`` ((image id, PIL image, [(category_id, xywh)])) as COCO images + json; returns the json."""
    os.makedirs(os.path.join(out, split), exist_ok=True)
    images, annotations = [], []
    for iid, img, anns in samples:
        img.save(os.path.join(out, split, _stem(iid) + ".jpg"), quality=92)
        images.append({"id": iid, "file_name": _stem(iid) + ".jpg", "width": img.width, "height": img.height})
        for cat, bb in anns:
            annotations.append({"id": len(annotations) + 1 + images[0]["id"] * 10, "image_id": iid,
                                "category_id": cat, "bbox": bb, "area": float(bb[2] * bb[3]),
                                "iscrowd": 0})
    os.makedirs(os.path.join(out, "annotations"), exist_ok=True)
    path = os.path.join(out, "annotations", f"instances_{split}.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    return path


def _write_yolo(out, split, samples):
    index = {c["id"]: i for i, c in enumerate(CATEGORIES)}
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(out, sub, split), exist_ok=True)
    for iid, img, anns in samples:
        img.save(os.path.join(out, "images", split, _stem(iid) + ".jpg"), quality=92)
        W, H = img.size
        lines = [f"{index[cat]} {(x + w / 2) / W:.6f} {(y + h / 2) / H:.6f} {w / W:.6f} {h / H:.6f}\n"
                 for cat, (x, y, w, h) in anns]
        with open(os.path.join(out, "labels", split, _stem(iid) + ".txt"), "w") as f:
            f.writelines(lines)
    path = os.path.join(out, "data.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"train": "images/train", "val": "images/val", "nc": len(CATEGORIES),
                        "names": [c["name"] for c in CATEGORIES]}, f, sort_keys=False)
    return path


def _voc_xml(iid, img, anns):
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = _stem(iid) + ".jpg"
    size = ET.SubElement(root, "size")
    for tag, v in (("width", img.width), ("height", img.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(v)
    names = {c["id"]: c["name"] for c in CATEGORIES}
    for cat, (x, y, w, h) in anns:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = names[cat]
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for tag, v in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
            ET.SubElement(box, tag).text = str(v)
    ET.indent(root)
    return ET.tostring(root) + b"\n"


def _write_voc(out, split, samples):
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    ids = []
    for iid, img, anns in samples:
        ids.append(_stem(iid))
        img.save(os.path.join(out, "JPEGImages", ids[-1] + ".jpg"), quality=92)
        with open(os.path.join(out, "Annotations", ids[-1] + ".xml"), "wb") as f:
            f.write(_voc_xml(iid, img, anns))
    path = os.path.join(out, "ImageSets", "Main", f"{split}.txt")
    with open(path, "w") as f:
        f.writelines(i + "\n" for i in ids)
    return path


_WRITERS = {"coco": write_coco, "yolo": _write_yolo, "voc": _write_voc}


def write_split(out, split, num, seed, first_id, format="coco"):
    """Write one split in ``format``; returns its annotation file (json, data.yaml or split list)."""
    return _WRITERS[format](out, split, _samples(split, num, seed, first_id))


def _images_dir(out, split, format):
    return {"coco": os.path.join(out, split), "yolo": os.path.join(out, "images", split),
            "voc": os.path.join(out, "JPEGImages")}[format]


def generate(out: str, num_train: int = 256, num_val: int = 64, seed: int = 0, format: str = "coco") -> dict:
    """Write the demo set under ``out`` in ``format``; returns its paths."""
    tr = write_split(out, "train", num_train, seed, 1, format)
    va = write_split(out, "val", num_val, seed, 100001, format)
    return {"root": out, "train_images": _images_dir(out, "train", format), "train_annotations": tr,
            "val_images": _images_dir(out, "val", format), "val_annotations": va}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=sorted(_WRITERS), default="coco")
    p.add_argument("--num-train", "--num_train", type=int, default=256)
    p.add_argument("--num-val", "--num_val", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    paths = generate(a.out, a.num_train, a.num_val, a.seed, a.format)
    print(json.dumps(paths, indent=1))


if __name__ == "__main__":
    main()
