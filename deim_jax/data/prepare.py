"""Check that a config's data exist before training (or generate the demo set).

``check_or_generate(config.data)``: with ``config.data.generate_demo`` True and the demo files
missing, writes the demo set into ``config.data.root`` (``deim_jax.data.demo``, a few
seconds); otherwise raises ``MissingDataError`` (a ``FileNotFoundError``) with a message saying which path is missing
and how to provide it. TFDS configs (``tfds_name`` set and no folders) are checked when the
split is loaded (clear error if the builder is not prepared; never downloads).
"""

from __future__ import annotations

import logging
import os

from deim_jax.errors import MissingDataError

log = logging.getLogger(__name__)


def check_or_generate(d, splits=("train", "val")) -> None:
    """Raise MissingDataError naming the missing path of the data block ``d`` (or write the demo set)."""
    if d.generate_demo:
        root = d.root or os.path.dirname(os.path.abspath(d.train.images))
        need = [d[s].annotations for s in splits]
        if not all(os.path.isfile(p) for p in need):
            from deim_jax.data import demo
            log.info("generating the demo data set into %s", root)
            demo.generate(root)
    for s in splits:
        sp = d[s]
        images, ann = sp.images, sp.annotations
        if not images and not ann and d.tfds_name:
            continue
        if not ann or not os.path.isfile(ann):
            raise MissingDataError(
                f"config.data.{s}.annotations = {ann!r} does not exist: point it at a COCO-format "
                "instances json (COCO 2017: annotations/instances_{train,val}2017.json), or set "
                "config.data.tfds_name/data_dir, or generate the demo set with "
                "`python -m deim_jax.data.demo --out DIR`")
        if not images or not os.path.isdir(images):
            raise MissingDataError(f"config.data.{s}.images = {images!r} is not a folder of images")
