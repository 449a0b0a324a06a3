"""Detections on images, folders, glob patterns and videos, drawn and written as COCO results.

    python -m deim_jax.predict --config=NAME (--workdir=DIR | --checkpoint=DIR | --weights=x.pth) \\
        --input=IMAGE|FOLDER|GLOB|VIDEO --out=DIR [--score_threshold=0.4] [--batch=8]

Weights: ``deim_jax.deploy.weights`` (the EMA weights; ``--workdir``: its best-AP checkpoint).
Class names: the checkpoint's, COCO's for official 80-class weights, else label numbers.
Writes into ``--out``:

* every image with its boxes drawn (a colour per class, name and score), as JPEG, at the path it
  has under the input folder (``name.jpg`` for a single file);
* every video as ``<name>.mp4`` with the boxes drawn on each frame (the ``video`` extra);
* ``results.json``: COCO results (``image_id``, ``category_id``, ``bbox`` [x, y, w, h] pixels,
  ``score``) of every detection at or above ``--score_threshold``, plus ``file_name`` and, for a
  video, ``frame``. ``image_id``: the file stem if every stem is a number, else 1..N in input
  order (``deim_jax.data.image_files.image_ids``); ``category_id``: the training set's category
  id of the label (COCO's for official weights).

Images go through the model in batches of ``--batch`` at the config's ``eval_spatial_size``
(``--size`` changes it), jitted once, with the BatchNorms folded (``--nofuse``: as trained). A
file that cannot be read is skipped with a warning naming it, counted in the last line; the run
goes on.
"""

from __future__ import annotations

import logging
import os
import time

from absl import flags

from deim_jax import cli
from deim_jax.errors import UserError

log = logging.getLogger("deim_jax.predict")

_CONFIG = cli.define_config_flag()
_WEIGHT_FLAGS = cli.define_weights_flags()
_INPUT = flags.DEFINE_string("input", None, "Image, folder, glob pattern or video.")
_OUT = flags.DEFINE_string("out", None, "Output folder.")
_THRESHOLD = flags.DEFINE_float("score_threshold", 0.4, "Smallest score drawn and written.")
_BATCH = flags.DEFINE_integer("batch", 8, "Images per forward pass.")
_SIZE = flags.DEFINE_integer("size", None, "Square input size (default: the config's eval_spatial_size).")
_FUSE = flags.DEFINE_bool("fuse", True, "Fold BatchNorms into convs and RepVGG blocks into one conv first.")
flags.DEFINE_alias("score-threshold", "score_threshold")


def main(argv):
    del argv
    from deim_jax.deploy import media, weights
    from deim_jax.deploy.predictor import predict

    cfg = cli.require_config(_CONFIG)
    if not _INPUT.value or not _OUT.value:
        raise UserError("--input and --out are required")
    if _BATCH.value < 1:
        raise UserError(f"--batch={_BATCH.value}: must be at least 1")
    sources = media.expand_inputs(_INPUT.value)
    out = cli.writable_folder(_OUT.value, "--out")
    loaded = weights.load(cfg, **_WEIGHT_FLAGS.values())
    log.info("%s: %s", cfg.name, loaded.source)
    if _FUSE.value:
        from deim_jax.models import fusion

        loaded.variables = fusion.fold(loaded.variables)
    size = (_SIZE.value, _SIZE.value) if _SIZE.value else None
    root = _INPUT.value if os.path.isdir(_INPUT.value) else None
    t0 = time.perf_counter()
    counts = predict(cfg, sources, out, loaded, threshold=_THRESHOLD.value, batch=_BATCH.value, size=size, root=root)
    dt = time.perf_counter() - t0
    skipped = f", {counts['skipped']} unreadable file(s) skipped" if counts["skipped"] else ""
    log.info("%d image(s) and %d video frame(s) in %.1f s (compile included): %d detections at score >= %g "
             "in %s/results.json%s", counts["images"], counts["frames"], dt, counts["detections"],
             _THRESHOLD.value, out, skipped)


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
