"""The accelerator suite: one table of train and eval speed for D-FINE N and L, beside the official
PyTorch code on the same device in the same run (``benchmarks/accelerator.sh`` runs it).

    python benchmarks/accelerator.py [--configs=dfine_n,dfine_l] [--dtypes=float32,bfloat16]
        [--train_batch=32] [--eval_batches=1,64] [--find_max_batch] [--official=DIR] [--dry-run]

Rows per config:
  * ``peak``: the measured bf16 matrix-product TFLOP/s of the device (an 8192^3 product), against
    which every row's TFLOP/s is given as a share;
  * ``train``: the jitted train step (``deim_jax.train.setup``, synthetic batch of ``--train_batch``
    images at the config's size with 20 boxes each) per dtype: ms/step, images/s, TFLOP/s (XLA's
    cost analysis); ``--find_max_batch`` doubles the batch until the device runs out of memory;
  * ``matcher``: the Hungarian matching of that step alone (every decoder layer, the encoder, the
    union; ``method`` ``device`` and ``scipy``), as a share of the float32 step;
  * ``eval``: the eval forward (``tools.speed.bench_jax``) at each of ``--eval_batches``;
  * ``official``: with ``--official=DIR``, the official model's eval latency (float32) and train
    step (``--amp``: autocast + GradScaler on CUDA, float32 elsewhere) with the same weights, in
    ``--official_python`` (default: this Python, which has torch on the accelerator image).
``--dry-run``: 320x320 images, batch 2, 2 timed runs, a 1024^3 peak product: checks the whole suite
on a CPU in about three minutes a config. Imports no TensorFlow: the accelerator image has none. Writes
``accelerator_<platform>.md`` and ``.json`` under ``--out``.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import time
from typing import Dict, List

import bench_common  # first: puts the repository on sys.path (run as python benchmarks/...)
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from deim_jax import cli, configs, losses, models
from deim_jax.tools import official, speed
from deim_jax.train import setup as setup_lib
from deim_jax.train import sharding

_CONFIGS = flags.DEFINE_list("configs", ["dfine_n", "dfine_l"], "Configs to measure.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes.")
_TRAIN_BATCH = flags.DEFINE_integer("train_batch", 32, "Train-step batch.")
_EVAL_BATCHES = flags.DEFINE_list("eval_batches", ["1", "64"], "Eval batches.")
_RUNS = flags.DEFINE_integer("runs", 20, "Timed runs per measurement.")
_FIND_MAX = flags.DEFINE_bool("find_max_batch", False, "Double the train batch (bf16) until it no longer fits.")
_OFFICIAL = flags.DEFINE_string("official", None, "Official DEIM source tree: time the PyTorch code too.")
_OFFICIAL_PYTHON = flags.DEFINE_string("official_python", sys.executable, "Python with torch for --official.")
_DRY_RUN = flags.DEFINE_bool("dry-run", False, "Tiny sizes: check the suite on a CPU.")
_OUT = flags.DEFINE_string("out", os.path.join(bench_common.REPO, "benchmarks", "results"), "Results folder.")


def timed(fn, runs: int) -> float:
    """Median seconds of ``fn()`` (blocking on its result) after one untimed call."""
    return statistics.median(speed.timed_runs(lambda: jax.block_until_ready(fn()), runs, 1))


def measure_peak(n: int, runs: int) -> float:
    """TFLOP/s of an n x n x n bfloat16 matrix product."""
    a = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda a: a @ a)
    return 2 * n**3 / timed(lambda: f(a), runs) / 1e12


def _is_oom(e: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower()


def train_row(cfg, batch_size: int, runs: int) -> Dict:
    """The train step of ``cfg`` at ``batch_size``: ms, images/s, TFLOP/s; plus the state and batch."""
    s = setup_lib.setup(cfg, sharding.make_mesh(), steps_per_epoch=1000)
    variables = models.init(s.model, cfg, jax.random.PRNGKey(0))
    state = setup_lib.init_state(s, variables, jax.random.PRNGKey(1))
    host_batch = bench_common.synthetic_batch(batch_size, cfg.eval_spatial_size[0])
    data = sharding.global_batch(host_batch, s.mesh)
    compiled = s.train_step.lower(state, data).compile()
    holder = {"state": state}

    def step():
        holder["state"], m = compiled(holder["state"], data)
        return m["loss"]

    t = timed(step, runs)
    row = {"work": "train", "dtype": cfg.compute_dtype, "batch": batch_size, "ms": t * 1e3,
           "images_per_s": batch_size / t, "tflops_per_s": speed.flops_of(compiled) / t / 1e12}
    return row, s, variables, host_batch


def matcher_rows(cfg, s, variables, host_batch, step_ms: float, runs: int) -> List[Dict]:
    """The matching of one train step alone, per method, as a share of the step."""
    data = sharding.global_batch(host_batch, s.mesh)
    targets = {k: data[k] for k in ("boxes", "labels", "mask")}
    outputs = jax.jit(lambda v, x, t: s.model.apply(v, x, train=True, targets=t, rngs={"denoising": jax.random.PRNGKey(0)},
                                                     mutable=["batch_stats"])[0])(variables, data["image"], targets)
    rows = []
    for method in ("device", "scipy"):
        c = cfg.copy_and_resolve_references()
        c.loss.matcher.method = method
        match = jax.jit(losses.build(c, s.mesh).match)
        t = timed(lambda: match(outputs, targets), runs)
        rows.append({"work": f"matcher ({method})", "dtype": "float32", "batch": len(host_batch["image"]), "ms": t * 1e3,
                     "share_of_step": t * 1e3 / step_ms})
    return rows


def official_rows(cfg, host_vars, host_batch, eval_runs: int, train_runs: int, device: str) -> List[Dict]:
    size = tuple(cfg.eval_spatial_size)
    rows = []
    ev = speed.bench_official(cfg, _OFFICIAL.value, _OFFICIAL_PYTHON.value, host_vars, 1, size, eval_runs, 5, False)
    rows.append({"work": "eval (official)", "dtype": "float32", "batch": 1, "ms": ev["median_ms"],
                 "images_per_s": ev["images_per_s"], "impl": ev["impl"]})
    amp = device == "cuda"
    out = official.run("official_train_step.py", cfg, _OFFICIAL.value, _OFFICIAL_PYTHON.value, host_vars, size,
                       [f"--runs={train_runs}", "--warmup=2", f"--device={device}"] + (["--amp"] if amp else []),
                       arrays=host_batch)
    t = statistics.median(out["times"])
    rows.append({"work": "train (official)", "dtype": "amp" if amp else "float32", "batch": len(host_batch["image"]),
                 "ms": t * 1e3, "images_per_s": len(host_batch["image"]) / t, "impl": str(out["impl"])})
    return rows


def config_rows(name: str, dry: bool, runs: int) -> List[Dict]:
    base = configs.get_config(name)
    if dry:
        base.eval_spatial_size = (320, 320)  # the smallest with 300 anchors (query count) for N
    train_batch = 2 if dry else _TRAIN_BATCH.value
    rows, first = [], None
    for dtype in _DTYPES.value:
        cfg = base.copy_and_resolve_references()
        cfg.compute_dtype = dtype
        row, s, variables, host_batch = train_row(cfg, train_batch, runs)
        rows.append(row)
        print(row, flush=True)
        if first is None:
            first = (cfg, s, variables, host_batch, row["ms"])
        if _FIND_MAX.value and dtype == "bfloat16":
            batch = train_batch
            while True:
                try:
                    big, *_ = train_row(cfg, batch * 2, 3)
                except Exception as e:  # noqa: BLE001 - only running out of memory ends the search
                    if not _is_oom(e):
                        raise
                    break
                batch *= 2
                rows.append({**big, "work": "train (largest batch)"})
                print(rows[-1], flush=True)
    cfg, s, variables, host_batch, step_ms = first
    rows += matcher_rows(cfg, s, variables, host_batch, step_ms, runs)
    host_vars = jax.tree_util.tree_map(np.asarray, variables)
    for dtype in _DTYPES.value:
        for b in (1, 2) if dry else [int(b) for b in _EVAL_BATCHES.value]:
            r = speed.bench_jax(base, host_vars, b, dtype, tuple(base.eval_spatial_size), runs, 2)
            rows.append({"work": "eval", "dtype": dtype, "batch": b, "ms": r["median_ms"],
                         "images_per_s": r["images_per_s"], "tflops_per_s": r["tflops_per_s"]})
            print(rows[-1], flush=True)
    if _OFFICIAL.value:
        device = "cuda" if jax.devices()[0].platform == "gpu" else "cpu"
        rows += official_rows(cfg, host_vars, host_batch, runs, max(2, runs // 4), device)
        ours = {(r["work"], r["batch"]): r for r in rows if r["dtype"] == "float32"}
        for r in rows:
            if r["work"].endswith("(official)"):
                mine = ours.get((r["work"].split(" ")[0], r["batch"]))
                if mine:
                    r["deim_jax_speedup"] = r["ms"] / mine["ms"]
    return [{"config": name, **r} for r in rows]


def markdown(meta: Dict, rows: List[Dict]) -> str:
    cols = ["config", "work", "dtype", "batch", "ms", "images_per_s", "tflops_per_s", "peak_share", "share_of_step",
            "deim_jax_speedup"]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"# Accelerator suite{' (dry run)' if meta['dry_run'] else ''}", "",
             f"{meta['date']}, {meta['device']}; jax {meta['jax']}; measured bf16 peak {meta['peak_tflops']:.3g} TFLOP/s; "
             f"{meta['seconds']:.0f} s", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    impls = sorted({r["impl"] for r in rows if "impl" in r})
    return "\n".join(lines + ([""] + [f"official: {i}" for i in impls] if impls else [])) + "\n"


def main(argv):
    del argv
    t0 = time.perf_counter()
    dry = _DRY_RUN.value
    runs = 2 if dry else _RUNS.value
    for name in _CONFIGS.value:  # bad names fail before anything is measured
        configs.get_config(name)
        if _OFFICIAL.value:
            official.check(_OFFICIAL.value, name)
    peak = measure_peak(1024 if dry else 8192, runs)
    rows = [r for name in _CONFIGS.value for r in config_rows(name, dry, runs)]
    for r in rows:
        if "tflops_per_s" in r:
            r["peak_share"] = r["tflops_per_s"] / peak
    dev = jax.devices()[0]
    meta = {"date": str(datetime.date.today()), "device": f"{len(jax.devices())}x {dev.platform} {dev.device_kind}, "
            f"{os.cpu_count()} CPUs", "jax": jax.__version__, "peak_tflops": peak, "dry_run": dry,
            "seconds": time.perf_counter() - t0}
    os.makedirs(_OUT.value, exist_ok=True)
    stem = os.path.join(_OUT.value, f"accelerator_{dev.platform}{'_dry_run' if dry else ''}")
    with open(stem + ".json", "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    text = markdown(meta, rows)
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    cli.run(main)
