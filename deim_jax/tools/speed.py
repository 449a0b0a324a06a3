"""Timing of the eval forward, deim_jax's and the official model's, shared by ``tools.benchmark`` and
the accelerator suite (no flags here, so both can import it)."""

from __future__ import annotations

import statistics
import time
from typing import Dict, List

import numpy as np

from deim_jax.tools import official


def timed_runs(fn, runs: int, warmup: int) -> List[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def summary(times: List[float], batch: int) -> Dict[str, float]:
    median = statistics.median(times)
    return {"median_ms": median * 1e3, "p90_ms": float(np.percentile(times, 90)) * 1e3, "images_per_s": batch / median}


def flops_of(compiled) -> float:
    """FLOPs of a compiled jax program by XLA's cost analysis (nan where the backend gives none)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", float("nan")))


def bench_jax(cfg, variables, batch: int, dtype: str, size, runs: int, warmup: int) -> Dict:
    """The eval forward of ``cfg`` at ``batch`` x ``size`` in ``dtype``: compile time, latency
    (median, p90), images/s, XLA's FLOPs and TFLOP/s, program and device-peak memory, and the
    outputs (``_out``)."""
    import jax

    from deim_jax import models
    from deim_jax.models import layers
    from deim_jax.train.train_step import make_predict_step

    cfg = cfg.copy_and_resolve_references()
    cfg.compute_dtype = dtype
    cfg.eval_spatial_size = tuple(size)
    step = jax.jit(make_predict_step(models.build(cfg), cfg))
    x = jax.device_put(np.random.default_rng(0).random((batch, size[0], size[1], 3), np.float32))
    variables = jax.device_put(variables)
    t0 = time.perf_counter()
    compiled = step.lower(variables, x).compile()
    compile_s = time.perf_counter() - t0
    with layers.portable_ops():   # XLA's cost analysis does not count custom calls (oneDNN's convs)
        flops = flops_of(jax.jit(make_predict_step(models.build(cfg), cfg)).lower(variables, x).compile())
    mem = compiled.memory_analysis()
    program_bytes = sum(getattr(mem, a, 0) for a in ("temp_size_in_bytes", "argument_size_in_bytes",
                                                      "output_size_in_bytes")) if mem is not None else float("nan")
    times = timed_runs(lambda: jax.block_until_ready(compiled(variables, x)), runs, warmup)
    row = {"impl": "deim_jax", "batch": batch, "dtype": dtype, "compile_s": compile_s, **summary(times, batch),
           "gflops": flops / 1e9, "tflops_per_s": flops / statistics.median(times) / 1e12,
           "program_mib": program_bytes / 2**20}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        row["device_peak_mib"] = stats["peak_bytes_in_use"] / 2**20
    row["_out"] = {k: np.asarray(v) for k, v in compiled(variables, x).items()}
    return row


def bench_official(cfg, tree: str, python: str, variables, batch: int, size, runs: int, warmup: int,
                   deploy: bool) -> Dict:
    """The official model of ``cfg`` with ``variables``, timed by ``official_forward.py`` in ``python``."""
    args = [f"--size={size[0]}", f"--batch={batch}", f"--runs={runs}", f"--warmup={warmup}"]
    out = official.run("official_forward.py", cfg, tree, python, variables, size, args + (["--deploy"] if deploy else []))
    return {"impl": str(out["impl"]), "batch": batch, "dtype": "float32", **summary(list(out["times"]), batch),
            "_out": {"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}}


def top_scores(logits: np.ndarray) -> np.ndarray:
    """[B, Q] best class score per query, sorted: comparable whatever order the queries come in."""
    return np.sort(1 / (1 + np.exp(-np.asarray(logits, np.float64).max(-1))), axis=-1)
