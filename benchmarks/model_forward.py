"""Eval-mode forward time of a config at its eval size (jit-compiled, batch 1, median of repeats).

    python benchmarks/model_forward.py --config=dfine_n [--config.compute_dtype=bfloat16] [--repeats=10] [--out=FILE]

The forward is the train loop's predict step (``deim_jax.train.setup``). The official PyTorch
forward time measured on the machine that made the parity fixtures (summary.json
``eval_forward_time``, 2 threads) is shown beside ours when the fixture folder is available; it
was measured on another run, so the ratio is indicative only. One row per run is appended to
``benchmarks/results/model_forward_<platform>.md`` (or ``--out``).
"""

from __future__ import annotations

import json
import os
import statistics
import time

import bench_common  # first: puts the repository on sys.path (run as python benchmarks/...)
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from deim_jax import cli, models
from deim_jax.train import setup as setup_lib
from deim_jax.train import sharding

PARITY = os.environ.get("DEIM_PARITY_DIR", os.path.join(bench_common.REPO, "..", "shared", "parity"))

_CONFIG = cli.define_config_flag()
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed forwards (after the compiling one).")
_OUT = flags.DEFINE_string("out", None, "Results file (default benchmarks/results/model_forward_<platform>.md).")


def time_forward(cfg, repeats: int, batch: int = 1):
    """(compile + first forward seconds, [seconds of each timed forward])."""
    s = setup_lib.setup(cfg, sharding.make_mesh(jax.devices()[:1]))
    variables = sharding.replicate(models.init(s.model, cfg, jax.random.PRNGKey(0)), s.mesh)
    h, w = cfg.eval_spatial_size
    x = jnp.asarray(np.random.default_rng(0).random((batch, h, w, 3), np.float32))
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        jax.block_until_ready(s.predict_step(variables, x))
        times.append(time.perf_counter() - t0)
    return times[0], times[1:]


def torch_reference(name: str):
    """Median batch-1 forward seconds of the official model for ``dfine_<size>`` (fixture summary.json)."""
    size = name.split("_")[1] if name.startswith("dfine_") else name
    path = os.path.join(PARITY, size, "summary.json")
    if not os.path.isfile(path):
        return None
    return json.load(open(path)).get("eval_forward_time", {}).get("batch1_median_s")


def main(argv):
    del argv
    cfg = cli.require_config(_CONFIG)
    compile_s, times = time_forward(cfg, _REPEATS.value)
    ref = torch_reference(cfg.name)
    h, w = cfg.eval_spatial_size
    out = _OUT.value or os.path.join(bench_common.REPO, "benchmarks", "results",
                                     f"model_forward_{jax.devices()[0].platform}.md")
    bench_common.append_row(out, f"# Eval forward, batch 1 ({bench_common.device_description()})",
                            ["config", "size", "compute dtype", "compile s", "median ms", "min ms",
                             "official PyTorch ms (fixture run)"],
                            [cfg.name, f"{h}x{w}", cfg.compute_dtype, f"{compile_s:.1f}",
                             f"{statistics.median(times) * 1e3:.1f}", f"{min(times) * 1e3:.1f}",
                             "-" if ref is None else f"{ref * 1e3:.1f}"])


if __name__ == "__main__":
    cli.run(main)
