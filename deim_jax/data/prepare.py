"""Check before training that the configured data exists (or generate the demo set).

A missing COCO folder is reported at start-up with the paths to fix, instead of
failing minutes later inside the input pipeline.
"""

from __future__ import annotations

import os


def check_or_generate(cfg) -> None:
    d = cfg.data
    if d.get("tfds_name"):
        return  # the TFDS source checks its prepared data itself (never downloads)
    if d.get("generate_demo", False) and not os.path.isfile(d.train.annotations):
        from deim_jax.data import demo

        root = os.path.dirname(os.path.dirname(d.train.annotations))
        print(f"generating the demo data set in {root} ...", flush=True)
        demo.generate(root)
    missing = [f"{name} = {path!r}" for name, path in (
        ("config.data.train.images", d.train.images), ("config.data.train.annotations", d.train.annotations),
        ("config.data.val.images", d.val.images), ("config.data.val.annotations", d.val.annotations))
        if not os.path.exists(path)]
    if missing:
        raise FileNotFoundError(
            "the training data is not there:\n  " + "\n  ".join(missing)
            + "\nPoint these fields at a COCO-format data set (image folder + instances json), e.g. "
              "--config.data.train.images=/data/coco/train2017, or use --config.data.tfds_name=coco/2017 "
              "--config.data.data_dir=DIR for a prepared TFDS copy.")
