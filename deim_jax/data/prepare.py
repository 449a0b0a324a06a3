"""Check that a config's data exist before training (or generate the demo set).

``check_or_generate(config)``: with ``config.data.generate_demo`` True and the demo files
missing, writes the demo set into ``config.data.root`` (``deim_jax.data.demo``, a few
seconds); otherwise raises ``FileNotFoundError`` with a message saying which path is missing
and how to provide it. TFDS configs (``tfds_name`` set and no folders) are checked when the
split is loaded (clear error if the builder is not prepared; never downloads).
"""

from __future__ import annotations

import os


def _get(cfg, name, default=None):
    try:
        v = cfg[name]
    except (KeyError, AttributeError):
        return default
    return default if v is None else v


def check_or_generate(config, splits=("train", "val")) -> None:
    d = config.data
    if _get(d, "generate_demo", False):
        root = _get(d, "root", "") or os.path.dirname(os.path.abspath(d.train.images))
        need = [d[s].annotations for s in splits]
        if not all(os.path.isfile(p) for p in need):
            from deim_jax.data import demo
            print(f"generating the demo data set into {root}")
            demo.generate(root)
    for s in splits:
        sp = d[s]
        images, ann = _get(sp, "images", ""), _get(sp, "annotations", "")
        if not images and not ann and _get(d, "tfds_name"):
            continue
        if not ann or not os.path.isfile(ann):
            raise FileNotFoundError(
                f"config.data.{s}.annotations = {ann!r} does not exist: point it at a COCO-format "
                "instances json (COCO 2017: annotations/instances_{train,val}2017.json), or set "
                "config.data.tfds_name/data_dir, or generate the demo set with "
                "`python -m deim_jax.data.demo --out DIR`")
        if not images or not os.path.isdir(images):
            raise FileNotFoundError(f"config.data.{s}.images = {images!r} is not a folder of images")
