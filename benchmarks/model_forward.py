"""Eval-mode forward time of DEIM-D-FINE models at 640x640 (jit-compiled, batch 1, median of repeats).

    python benchmarks/model_forward.py [--configs dfine_n,dfine_l] [--repeats 10] [--out benchmarks/results/model_forward_<platform>.md]

The official PyTorch forward time measured on the machine that made the parity fixtures
(summary.json ``eval_forward_time``, 2 threads) is printed beside ours as a reference when
the fixture folder is available; it was measured on another run, so the ratio is indicative only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from deim_jax import configs, models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY = os.environ.get("DEIM_PARITY_DIR", os.path.join(REPO, "..", "shared", "parity"))


def time_forward(name: str, repeats: int, batch: int = 1):
    cfg = configs.get_config(name)
    model = models.build(cfg)
    variables = models.init(model, cfg, jax.random.PRNGKey(0))
    h, w = cfg.eval_spatial_size
    x = jnp.asarray(np.random.default_rng(0).random((batch, h, w, 3), np.float32))
    fwd = jax.jit(lambda v, im: model.apply(v, im, train=False))
    t0 = time.perf_counter()
    jax.block_until_ready(fwd(variables, x))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fwd(variables, x))
        times.append(time.perf_counter() - t0)
    return compile_s, statistics.median(times), times


def torch_reference(name: str):
    size = name.split("_")[1]
    path = os.path.join(PARITY, size, "summary.json")
    if not os.path.isfile(path):
        return None
    return json.load(open(path)).get("eval_forward_time", {}).get("batch1_median_s")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--configs", default="dfine_n,dfine_l")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    dev = jax.devices()[0]
    header = (f"# Eval forward, 640x640, batch 1 ({datetime.date.today()}, {dev.platform}: {dev.device_kind}, "
              f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, jax {jax.__version__})\n\n"
              "| config | compile s | median ms | min ms | official PyTorch ms (fixture run) |\n|---|---|---|---|---|")
    rows = [header]
    print(header)
    for name in a.configs.split(","):
        compile_s, med, times = time_forward(name, a.repeats)
        ref = torch_reference(name)
        row = f"| {name} | {compile_s:.1f} | {med * 1e3:.1f} | {min(times) * 1e3:.1f} | {'-' if ref is None else f'{ref * 1e3:.1f}'} |"
        print(row, flush=True)
        rows.append(row)
    out = a.out or os.path.join(REPO, "benchmarks", "results", f"model_forward_{dev.platform}.md")
    with open(out, "w") as f:
        f.write("\n".join(rows) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
