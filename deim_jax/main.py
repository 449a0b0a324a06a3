"""Command line entry point: ``python -m deim_jax.main --config=NAME [--config.a.b=value] --mode=...``.

``--config`` takes a config name (``dfine_l``, ``dfine_l_baseline``; see
``deim_jax.configs.available()``) or a path ``path/to/config.py[:arg]``.
Modes: ``train`` (train and evaluate in ``--workdir``, resuming from its latest
checkpoint), ``eval`` (COCO AP of the latest checkpoint's EMA weights, or of
``--config.init_from``), ``summary`` (parameter counts per module), ``predict``
(detections on one image, named, with ``--weights`` from an official .pth, a checkpoint folder
or random weights).

A mistake in the input (config field, data, flag, ``--workdir`` not writable) ends the run with
one ``error: ...`` line and exit status 2 (``deim_jax.cli.run``), at start-up. A run that stops on a
non-finite loss or a checkpoint that cannot be saved (or none that can be read) ends with one
``error: ...`` line and status 1; its checkpoints are intact.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from deim_jax import cli
from deim_jax.errors import MissingDataError, UserError

_CONFIG = cli.define_config_flag()
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "summary", "predict"], "What to run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder for checkpoints and logs.")
_IMAGE = flags.DEFINE_string("image", None, "Image file for --mode=predict (default: a bundled sample).")
_WEIGHTS = flags.DEFINE_string("weights", None, "Official PyTorch checkpoint (.pth) or a checkpoint folder "
                                "(WORKDIR/checkpoints) to load for predict.")


def _train_or_eval(cfg, mode: str, workdir: str) -> None:
    cli.writable_folder(workdir, "--workdir")  # checked before the slow imports
    from deim_jax.data import prepare
    from deim_jax.train import checkpoints, loop

    prepare.check_or_generate(cfg.data)
    try:
        if mode == "train":
            metrics = loop.train_and_evaluate(cfg, workdir)
        else:
            metrics = loop.evaluate_checkpoint(cfg, workdir)
    except (loop.NonFiniteLoss, checkpoints.CheckpointError) as e:
        sys.exit(f"error: {e}")  # the run stopped with its checkpoints intact; status 1
    if metrics:
        print(f"final AP {metrics['AP']:.4f} (AP50 {metrics['AP50']:.4f}); results in {workdir}/eval.jsonl")


def main(argv):
    del argv
    cfg = cli.require_config(_CONFIG)
    if _MODE.value in ("train", "eval"):
        if not _WORKDIR.value:
            raise UserError("--workdir is required for --mode=train/eval")
        _train_or_eval(cfg, _MODE.value, _WORKDIR.value)
    elif _MODE.value == "summary":
        cli.summary(cfg)
    else:
        for flag, exists in ((_IMAGE, os.path.isfile), (_WEIGHTS, os.path.exists)):
            if flag.value and not exists(flag.value):
                raise MissingDataError(f"--{flag.name}={flag.value}: no such file or folder")
        cli.predict(cfg, image_path=_IMAGE.value, weights=_WEIGHTS.value)


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
