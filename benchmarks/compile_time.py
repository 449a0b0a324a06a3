"""Compile time of multi-scale training, first run vs a resumed run (persistent compilation cache).

``python benchmarks/compile_time.py [--config=dfine_l] [--sizes=480,640,800] [--batch=1]``

Multi-scale training compiles the train step once per input size (the official list of the L
recipe has 11 distinct sizes, 480..800). This script starts two fresh processes one after the
other on one empty cache folder, as a first run and a resumed run of the same job would: each
builds the train step (``loss.matcher.method=device``, the form an accelerator's ``auto`` picks:
JAX caches no program with a host callback) and runs one step at every size of ``--sizes``
(default: every distinct size of the config's multi-scale list), recording compile + first-step
seconds minus a second step's seconds per size. Appends one row per run to
``benchmarks/results/compile_time_<platform>.md``.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import bench_common  # first: puts the repository on sys.path (run as python benchmarks/...)
from absl import flags

from deim_jax import cli

_CONFIG = cli.define_config_flag()
_SIZES = flags.DEFINE_list("sizes", None, "Input sizes (default: the config's distinct multi-scale sizes).")
_BATCH = flags.DEFINE_integer("batch", 1, "Batch size of the compiled step.")
_OUT = flags.DEFINE_string("out", None, "(internal) write this process's per-size seconds as JSON here")


def sizes_of(cfg):
    if _SIZES.value:  # no TensorFlow needed (the accelerator image has none)
        return [int(s) for s in _SIZES.value]
    from deim_jax.data import batch_ops
    return sorted(set(batch_ops.multiscale_scales(int(cfg.data.image_size), cfg.data.base_size_repeat)))


def child(cfg):
    import jax

    from deim_jax import models
    from deim_jax.train import setup as setup_lib
    from deim_jax.train import sharding

    t_start = time.perf_counter()
    s = setup_lib.setup(cfg, sharding.make_mesh(), steps_per_epoch=1000)
    state = setup_lib.init_state(s, models.init(s.model, cfg, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    seconds = {}
    for size in sizes_of(cfg):
        data = sharding.global_batch(bench_common.synthetic_batch(_BATCH.value, size), s.mesh)
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            state, m = s.train_step(state, data)
            jax.block_until_ready(m["loss"])
            times.append(time.perf_counter() - t0)
        seconds[size] = times[0] - times[1]
    with open(_OUT.value, "w") as f:
        json.dump({"compile_s": seconds, "process_s": time.perf_counter() - t_start}, f)


def main(argv):
    del argv
    cfg = cli.require_config(_CONFIG)
    cfg.loss.matcher.method = "device"
    if _OUT.value:
        return child(cfg)
    import jax

    cache = tempfile.mkdtemp(prefix="deim_jax_xla_")
    sizes = sizes_of(cfg)
    columns = ["machine", "config", "batch", "sizes", "run", "compile s (sum)", "slowest size s", "process s"]
    for run in ("first (empty cache)", "resumed (same cache)"):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "r.json")
            args = [a for a in sys.argv[1:] if not a.startswith("--out")]
            subprocess.run([sys.executable, __file__, *args, f"--out={out}"], check=True,
                           env={**os.environ, cli.CACHE_ENV: cache})
            with open(out) as f:
                r = json.load(f)
        per_size = r["compile_s"].values()
        row = [bench_common.device_description(), cfg.name, str(_BATCH.value), ",".join(map(str, sizes)), run,
               f"{sum(per_size):.1f}", f"{max(per_size):.1f}", f"{r['process_s']:.1f}"]
        bench_common.append_row(os.path.join(bench_common.REPO, "benchmarks", "results",
                                             f"compile_time_{jax.devices()[0].platform}.md"),
                                "# Train-step compile time, first run vs resumed run", columns, row)


if __name__ == "__main__":
    cli.run(main, default_config="dfine_l")
