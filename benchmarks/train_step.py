"""Images/s of the jitted DEIM train step (model -> loss -> grads -> AdamW -> EMA) of a config.

    python benchmarks/train_step.py --config=dfine_n [--config.compute_dtype=bfloat16] [--batch=2] [--repeats=5]
        [--rounds=3] [--official=DIR --official_python=PY]

The step is the one the train loop runs (``deim_jax.train.setup``: same optimizer, frozen
parameters included). Synthetic batch (random image at the config's eval size, 20 random boxes
per image, max_boxes 100), denoising on, the matcher selected by ``loss.matcher.method`` ('auto':
scipy callback on CPU, on-device solver on GPU/TPU). ``--official=DIR`` (an official DEIM source
tree) also times the official trainer's step (``deim_jax/tools/official_train_step.py``: model,
criterion, backward, clip, AdamW, EMA; float32) with the same weights and batch in the same run, in
``--official_python``, and gives the ratio; the two alternate for ``--rounds`` rounds. One row per
run is appended to ``benchmarks/results/train_step_<platform>.md`` (or ``--out``) with date and
device.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Dict

import bench_common  # first: puts the repository on sys.path (run as python benchmarks/...)
import jax
import numpy as np
from absl import flags

from deim_jax import cli, models
from deim_jax.errors import UserError
from deim_jax.models import layers
from deim_jax.tools import official
from deim_jax.train import setup as setup_lib
from deim_jax.train import sharding

_CONFIG = cli.define_config_flag()
_BATCH = flags.DEFINE_integer("batch", 2, "Global batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps per round (after the compiling one).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds of deim_jax then official steps; the row gives the medians "
                               "and the median of the rounds' ratios.")
_OUT = flags.DEFINE_string("out", None, "Results file (default benchmarks/results/train_step_<platform>.md).")
_OFFICIAL = flags.DEFINE_string("official", None, "Official DEIM source tree: time its train step too.")
_OFFICIAL_PYTHON = flags.DEFINE_string("official_python", sys.executable, "Python with torch, torchvision and the "
                                       "official tree's requirements (experiments/official_ab/setup_official.sh).")


def make_timer(cfg, batch: Dict[str, np.ndarray]):
    """(variables, ``timed(steps)``: seconds of each of ``steps`` more train steps; the first call's
    first step compiles)."""
    s = setup_lib.setup(cfg, sharding.make_mesh(), steps_per_epoch=1000)
    variables = models.init(s.model, cfg, jax.random.PRNGKey(0))
    state = setup_lib.init_state(s, variables, jax.random.PRNGKey(1))
    data = sharding.global_batch(batch, s.mesh)

    def timed(steps):
        nonlocal state
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state, m = s.train_step(state, data)
            jax.block_until_ready(m["loss"])
            times.append(time.perf_counter() - t0)
        return times
    return variables, timed


def main(argv):
    del argv
    cfg = cli.require_config(_CONFIG)
    if _OFFICIAL.value:
        official.check(_OFFICIAL.value, cfg.name)
    if _ROUNDS.value < 1:
        raise UserError(f"--rounds={_ROUNDS.value}: expected at least 1")
    batch = bench_common.synthetic_batch(_BATCH.value, cfg.eval_spatial_size[0])
    variables, timed = make_timer(cfg, batch)
    compile_s = timed(1)[0]
    ours, theirs = [], []
    for _ in range(_ROUNDS.value):   # alternate: this machine's speed drifts by tens of percent
        ours.append(statistics.median(timed(_REPEATS.value)))
        if _OFFICIAL.value:
            out = official.run("official_train_step.py", cfg, _OFFICIAL.value, _OFFICIAL_PYTHON.value,
                               jax.tree_util.tree_map(np.asarray, variables), tuple(cfg.eval_spatial_size),
                               [f"--runs={_REPEATS.value}", "--warmup=1"], arrays=batch)
            theirs.append(statistics.median(out["times"]))
    t = statistics.median(ours)
    columns = ["config", "compute dtype", "batch", "compile s", "median s/step", "images/s"]
    row = [cfg.name, cfg.compute_dtype, str(_BATCH.value), f"{compile_s:.1f}", f"{t:.3f}", f"{_BATCH.value / t:.2f}"]
    if _OFFICIAL.value:
        columns += ["official s/step", "speed vs official"]
        row += [f"{statistics.median(theirs):.3f}", f"{statistics.median(b / a for a, b in zip(ours, theirs)):.2f}x"]
    columns += ["rounds", "oneDNN convs"]
    row += [str(_ROUNDS.value), "yes" if layers.use_native_convs() else "no"]
    out_path = _OUT.value or os.path.join(bench_common.REPO, "benchmarks", "results",
                                          f"train_step_{jax.devices()[0].platform}.md")
    bench_common.append_row(out_path, f"# Train step ({bench_common.device_description()})", columns, row)


if __name__ == "__main__":
    cli.run(main)
