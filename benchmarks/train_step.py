"""Images/s of the jitted DEIM train step (model -> loss -> grads -> AdamW -> EMA) at 640x640.

    python benchmarks/train_step.py [--configs dfine_n,dfine_l] [--dtypes float32,bfloat16] [--batch 2] [--repeats 5]

Synthetic batch (random image, 20 random boxes per image, max_boxes 100), denoising on, the
matcher selected by ``loss.matcher.method`` ('auto': scipy callback on CPU, on-device solver
on GPU/TPU). Results go to ``benchmarks/results/train_step_<platform>.md`` with date and device.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import jax
import numpy as np

from deim_jax import configs, losses, models
from deim_jax.train import optimizer, sharding
from deim_jax.train.train_step import create_state, make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_batch(batch, size, max_boxes=100, n_boxes=20, seed=0):
    rng = np.random.default_rng(seed)
    cxcy = rng.uniform(0.2, 0.8, (batch, max_boxes, 2))
    wh = rng.uniform(0.05, 0.3, (batch, max_boxes, 2))
    mask = np.zeros((batch, max_boxes), bool)
    mask[:, :n_boxes] = True
    return {"image": rng.random((batch, size, size, 3), np.float32),
            "boxes": np.concatenate([cxcy, wh], -1).astype(np.float32),
            "labels": rng.integers(0, 80, (batch, max_boxes)).astype(np.int32), "mask": mask}


def time_train_step(name, dtype, batch, repeats):
    cfg = configs.get_config(name)
    cfg.compute_dtype = dtype
    mesh = sharding.make_mesh()
    model, criterion = models.build(cfg), losses.build(cfg, mesh)
    variables = jax.device_get(models.init(model, cfg, jax.random.PRNGKey(0)))
    tx = optimizer.build_optimizer(cfg, variables["params"], iters_per_epoch=1000, epochs=int(cfg.epochs))
    state = sharding.replicate(create_state(variables, tx, jax.random.PRNGKey(1)), mesh)
    repl, shard = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    step = jax.jit(make_train_step(model, criterion, tx, cfg), in_shardings=(repl, shard),
                   out_shardings=(repl, repl), donate_argnums=(0,))
    data = sharding.global_batch(synthetic_batch(batch, cfg.eval_spatial_size[0]), mesh)
    t0 = time.perf_counter()
    state, m = step(state, data)
    jax.block_until_ready(m["loss"])
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, m = step(state, data)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t0)
    return compile_s, statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--configs", default="dfine_n,dfine_l")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    dev = jax.devices()[0]
    lines = [f"# Train step, 640x640 ({datetime.date.today()}, {len(jax.devices())}x {dev.platform}: {dev.device_kind}, "
             f"{os.cpu_count()} CPUs, {platform.machine()}, jax {jax.__version__}, batch {a.batch})", "",
             "| config | compute dtype | compile s | median s/step | images/s |", "|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for name in a.configs.split(","):
        for dtype in a.dtypes.split(","):
            c, t = time_train_step(name, dtype, a.batch, a.repeats)
            row = f"| {name} | {dtype} | {c:.1f} | {t:.3f} | {a.batch / t:.2f} |"
            print(row, flush=True)
            lines.append(row)
    out = a.out or os.path.join(REPO, "benchmarks", "results", f"train_step_{dev.platform}.md")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
