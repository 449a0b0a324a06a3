"""Command line entry point: ``python -m deim_jax.main --config=NAME [--config.a.b=value] --mode=...``.

``--config`` takes a config name (``dfine_l``, ``dfine_l_baseline``; see
``deim_jax.configs.available()``) or a path ``path/to/config.py[:arg]``.
Modes: ``train`` (train and evaluate in ``--workdir``, resuming from its latest
checkpoint), ``eval`` (COCO AP of the latest checkpoint's EMA weights, or of
``--config.init_from``), ``summary`` (parameter counts per module), ``predict``
(detections on one image, with ``--weights`` from an official .pth or random weights).
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from deim_jax import configs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config name or path[:arg].", lock_config=False)
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "summary", "predict"], "What to run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder for checkpoints and logs.")
_IMAGE = flags.DEFINE_string("image", None, "Image file for --mode=predict (default: a bundled sample).")
_WEIGHTS = flags.DEFINE_string("weights", None, "Official PyTorch checkpoint (.pth) to load for predict.")


def _rewrite_config_arg(argv):
    """Turn ``--config=dfine_l`` into the file path form that config_flags understands."""
    out = []
    for i, a in enumerate(argv):
        if a.startswith("--config=") and not a.startswith("--config.="):
            name = a.split("=", 1)[1]
            try:
                path, arg = configs.resolve(name)
            except ValueError as e:
                sys.exit(f"error: {e}")
            a = f"--config={path}" + (f":{arg}" if arg else "")
        out.append(a)
    return out


def main(argv):
    del argv
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax/clu log every save at INFO
    cfg = _CONFIG.value
    if cfg is None:
        sys.exit(f"error: --config is required; available: {', '.join(configs.available())}")
    from deim_jax.tools import cli

    if _MODE.value in ("train", "eval"):
        if not _WORKDIR.value:
            sys.exit("error: --workdir is required for --mode=train/eval")
        from deim_jax.data import prepare

        try:
            prepare.check_or_generate(cfg.data)
        except FileNotFoundError as e:
            sys.exit(f"error: {e}")
        from deim_jax.train import loop

        if _MODE.value == "train":
            metrics = loop.train_and_evaluate(cfg, _WORKDIR.value)
        else:
            metrics = loop.evaluate_checkpoint(cfg, _WORKDIR.value)
        if metrics:
            print(f"final AP {metrics['AP']:.4f} (AP50 {metrics['AP50']:.4f}); results in {_WORKDIR.value}/eval.jsonl")
    elif _MODE.value == "summary":
        cli.summary(cfg)
    elif _MODE.value == "predict":
        cli.predict(cfg, image_path=_IMAGE.value, weights=_WEIGHTS.value)


def run():
    if "configs" not in sys.modules:
        sys.path.insert(0, configs.REPO_ROOT)
    app.run(main, argv=_rewrite_config_arg(sys.argv))


if __name__ == "__main__":
    run()
