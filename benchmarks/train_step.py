"""Images/s of the jitted DEIM train step (model -> loss -> grads -> AdamW -> EMA) of a config.

    python benchmarks/train_step.py --config=dfine_n [--config.compute_dtype=bfloat16] [--batch=2] [--repeats=5]
        [--official=DIR --official_python=PY]

The step is the one the train loop runs (``deim_jax.train.setup``: same optimizer, frozen
parameters included). Synthetic batch (random image at the config's eval size, 20 random boxes
per image, max_boxes 100), denoising on, the matcher selected by ``loss.matcher.method`` ('auto':
scipy callback on CPU, on-device solver on GPU/TPU). ``--official=DIR`` (an official DEIM source
tree) also times the official trainer's step (``deim_jax/tools/official_train_step.py``: model,
criterion, backward, clip, AdamW, EMA; float32) with the same weights and batch in the same run, in
``--official_python``, and gives the ratio. One row per run is appended to
``benchmarks/results/train_step_<platform>.md`` (or ``--out``) with date and device.
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
from deim_jax.tools import official
from deim_jax.train import setup as setup_lib
from deim_jax.train import sharding

_CONFIG = cli.define_config_flag()
_BATCH = flags.DEFINE_integer("batch", 2, "Global batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps (after the compiling one).")
_OUT = flags.DEFINE_string("out", None, "Results file (default benchmarks/results/train_step_<platform>.md).")
_OFFICIAL = flags.DEFINE_string("official", None, "Official DEIM source tree: time its train step too.")
_OFFICIAL_PYTHON = flags.DEFINE_string("official_python", sys.executable, "Python with torch, torchvision and the "
                                       "official tree's requirements (experiments/official_ab/setup_official.sh).")


def time_train_step(cfg, batch: Dict[str, np.ndarray], repeats: int):
    """(compile + first step seconds, median seconds per step, the initial variables)."""
    s = setup_lib.setup(cfg, sharding.make_mesh(), steps_per_epoch=1000)
    variables = models.init(s.model, cfg, jax.random.PRNGKey(0))
    state = setup_lib.init_state(s, variables, jax.random.PRNGKey(1))
    data = sharding.global_batch(batch, s.mesh)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        state, m = s.train_step(state, data)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t0)
    return times[0], statistics.median(times[1:]), variables


def main(argv):
    del argv
    cfg = cli.require_config(_CONFIG)
    if _OFFICIAL.value:
        official.check(_OFFICIAL.value, cfg.name)
    batch = bench_common.synthetic_batch(_BATCH.value, cfg.eval_spatial_size[0])
    compile_s, t, variables = time_train_step(cfg, batch, _REPEATS.value)
    columns = ["config", "compute dtype", "batch", "compile s", "median s/step", "images/s"]
    row = [cfg.name, cfg.compute_dtype, str(_BATCH.value), f"{compile_s:.1f}", f"{t:.3f}", f"{_BATCH.value / t:.2f}"]
    if _OFFICIAL.value:
        size = tuple(cfg.eval_spatial_size)
        out = official.run("official_train_step.py", cfg, _OFFICIAL.value, _OFFICIAL_PYTHON.value,
                           jax.tree_util.tree_map(np.asarray, variables), size,
                           [f"--runs={_REPEATS.value}", "--warmup=1"], arrays=batch)
        t_official = statistics.median(out["times"])
        columns += ["official s/step", "speed vs official"]
        row += [f"{t_official:.3f}", f"{t_official / t:.2f}x"]
    out_path = _OUT.value or os.path.join(bench_common.REPO, "benchmarks", "results",
                                          f"train_step_{jax.devices()[0].platform}.md")
    bench_common.append_row(out_path, f"# Train step ({bench_common.device_description()})", columns, row)


if __name__ == "__main__":
    cli.run(main)
