"""Images/s of the Dense O2O input pipeline per phase and core count, side by side with the official
DataLoader on the same JPEGs.

``python benchmarks/input_pipeline.py [--cores=1,2] [--batches=16] [--batch=8] [--rounds=3]
    [--official=DIR --official_python=PY]``

Writes a COCO-format set of COCO-sized JPEGs (640x480, demo shapes upscaled) to a temp folder and,
for each core count c, pins a fresh process to c cores (``sched_setaffinity``) and measures
images/s of: the eval path (decode + resize to 640x640) and the training pipeline of ``--config``
(default ``dfine_l``) in its three phases: Mosaic (e0 <= epoch < e1: 50% Mosaic of 4 images,
photometric, zoom-out, IoU crop, flip, resize, MixUp, multi-scale), no-Mosaic (e1 <= epoch < e2)
and no-aug. deim_jax runs with the trainer's TensorFlow settings (``sources.configure_tf``: one
thread per op; TensorFlow sizes its pools from the pinned cores) and ``num_parallel_calls`` = c; the
official DataLoader (``deim_jax/tools/official_pipeline.py``, same YAML recipe, same files, same
cores) runs in the main process with one torch thread for c = 1 and with c worker processes
otherwise. The two alternate for ``--rounds`` rounds (this machine's speed drifts by tens of
percent within minutes); each row gives the median rates and the median of the rounds' ratios.
Appends the rows to ``--results`` (``benchmarks/results/input_pipeline_cpu.md``).
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import bench_common  # first: puts the repository on sys.path (run as python benchmarks/...)
import numpy as np
from absl import flags
from PIL import Image

from deim_jax import cli
from deim_jax.errors import UserError
from deim_jax.tools import official

_CONFIG = cli.define_config_flag()
_CORES = flags.DEFINE_list("cores", ["1", "2"], "Core counts to measure, each in a fresh pinned process.")
_BATCHES = flags.DEFINE_integer("batches", 16, "Timed batches per pipeline (after one warm-up batch).")
_BATCH = flags.DEFINE_integer("batch", 8, "Batch size.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds of deim_jax then official (medians are reported).")
_OFFICIAL = flags.DEFINE_string("official", None, "Official DEIM source tree: time its DataLoader too.")
_OFFICIAL_PYTHON = flags.DEFINE_string("official_python", sys.executable, "Python with torch, torchvision and the "
                                       "official tree's requirements (experiments/official_ab/setup_official.sh).")
_RESULTS = flags.DEFINE_string("results", os.path.join(bench_common.REPO, "benchmarks", "results",
                                                    "input_pipeline_cpu.md"), "Markdown file the rows are appended to.")
_SET = flags.DEFINE_string("set", None, "(internal) an existing set written by a parent run: images:annotations")
_OUT = flags.DEFINE_string("out", None, "(internal) write this process's rows as JSON here")

PHASES = (("Mosaic phase", 10), ("no-Mosaic phase", 35), ("no-aug phase", 0))  # epochs of the L policy [4, 29, 50]


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
    with open(p, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": demo.CATEGORIES}, f)
    return os.path.join(root, "img"), p


def measure_ours(c, imgs, ann, cores):
    """{row name: images/s} of deim_jax's pipelines in this (pinned) process."""
    import tensorflow as tf
    from deim_jax import data
    from deim_jax.data import sources
    sources.configure_tf()   # as the trainer does, before TensorFlow's runtime starts
    from deim_jax.data import transforms as T

    batches, batch = _BATCHES.value, _BATCH.value
    c.num_classes = 4
    c.data.train.images, c.data.train.annotations = imgs, ann
    c.data.remap_mscoco_category = False
    c.batch_size = c.data.batch_size = batch
    c.data.num_parallel_calls = cores
    c.data.prefetch = 1
    rec = data.load_split(c.data, "train")
    paths = tf.constant([str(p) for p in rec.file_names])

    def timed(it):
        next(it)
        t = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * batch / (time.perf_counter() - t)

    def plain(i):
        img = T.decode_image(tf.io.read_file(paths[i]), tf.uint8)
        return T.resize(tf.cast(img, tf.float32), tf.zeros([0, 4]), 640, 640)[0] / 255.0

    rows = {"eval path (decode, resize 640)": timed(iter(
        tf.data.Dataset.range(len(rec)).repeat().map(plain, num_parallel_calls=cores).batch(batch).prefetch(1)))}
    for name, epoch in PHASES:
        rows[name] = timed(data.build_train_iterator(
            c.data, seed=0, state=dict(epoch=epoch, pos=0, step_in_epoch=0), records=rec))
    return rows


def measure_official(cfg_name, imgs, ann, cores):
    """{phase: images/s} of the official DataLoader, in a subprocess pinned to ``cores`` cores."""
    rows = {}
    for name, epoch in PHASES:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [_OFFICIAL_PYTHON.value, os.path.join(os.path.dirname(official.__file__), "official_pipeline.py"),
                   f"--official={_OFFICIAL.value}", f"--yaml={official.OFFICIAL_YAML[cfg_name]}",
                   f"--images={imgs}", f"--annotations={ann}", f"--epoch={epoch}", f"--batch={_BATCH.value}",
                   f"--batches={_BATCHES.value}", f"--workers={0 if cores == 1 else cores}", f"--out={tmp}/r.json"]
            r = subprocess.run(cmd, capture_output=True, text=True,
                               preexec_fn=lambda: os.sched_setaffinity(0, range(cores)))
            if r.returncode != 0:
                raise UserError(f"--official: official_pipeline.py failed: {r.stderr.strip().splitlines()[-1:]}")
            with open(f"{tmp}/r.json") as f:
                rows[name] = json.load(f)["images_per_s"]
    return rows


def child(c, cores):
    """Measure in this process, pinned to ``cores`` cores; write the rows to ``--out``."""
    os.sched_setaffinity(0, range(cores))
    imgs, ann = _SET.value.split(":")
    rounds = []
    for _ in range(_ROUNDS.value):
        rounds.append({"deim_jax": measure_ours(c, imgs, ann, cores)})
        if _OFFICIAL.value:
            rounds[-1]["official"] = measure_official(c.name, imgs, ann, cores)
    with open(_OUT.value, "w") as f:
        json.dump(rounds, f)


def main(argv):
    del argv
    c = cli.require_config(_CONFIG)
    given = ",".join(_CORES.value)
    if not _CORES.value or not all(x.isdigit() and int(x) > 0 for x in _CORES.value):
        raise UserError(f"--cores={given}: expected positive core counts, e.g. --cores=1,2")
    if _ROUNDS.value < 1:
        raise UserError(f"--rounds={_ROUNDS.value}: expected at least 1")
    cores = [int(x) for x in _CORES.value]
    if _OUT.value:
        return child(c, cores[0])
    if max(cores) > len(os.sched_getaffinity(0)):
        raise UserError(f"--cores={given}: this process may use {len(os.sched_getaffinity(0))} cores")
    if _OFFICIAL.value:
        official.check(_OFFICIAL.value, c.name)
    root = tempfile.mkdtemp()
    # enough images that the timed batches stay within one epoch
    imgs, ann = make_set(root, (_BATCHES.value + 2) * _BATCH.value)
    columns = ["date, machine", "code", "pipeline (640x480 JPEGs -> 640x640)", "cores", "deim_jax img/s"]
    columns += ["official img/s", "deim_jax / official"] if _OFFICIAL.value else []
    passthrough = [a for a in sys.argv[1:] if not a.startswith("--cores")]
    for n in cores:
        out = os.path.join(root, f"rows_{n}.json")
        subprocess.run([sys.executable, __file__, *passthrough, f"--cores={n}", f"--set={imgs}:{ann}", f"--out={out}"],
                       check=True)
        with open(out) as f:
            rounds = json.load(f)
        for name in rounds[0]["deim_jax"]:
            ours = [r["deim_jax"][name] for r in rounds]
            row = [bench_common.host_description(), bench_common.code_version(), name, str(n),
                   f"{np.median(ours):.1f}"]
            if _OFFICIAL.value:
                theirs = [r["official"][name] for r in rounds if name in r["official"]]
                ratios = [a / b for a, b in zip(ours, theirs)]
                row += [f"{np.median(theirs):.1f}", f"{np.median(ratios):.2f}x"] if theirs else ["", ""]
            bench_common.append_row(_RESULTS.value, f"Input pipeline, config {c.name}, batch {_BATCH.value}, "
                                    f"{_BATCHES.value} timed batches, {_ROUNDS.value} alternating rounds "
                                    "(medians), same JPEGs and cores for both", columns, row)


if __name__ == "__main__":
    cli.run(main, default_config="dfine_l")
