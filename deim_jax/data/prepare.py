"""Check that a config's data exist before training (or generate the demo set).

``check_or_generate(config.data)``: with ``config.data.generate_demo`` True and the demo files
missing, writes the demo set into ``config.data.root`` in the block's format (COCO, YOLO or
VOC; ``deim_jax.data.demo``, a few seconds); otherwise raises ``MissingDataError`` (a
``FileNotFoundError``) with a message saying which path is missing and how to provide it. The
paths checked are those of the format ``formats.detect`` gives: COCO: each split's
``images`` folder and ``annotations`` json; YOLO: ``root``'s data.yaml or classes.txt and the
splits' image folders; VOC: ``root``'s JPEGImages/, Annotations/ and split lists. TFDS configs
(``tfds_name`` set and no folders) are checked when the split is loaded (clear error if the
builder is not prepared; never downloads).
"""

from __future__ import annotations

import logging
import os

from deim_jax.data import formats, voc, yolo
from deim_jax.errors import MissingDataError

log = logging.getLogger(__name__)


def _demo_missing(d, fmt: str, splits, root: str) -> bool:
    if fmt == "yolo":
        return yolo.names_file(root) is None
    if fmt == "voc":
        return not all(os.path.isfile(voc.split_list(root, d[s].split)) for s in splits)
    return not all(os.path.isfile(d[s].annotations) for s in splits)


def check_or_generate(d, splits=("train", "val")) -> None:
    """Raise MissingDataError naming the missing path of the data block ``d`` (or write the demo set)."""
    fmt = formats.detect(d)
    if fmt == "tfds":
        return
    if fmt in ("yolo", "voc"):
        formats.set_root(d, fmt)
    if d.generate_demo:
        root = d.root or os.path.dirname(os.path.abspath(d.train.images))
        if _demo_missing(d, fmt, splits, root):
            from deim_jax.data import demo
            log.info("generating the demo data set (%s) into %s", fmt, root)
            demo.generate(root, format=fmt)
    for s in splits:
        if fmt == "yolo":
            yolo.read_spec(d.root, d[s].split)
        elif fmt == "voc":
            voc.locate(d.root, d[s].split)
        else:
            _check_coco(d, s)


def _check_coco(d, s: str) -> None:
    images, ann = d[s].images, d[s].annotations
    if not images and not ann and d.tfds_name:
        return
    if not ann or not os.path.isfile(ann):
        raise MissingDataError(
            f"config.data.{s}.annotations = {ann!r} does not exist: point it at a COCO-format "
            "instances json (COCO 2017: annotations/instances_{train,val}2017.json), or set "
            "config.data.root to a YOLO or VOC set, or set config.data.tfds_name/data_dir, or "
            "generate the demo set with `python -m deim_jax.data.demo --out DIR`")
    if not images or not os.path.isdir(images):
        raise MissingDataError(f"config.data.{s}.images = {images!r} is not a folder of images")
