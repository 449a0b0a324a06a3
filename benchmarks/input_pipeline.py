"""Throughput of the Dense O2O input pipeline at 640 on one CPU core vs plain decode+resize.

``python benchmarks/input_pipeline.py [--batches 12] [--batch 8]``

Writes a COCO-format set of COCO-sized JPEGs (640x480, demo shapes upscaled) to a temp
folder, limits TensorFlow to one thread (intra- and inter-op = 1, num_parallel_calls = 1),
and measures images/s for: (a) decode + resize to 640x640 (eval path), (b) the full training
pipeline in the mosaic phase (e0 <= epoch < e1: 50% mosaic of 4 images, photometric,
zoom-out, IoU crop, flip, resize, MixUp), (c) the phase e1 <= epoch < e2 (no mosaic),
(d) the no-aug phase. Prints a markdown table.

``--config`` (default ``dfine_l``) and ``--config.data.*`` overrides choose the pipeline settings
(the data paths are replaced by the synthetic set; ``--batch`` sets ``batch_size``).
"""

import json
import os
import tempfile
import time

import bench_common  # first: puts the repository on sys.path (run as python benchmarks/...)
import numpy as np
from absl import flags
from PIL import Image

from deim_jax import cli

_CONFIG = cli.define_config_flag()
_NUM = flags.DEFINE_integer("num", 0, "Images (default: enough for one epoch).")
_BATCHES = flags.DEFINE_integer("batches", 12, "Timed batches per pipeline.")
_BATCH = flags.DEFINE_integer("batch", 8, "Batch size.")


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


def main(argv):
    del argv
    import tensorflow as tf
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    from deim_jax import data
    from deim_jax.data import transforms as T

    c = cli.require_config(_CONFIG)
    batches, batch = _BATCHES.value, _BATCH.value
    num = _NUM.value or (batches + 2) * batch     # the timed batches stay within one epoch
    root = tempfile.mkdtemp()
    imgs, ann = make_set(root, num)
    c.num_classes = 4
    c.data.train.images, c.data.train.annotations = imgs, ann
    c.remap_mscoco_category = False
    c.data.remap_mscoco_category = False
    c.batch_size = batch
    c.data.batch_size = batch
    c.data.num_parallel_calls = 1
    c.data.prefetch = 1
    c.data.base_size_repeat = None
    rec = data.load_split(c.data, "train")
    rows = []

    paths = tf.constant([str(p) for p in rec.file_names])

    def plain(i):
        img = T.decode_image(tf.io.read_file(paths[i]))
        return T.resize(img, tf.zeros([0, 4]), 640, 640)[0] / 255.0

    ds = tf.data.Dataset.range(len(rec)).repeat().map(plain, num_parallel_calls=1).batch(batch).prefetch(1)
    it = iter(ds)
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    rows.append(("decode + resize 640 (eval path)", batches * batch / (time.perf_counter() - t)))

    for name, epoch in [("train, mosaic phase (epoch in [e0, e1))", 10),
                        ("train, no-mosaic phase (epoch in [e1, e2))", 35),
                        ("train, no-aug phase (epoch < e0 or >= e2)", 0)]:
        it = data.build_train_iterator(c.data, seed=0, state=dict(epoch=epoch, pos=0, step_in_epoch=0), records=rec)
        next(it)
        t = time.perf_counter()
        for _ in range(batches):
            next(it)
        rows.append((name, batches * batch / (time.perf_counter() - t)))
    print("| pipeline (1 CPU thread, 640x480 JPEG -> 640x640) | images/s |")
    print("|---|---|")
    for n, v in rows:
        print(f"| {n} | {v:.1f} |")


if __name__ == "__main__":
    cli.run(main, default_config="dfine_l")
