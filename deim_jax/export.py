"""Export a trained detector with its post-processing as StableHLO, a TF SavedModel or ONNX.

    python -m deim_jax.export --config=NAME (--workdir=DIR | --checkpoint=DIR | --weights=x.pth) \\
        --format=stablehlo|savedmodel|onnx --out=PATH [--size=640] [--batch=1|dynamic] [--input_dtype=float32|uint8]

The artifact takes ``images`` [B, size, size, 3] (float32 in [0, 1], or uint8 with
``--input_dtype=uint8``) and ``orig_target_sizes`` [B, 2] (width, height of the images before
they were resized) and returns ``labels`` [B, K], ``boxes`` [B, K, 4] (xyxy pixels of the
original images) and ``scores`` [B, K] of the top K = ``num_top_queries`` queries
(``deim_jax.deploy.exporters``). ``--size`` other than the training size works: the anchors and
valid masks are generated for it. ``--batch=dynamic`` makes B symbolic (StableHLO, ONNX; TF 2.21
cannot refine a dynamic top-k, so a SavedModel has a fixed batch). After writing, the artifact is
run once in its own runtime on a random batch and compared with the jitted model of the unfolded
weights; the line printed gives the largest differences. ``--fuse`` (default) folds BatchNorms into
the convs and re-parameterizes RepVGG blocks first (``deim_jax.models.fusion``).
"""

from __future__ import annotations

import logging
import time

from absl import flags

from deim_jax import cli
from deim_jax.errors import UserError

log = logging.getLogger("deim_jax.export")

_CONFIG = cli.define_config_flag()
_WEIGHT_FLAGS = cli.define_weights_flags()
_FORMAT = flags.DEFINE_enum("format", None, ["stablehlo", "savedmodel", "onnx"], "Artifact format.")
_OUT = flags.DEFINE_string("out", None, "File (stablehlo, onnx) or folder (savedmodel) to write.")
_SIZE = flags.DEFINE_integer("size", None, "Square input size (default: the config's eval_spatial_size).")
_BATCH = flags.DEFINE_string("batch", "1", "Batch size, or 'dynamic'.")
_INPUT_DTYPE = flags.DEFINE_enum("input_dtype", "float32", ["float32", "uint8"], "Dtype of the images input.")
_FUSE = flags.DEFINE_bool("fuse", True, "Fold BatchNorms into convs and re-parameterize RepVGG blocks (models.fusion).")


def parse_batch(text: str, fmt: str):
    """``--batch``: a positive int, or None for 'dynamic' (not for a SavedModel)."""
    if text == "dynamic":
        if fmt == "savedmodel":
            raise UserError("--batch=dynamic: a SavedModel needs a fixed batch (TF 2.21 cannot refine the "
                            "exported top-k for a symbolic batch); export one per batch size")
        return None
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"--batch={text}: give a positive number or 'dynamic'")
    return int(text)


def main(argv):
    del argv
    from deim_jax.deploy import exporters, weights
    from deim_jax.models import fusion

    cfg = cli.require_config(_CONFIG)
    if not _FORMAT.value or not _OUT.value:
        raise UserError("--format and --out are required")
    batch = parse_batch(_BATCH.value, _FORMAT.value)
    size = (_SIZE.value, _SIZE.value) if _SIZE.value else tuple(cfg.eval_spatial_size)
    if min(size) < 32 or size[0] % 32 or size[1] % 32:
        raise UserError(f"--size={size[0]}: must be a multiple of 32 (the backbone's stride)")
    loaded = weights.load(cfg, **_WEIGHT_FLAGS.values())
    log.info("%s: %s", cfg.name, loaded.source)
    t0 = time.perf_counter()
    exported = fusion.fold(loaded.variables) if _FUSE.value else loaded.variables
    exporters.export(cfg, exported, _FORMAT.value, _OUT.value, size=size, batch=batch, input_dtype=_INPUT_DTYPE.value)
    log.info("wrote %s (%s, %dx%d, batch %s, %s images%s) in %.1f s", _OUT.value, _FORMAT.value, size[0], size[1],
             batch or "dynamic", _INPUT_DTYPE.value, ", BatchNorms folded" if _FUSE.value else "",
             time.perf_counter() - t0)
    err = exporters.check_artifact(cfg, loaded.variables, _OUT.value, _FORMAT.value, size, batch, _INPUT_DTYPE.value)
    log.info("checked in its runtime against the jitted model on random images: max |d score| %.2g, max |d box| "
             "%.2g px, labels differing %.1f%% (over the %.0f%% of detections with a score no other has)",
             err["scores"], err["boxes"], 100 * err["labels"], 100 * err["compared"])


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
