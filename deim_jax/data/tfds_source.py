"""TFDS detection builders (``coco/2017`` or any builder with the same features) as a source.

A prepared TFDS builder is exported once to the common COCO-folder format (the encoded
image bytes are written unchanged, no re-encoding; an ``instances_<split>.json`` next to
them), then read by the same pipeline as any COCO-format folder, so Mosaic keeps random
access and every transform, check and resume rule is shared. The export lives in
``config.data.tfds_export_dir`` (default ``<data_dir>/deim_export/<name>``) and is reused.

Features used: ``image`` (encoded), ``image/id``, ``objects/bbox`` (normalized
[ymin, xmin, ymax, xmax]), ``objects/label`` (ClassLabel), ``objects/is_crowd`` (optional).
Category ids written: for an 80-class ``coco*`` builder the official COCO ids (so
``remap_mscoco_category=True`` and COCO evaluation work unchanged); otherwise label + 1
(use ``remap_mscoco_category=False``).

Never downloads: with no prepared data it fails at once with a message saying what to run.
"""

from __future__ import annotations

import json
import os

import numpy as np

from deim_jax.data import coco as coco_lib
from deim_jax.errors import MissingDataError


def _builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds
    b = tfds.builder(name, data_dir=data_dir)
    prepared = b.is_prepared() if hasattr(b, "is_prepared") else os.path.isdir(b.data_dir)
    if not prepared:
        raise MissingDataError(
            f"TFDS data set {name!r} is not prepared under data_dir={data_dir!r} (looked in "
            f"{b.data_dir}). Prepare it once with `tfds build {name.split('/')[0]} "
            f"--data_dir={data_dir}` (or tfds.builder(...).download_and_prepare()); this pipeline "
            "never starts a download itself.")
    return b


def export_examples(ds, out_dir: str, split: str, class_names, coco_ids: bool):
    """Write a tf.data.Dataset of TFDS-style examples (encoded ``image``) as a COCO folder.

    Returns (images_dir, annotations_file)."""
    import tensorflow as tf
    img_dir = os.path.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    images, anns = [], []
    for k, ex in enumerate(ds.as_numpy_iterator()):
        data = ex["image"]
        iid = int(ex.get("image/id", k + 1))
        if iid <= 0:
            iid = k + 1
        shape = tf.io.extract_jpeg_shape(data).numpy() if data[:2] == b"\xff\xd8" else \
            tf.shape(tf.io.decode_image(data, channels=3, expand_animations=False)).numpy()
        h, w = int(shape[0]), int(shape[1])
        ext = "jpg" if data[:2] == b"\xff\xd8" else "png"
        name = f"{iid:012d}.{ext}"
        with open(os.path.join(img_dir, name), "wb") as f:
            f.write(data)
        images.append({"id": iid, "file_name": name, "width": w, "height": h})
        obj = ex["objects"]
        crowd = obj.get("is_crowd", np.zeros(len(obj["label"]), bool))
        for bb, lab, cr in zip(obj["bbox"], obj["label"], crowd):
            y1, x1, y2, x2 = (float(v) for v in bb)
            cat = coco_lib.MSCOCO_CATEGORY_IDS[int(lab)] if coco_ids else int(lab) + 1
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": cat, "iscrowd": int(cr),
                         "bbox": [x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h],
                         "area": (x2 - x1) * w * (y2 - y1) * h})
    cats = [{"id": coco_lib.MSCOCO_CATEGORY_IDS[i] if coco_ids else i + 1, "name": n}
            for i, n in enumerate(class_names)]
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    ann = os.path.join(out_dir, "annotations", f"instances_{split}.json")
    with open(ann + ".tmp", "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    os.replace(ann + ".tmp", ann)     # the json appears only when the export is complete
    return img_dir, ann


def coco_folder_from_tfds(name: str, data_dir: str, split: str, export_dir: str = ""):
    """(images_dir, annotations_file) of the exported split, exporting on first use."""
    export_dir = export_dir or os.path.join(data_dir, "deim_export", name.replace("/", "_"))
    ann = os.path.join(export_dir, "annotations", f"instances_{split}.json")
    if os.path.isfile(ann):
        return os.path.join(export_dir, split), ann
    import tensorflow_datasets as tfds
    b = _builder(name, data_dir)
    names = b.info.features["objects"]["label"].names
    coco_ids = name.startswith("coco") and len(names) == 80
    ds = b.as_dataset(split=split, shuffle_files=False,
                      decoders={"image": tfds.decode.SkipDecoding()})
    return export_examples(ds, export_dir, split, names, coco_ids)
