"""What every command line of the project shares: ``--config=NAME`` plus ``--config.a.b=value``
overrides (``ml_collections.config_flags``), absl ``app.run``, and a clean console.

``--config`` takes a config name (``dfine_l``, ``dfine_l_baseline``, ``demo``; see
``deim_jax.configs.available()``) or a path ``path/to/config.py[:arg]``; ``config_argv`` rewrites
a name into the path form that config_flags reads. ``run(main)`` is ``app.run`` with that rewrite
and the console set up: the project's log records (``deim_jax.*`` loggers, INFO and up) are
printed as plain lines on stdout; other libraries' INFO logs (orbax, clu, absl) are hidden.

User errors (``deim_jax.errors.UserError`` raised anywhere under ``main``, a bad flag, an
override naming no config field, ``--config.batch_size=abc``) print one line ``error: ...`` on
stderr, without a traceback, and exit with status 2; ``--help`` works as in absl.

Also here: the ``summary`` and ``predict`` modes of ``deim_jax.main``.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import sys
import tempfile
import time
from typing import Callable, List, NoReturn, Optional, Sequence

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from deim_jax import configs
from deim_jax.errors import ConfigError, UserError

SAMPLE_IMAGE = os.path.join(os.path.dirname(__file__), "assets", "sample.png")


def define_config_flag():
    """The ``--config`` flag (call once, at module level of a command-line module)."""
    return config_flags.DEFINE_config_file("config", None, "Config name or path[:arg].", lock_config=True)


@dataclasses.dataclass(frozen=True)
class WeightsFlags:
    """``--workdir`` / ``--checkpoint`` / ``--weights`` of a tool that runs trained weights;
    ``values()`` are the keyword arguments of ``deim_jax.deploy.weights.load``."""
    workdir: flags.FlagHolder
    checkpoint: flags.FlagHolder
    weights: flags.FlagHolder

    def values(self) -> dict:
        return {"workdir": self.workdir.value, "checkpoint": self.checkpoint.value, "weights": self.weights.value}


def define_weights_flags() -> WeightsFlags:
    """The weights flags (call once, at module level of a command-line module)."""
    return WeightsFlags(
        flags.DEFINE_string("workdir", None, "Training run folder: the EMA weights of its best-AP checkpoint."),
        flags.DEFINE_string("checkpoint", None, "Checkpoint folder (WORKDIR/checkpoints, or "
                            "deim_jax.tools.convert's output): its newest checkpoint's EMA weights."),
        flags.DEFINE_string("weights", None, "Official PyTorch checkpoint (.pth)."))


def config_argv(argv: Sequence[str], default: Optional[str] = None) -> List[str]:
    """``argv`` (program name first) with ``--config=NAME`` / ``--config NAME`` turned into
    ``--config=PATH[:ARG]``; ``--config=DEFAULT`` is added when ``default`` is given and no ``--config`` is."""
    out, seen, it = [], False, iter(argv)
    for a in it:
        if a == "--config":
            a = "--config=" + next(it, "")
        if a.startswith("--config="):
            seen = True
            path, arg = configs.resolve(a.split("=", 1)[1])  # ConfigError listing the names
            a = f"--config={path}" + (f":{arg}" if arg else "")
        out.append(a)
    if not seen and default is not None:  # before any --config.a.b=v: overrides need the config flag first
        out[1:1] = config_argv(["--config=" + default])
    return out


def require_config(flag):
    cfg = flag.value
    if cfg is None:
        raise ConfigError(f"--config is required; available: {', '.join(configs.available())}")
    return cfg


def writable_folder(path: str, flag: str) -> str:
    """``path``, created if missing and checked writable; a ``UserError`` naming ``flag`` if not."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"{flag}={path}: cannot create or write this folder: {e}") from None
    return path


def unknown_override(argv: Sequence[str]) -> Optional[str]:
    """The message for the first ``--config.a.b[=v]`` of ``argv`` naming no field of the config
    (``--config=PATH[:ARG]`` form), with the closest field name; None if every override exists."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return None
    cfg = configs.load_file(*configs.resolve(spec))
    for arg in argv:
        match = re.match(r"--?(?:no)?config\.([^=]+)", arg)
        if not match:
            continue
        node, parent = cfg, []
        for key in match.group(1).split("."):
            fields = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                where = "config." + ".".join(parent) if parent else "the config"
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                return f"--config.{match.group(1)}: no field {key!r} in {where}{hint}"
            node = node[key]
            parent.append(key)
    return None


def parse_flags(argv: List[str]) -> List[str]:
    """``flags.FLAGS(argv)`` (``--help`` as usual); a bad flag or override raises a ``UserError``."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = str(e)
        if "Unknown command line flag 'config." in message:
            message += " (an override --config.a.b=value needs --config=NAME before it)"
        raise UserError(message[len("flag "):] if message.startswith("flag --") else message) from None
    except (KeyError, AttributeError):  # config_flags' lookup of an override's field
        message = unknown_override(argv)
        if message is None:
            raise
        raise ConfigError(message) from None


def fail(error: BaseException) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with status 2."""
    sys.stdout.flush()
    print("error: " + " ".join(str(error).split()), file=sys.stderr, flush=True)
    sys.exit(2)


def setup_console() -> None:
    """Plain ``message`` lines for the project's loggers; other libraries' INFO chatter hidden."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax/clu log every save at INFO
    logger = logging.getLogger("deim_jax")
    if not any(getattr(h, "_deim_console", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._deim_console = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


CACHE_ENV = "DEIM_JAX_CACHE_DIR"
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "deim_jax", "xla")


def compilation_cache_dir() -> Optional[str]:
    """The persistent XLA compilation cache every command line uses: ``$DEIM_JAX_CACHE_DIR`` (empty:
    off), else JAX's own ``$JAX_COMPILATION_CACHE_DIR`` if set, else ``~/.cache/deim_jax/xla``.
    Programs that compile in under a second are not stored (JAX's default threshold); nor are
    programs with host callbacks (the scipy matcher on CPU): JAX does not cache those."""
    if CACHE_ENV in os.environ:
        return os.environ[CACHE_ENV] or None
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_CACHE_DIR


def enable_compilation_cache() -> Optional[str]:
    import jax

    path = compilation_cache_dir()
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def run(main: Callable, default_config: Optional[str] = None) -> None:
    """``absl.app.run(main)`` with ``config_argv`` applied to ``sys.argv``, the console set up and
    a ``UserError`` (from the flags or from ``main``) turned into ``fail``."""
    if "configs" not in sys.modules:
        sys.path.insert(0, configs.REPO_ROOT)

    def wrapped(argv):
        setup_console()
        enable_compilation_cache()
        return main(argv)

    try:
        app.run(wrapped, argv=config_argv(sys.argv, default_config), flags_parser=parse_flags)
    except UserError as e:
        fail(e)


# ---------------------------------------------------------------------------------------------- modes

@dataclasses.dataclass
class _ModuleRow:
    module: str
    parameters: int


def param_table(variables, depth: int = 2):
    """[(module path, parameter count, level)] of the params tree down to ``depth`` levels, plus the total."""
    from clu import parameter_overview

    rows = []

    def walk(tree, prefix, level):
        for k, v in tree.items():
            if hasattr(v, "items"):
                rows.append(("/".join(prefix + (k,)), int(parameter_overview.count_parameters(v)), level))
                if level + 1 < depth:
                    walk(v, prefix + (k,), level + 1)

    walk(variables["params"], (), 0)
    return rows, int(parameter_overview.count_parameters(variables["params"]))


def summary(cfg) -> int:
    """``--mode=summary``: parameter counts per module (a ``clu.parameter_overview`` table)."""
    from clu import parameter_overview

    from deim_jax import models

    shapes = models.init_shapes(models.build(cfg), cfg)
    rows, total = param_table(shapes)
    table = [_ModuleRow("  " * level + path, n) for path, n, level in rows]
    table += [_ModuleRow("total parameters", total),
              _ModuleRow("batch statistics (not parameters)",
                         int(parameter_overview.count_parameters(shapes["batch_stats"])))]
    print(f"config {cfg.name}: {cfg.model.family} detector, {cfg.num_classes} classes, "
          f"eval size {tuple(cfg.eval_spatial_size)}")
    print(parameter_overview.make_table(table))
    return total


def predict(cfg, image_path=None, weights=None, score_threshold: float = 0.4, top: int = 20):
    """``--mode=predict``: detections on one image, printed with the checkpoint's class names (COCO's
    for an 80-class COCO model). ``weights``: an official .pth, a checkpoint folder
    (``WORKDIR/checkpoints``, EMA weights) or None (random weights). ``deim_jax.predict`` is the
    full tool (folders, videos, pictures, COCO results)."""
    import jax

    from deim_jax import models
    from deim_jax.data.classes import display_names
    from deim_jax.deploy import media
    from deim_jax.deploy import weights as deploy_weights
    from deim_jax.deploy.detector import make_detect

    if not weights:
        print("no --weights given: random initialization (detections are meaningless)")
        variables, classes = models.init(models.build(cfg), cfg, jax.random.PRNGKey(cfg.seed)), None
    else:
        source = {"checkpoint" if os.path.isdir(weights) else "weights": weights}
        loaded = deploy_weights.load(cfg, **source)
        print(f"loaded the {loaded.source}")
        variables, classes = loaded.variables, loaded.classes
    names = display_names(classes, int(cfg.num_classes), bool(cfg.remap_mscoco_category))
    path = image_path or SAMPLE_IMAGE
    rgb = media.read_rgb(path)
    image = media.to_model_input(rgb, cfg.eval_spatial_size)[None]
    orig = np.array([[rgb.shape[1], rgb.shape[0]]], np.float32)
    detect = jax.jit(make_detect(cfg, remap_mscoco_category=False))
    jax.block_until_ready(detect(variables, image, orig))  # compile
    t0 = time.perf_counter()
    res = jax.block_until_ready(detect(variables, image, orig))
    dt = time.perf_counter() - t0
    scores, labels, boxes = (np.asarray(res[k])[0] for k in ("scores", "labels", "boxes"))
    print(f"{path}: {rgb.shape[1]}x{rgb.shape[0]}, forward {dt * 1000:.1f} ms (jit, batch 1, post-processing included)")
    for shown, (s, l, b) in enumerate(zip(scores, labels, boxes)):
        if (s < score_threshold and shown >= 5) or shown >= top:
            break
        print(f"  label {int(l):3d} {names.get(int(l), ''):<14} score {s:.3f}  "
              f"box xyxy [{b[0]:.1f}, {b[1]:.1f}, {b[2]:.1f}, {b[3]:.1f}]")
    return res
