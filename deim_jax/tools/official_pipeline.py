"""Images/s of the official DEIM training DataLoader (standalone: run it in a Python with torch and
the official tree's requirements; it imports neither jax nor deim_jax).

    python official_pipeline.py --official=DIR --yaml=deim_dfine/deim_hgnetv2_l_coco.yml \
        --images=IMG_DIR --annotations=ANN.json --epoch=10 --batch=8 --batches=8 --workers=0 --out=R.json

Builds ``train_dataloader`` of the official YAML (its transforms, Mosaic policy and
``BatchImageCollateFunction`` with MixUp and multi-scale) on the given COCO-format set, sets the
epoch, and times ``--batches`` batches after one warm-up batch. ``--workers=0`` loads in the main
process with one torch thread (one core); ``--workers=k`` uses k worker processes. Writes
``{"images_per_s": ..., "batches": ..., "batch": ..., "workers": ...}`` to ``--out``."""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import official_common  # noqa: E402  (beside this file)


def main():
    p = argparse.ArgumentParser()
    for name in ("official", "yaml", "images", "annotations", "out"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--epoch", type=int, required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--workers", type=int, default=0)
    a = p.parse_args()

    import torch
    torch.set_num_threads(1)
    official_common.patch_adjust_hue()
    official_common.stub_missing(("calflops",))
    sys.path.insert(0, os.path.abspath(a.official))
    from engine.core import YAMLConfig

    cfg = YAMLConfig(os.path.join(a.official, "configs", a.yaml))
    loader_cfg = cfg.yaml_cfg["train_dataloader"]
    loader_cfg["dataset"].update(img_folder=a.images, ann_file=a.annotations)
    loader_cfg.update(total_batch_size=a.batch, num_workers=a.workers, shuffle=True)
    cfg.yaml_cfg["remap_mscoco_category"] = False
    loader = cfg.train_dataloader
    loader.set_epoch(a.epoch)
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    for _ in range(a.batches):
        next(it)
    rate = a.batches * a.batch / (time.perf_counter() - t)
    with open(a.out, "w") as f:
        json.dump({"images_per_s": rate, "batches": a.batches, "batch": a.batch, "workers": a.workers}, f)


if __name__ == "__main__":
    main()
