"""Throughput of the Dense O2O input pipeline at 640 on one CPU core vs plain decode+resize.

``python benchmarks/input_pipeline.py [--batches 12] [--batch 8]``

Writes a COCO-format set of COCO-sized JPEGs (640x480, demo shapes upscaled) to a temp
folder, limits TensorFlow to one thread (intra- and inter-op = 1, num_parallel_calls = 1),
and measures images/s for: (a) decode + resize to 640x640 (eval path), (b) the full training
pipeline in the mosaic phase (e0 <= epoch < e1: 50% mosaic of 4 images, photometric,
zoom-out, IoU crop, flip, resize, MixUp), (c) the phase e1 <= epoch < e2 (no mosaic),
(d) the no-aug phase. Prints a markdown table.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_set(root, num):
    from deim_jax.data import demo
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    images, anns = [], []
    for i in range(num):
        im, a = demo.make_image(rng)
        sx, sy = 640 / im.width, 480 / im.height
        im.resize((640, 480), Image.BILINEAR).save(os.path.join(root, "img", f"{i}.jpg"), quality=90)
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 640, "height": 480})
        for c, (x, y, w, h) in a:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c, "iscrowd": 0,
                         "bbox": [x * sx, y * sy, w * sx, h * sy], "area": w * h * sx * sy})
    p = os.path.join(root, "ann.json")
    json.dump({"images": images, "annotations": anns, "categories": demo.CATEGORIES}, open(p, "w"))
    return os.path.join(root, "img"), p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=0, help="images (default: enough for one epoch)")
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    import tensorflow as tf
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    from deim_jax import configs
    from deim_jax import data
    from deim_jax.data import transforms as T

    a.num = a.num or (a.batches + 2) * a.batch     # the timed batches stay within one epoch
    root = tempfile.mkdtemp()
    imgs, ann = make_set(root, a.num)
    defaults = configs.module("defaults")
    c = defaults.run("bench", "deim", epochs=1, batch_size=a.batch, num_classes=4)
    t = defaults.DFINE_DATA["l"]
    c.data = defaults.coco_data(c, eval_batch_size=a.batch, base_size_repeat=None, policy_epochs=t["policy_epochs"],
                                mixup_epochs=t["mixup_epochs"], stop_epoch=t["stop_epoch"])
    c.data.train.images, c.data.train.annotations = imgs, ann
    c.data.remap_mscoco_category = False
    c.data.batch_size = a.batch
    c.data.num_parallel_calls = 1
    c.data.prefetch = 1
    c.data.base_size_repeat = None
    rec = data.load_split(c.data, "train")
    rows = []

    paths = tf.constant([str(p) for p in rec.file_names])

    def plain(i):
        img = T.decode_image(tf.io.read_file(paths[i]))
        return T.resize(img, tf.zeros([0, 4]), 640, 640)[0] / 255.0

    ds = tf.data.Dataset.range(len(rec)).repeat().map(plain, num_parallel_calls=1).batch(a.batch).prefetch(1)
    it = iter(ds)
    next(it)
    t = time.perf_counter()
    for _ in range(a.batches):
        next(it)
    rows.append(("decode + resize 640 (eval path)", a.batches * a.batch / (time.perf_counter() - t)))

    for name, epoch in [("train, mosaic phase (epoch in [e0, e1))", 10),
                        ("train, no-mosaic phase (epoch in [e1, e2))", 35),
                        ("train, no-aug phase (epoch < e0 or >= e2)", 0)]:
        it = data.build_train_iterator(c.data, seed=0, state=dict(epoch=epoch, pos=0, step_in_epoch=0), records=rec)
        next(it)
        t = time.perf_counter()
        for _ in range(a.batches):
            next(it)
        rows.append((name, a.batches * a.batch / (time.perf_counter() - t)))
    print("| pipeline (1 CPU thread, 640x480 JPEG -> 640x640) | images/s |")
    print("|---|---|")
    for n, v in rows:
        print(f"| {n} | {v:.1f} |")


if __name__ == "__main__":
    main()
