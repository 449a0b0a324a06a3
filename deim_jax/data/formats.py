"""Which reader a data block uses: ``detect(config.data)`` -> 'coco', 'yolo', 'voc' or 'tfds'.

``config.data.format`` names it; with 'auto' (the default) it is detected, first match wins:

================================================================  ======
the config names                                                   format
================================================================  ======
``root``: a .yaml file, or a folder with data.yaml, classes.txt    yolo
or labels/
``root``: a folder with Annotations/ and JPEGImages/               voc
``tfds_name``, and ``train.images`` or ``train.annotations`` empty  tfds
anything else (``train.annotations``: a COCO json)                 coco
================================================================  ======

One log line says what was detected and why (once per distinct answer).
"""

from __future__ import annotations

import logging
import os

from deim_jax.data import voc, yolo
from deim_jax.errors import ConfigError

log = logging.getLogger(__name__)

FORMATS = ("auto", "coco", "yolo", "voc", "tfds")
_LOGGED = set()


def _detect(d):
    """(format, why) of a data block with ``format='auto'``."""
    root = d.root
    if root:
        labels = os.path.join(root, "labels")
        marker = yolo.names_file(root) or (labels + os.sep if os.path.isdir(labels) else None)
        if marker:
            return "yolo", f"found {marker}"
        if voc.is_voc(root):
            return "voc", f"found Annotations/ and JPEGImages/ in {root}"
    if d.tfds_name and not (d.train.images and d.train.annotations):
        return "tfds", f"tfds_name={d.tfds_name!r} and no train folder"
    return "coco", f"train.annotations = {d.train.annotations!r}"


def detect(d) -> str:
    """The format of the data block ``d`` (``ConfigError`` for an unknown ``d.format``)."""
    if d.format not in FORMATS:
        raise ConfigError(f"config.data.format = {d.format!r}: expected one of {', '.join(FORMATS)}")
    if d.format != "auto":
        return d.format
    fmt, why = _detect(d)
    if (fmt, why) not in _LOGGED:
        _LOGGED.add((fmt, why))
        log.info("data format: %s (config.data.format='auto': %s)", fmt, why)
    return fmt


def set_root(d, fmt: str) -> str:
    """``d.root`` of a YOLO or VOC block; ``ConfigError`` if it is empty or the block asks for
    COCO's category remapping (these sets have their own classes)."""
    if not d.root:
        raise ConfigError(f"config.data.format={fmt!r} reads the set in config.data.root, which is empty")
    if d.remap_mscoco_category:
        raise ConfigError(f"config.remap_mscoco_category=True maps COCO's category ids, but config.data.root = "
                          f"{d.root!r} is a {fmt} set with its own classes: set it False")
    return d.root
