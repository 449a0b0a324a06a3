"""Benchmark: on-device exact matcher vs the scipy host callback, DEIM workload.

One train step's matching = cost [outputs=8, batch=8, queries=300, max_boxes] with
10 / 50 / 200 real targets per image (the rest padding), DETR-like costs from
``match_cost`` on random predictions.  Two tables: ``assign`` alone on a given cost,
and ``match_cost`` + ``assign`` in one jit (the cost is computed on device in both
cases; the scipy path then copies it to the host).  Everything is jitted; inputs live
on the default device; each timing is the median over repeats (the two methods are
interleaved so that load from other processes hits both alike).

    python benchmarks/matcher.py [--repeats=15] [--max_boxes=300] [--out=benchmarks/results/matcher_cpu.md]

(absl flags like the other commands; it takes no ``--config``: the workload is the matcher alone.)
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import subprocess
import time

import bench_common  # first: puts the repository on sys.path (run as python benchmarks/...)
import jax
import numpy as np
from absl import app, flags

from deim_jax.losses import matcher

_REPEATS = flags.DEFINE_integer("repeats", 15, "Timed repeats per method.")
_OUTPUTS = flags.DEFINE_integer("outputs", 8, "Decoder outputs matched per step.")
_BATCH = flags.DEFINE_integer("batch", 8, "Images per batch.")
_QUERIES = flags.DEFINE_integer("queries", 300, "Queries per image.")
_MAX_BOXES = flags.DEFINE_integer("max_boxes", 300, "Padded targets per image.")
_TARGETS = flags.DEFINE_list("targets", ["10", "50", "200"], "Real targets per image, one table row each.")
_OUT = flags.DEFINE_string("out", os.path.join(bench_common.REPO, "benchmarks", "results", "matcher_cpu.md"),
                           "Results file ('' = none).")


def _cpu_info() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = [l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")]
        return f"{name[0] if name else platform.processor()}, {os.cpu_count()} visible cores"
    except Exception:  # pragma: no cover
        return f"{platform.processor()}, {os.cpu_count()} visible cores"


def make_inputs(rng, outputs, batch, queries, max_boxes, n_targets, num_classes=80):
    """Random DEIM-like predictions for all outputs and padded targets (first n_targets valid)."""
    logits = rng.normal(size=(outputs, batch, queries, num_classes)).astype(np.float32) * 2 - 3
    pb = np.concatenate([rng.random((outputs, batch, queries, 2)),
                         0.02 + 0.4 * rng.random((outputs, batch, queries, 2))], -1).astype(np.float32)
    labels = rng.integers(0, num_classes, size=(1, batch, max_boxes)).astype(np.int32)
    tb = np.concatenate([rng.random((1, batch, max_boxes, 2)),
                         0.02 + 0.4 * rng.random((1, batch, max_boxes, 2))], -1).astype(np.float32)
    mask = np.broadcast_to(np.arange(max_boxes) < n_targets, (outputs, batch, max_boxes))
    return [jax.device_put(x) for x in (logits, pb, labels, tb, mask)]


def _time(fns, args, repeats):
    """Median wall time (ms) of each jitted fn, interleaved; also returns the outputs."""
    outs = {m: jax.block_until_ready(f(*args)) for m, f in fns.items()}  # compile + warm up
    times = {m: [] for m in fns}
    for _ in range(repeats):
        for m, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            times[m].append(time.perf_counter() - t0)
    return {m: 1e3 * float(np.median(t)) for m, t in times.items()}, outs


def _table(title, rows):
    return "\n".join([
        title, "",
        "| targets/image | device solver (ms) | scipy callback (ms) | device / scipy |",
        "|---:|---:|---:|---:|",
    ] + [f"| {n} | {d:.2f} | {s:.2f} | {r:.2f}x |" for n, d, s, r in rows])


@dataclasses.dataclass
class _Args:
    repeats: int
    outputs: int
    batch: int
    queries: int
    max_boxes: int
    targets: list
    out: str


def main(argv):
    del argv
    args = _Args(repeats=_REPEATS.value, outputs=_OUTPUTS.value, batch=_BATCH.value, queries=_QUERIES.value,
                 max_boxes=_MAX_BOXES.value, targets=[int(t) for t in _TARGETS.value], out=_OUT.value)
    methods = ("device", "scipy")
    solve = {m: jax.jit(lambda c, k, m=m: matcher.assign(c, k, method=m)) for m in methods}
    step = {m: jax.jit(lambda lg, pb, lb, tb, k, m=m: matcher.assign(
        matcher.match_cost(lg, pb, lb, tb), k, method=m)) for m in methods}
    cost_fn = jax.jit(matcher.match_cost)
    rng = np.random.default_rng(0)
    rows_solve, rows_step = [], []
    for n in args.targets:
        lg, pb, lb, tb, mask = make_inputs(rng, args.outputs, args.batch, args.queries, args.max_boxes, n)
        cost = jax.block_until_ready(cost_fn(lg, pb, lb, tb))
        med, outs = _time(solve, (cost, mask), args.repeats)
        tot = {m: float(np.asarray(matcher.matched_cost(cost, o)).sum()) for m, o in outs.items()}
        assert abs(tot["device"] - tot["scipy"]) <= 1e-5 * abs(tot["scipy"]) + 1e-3, tot
        rows_solve.append((n, med["device"], med["scipy"], med["device"] / med["scipy"]))
        med2, _ = _time(step, (lg, pb, lb, tb, mask), args.repeats)
        rows_step.append((n, med2["device"], med2["scipy"], med2["device"] / med2["scipy"]))
        print(f"targets={n}: assign device {med['device']:.2f} ms, scipy {med['scipy']:.2f} ms; "
              f"match_cost+assign device {med2['device']:.2f} ms, scipy {med2['scipy']:.2f} ms", flush=True)

    shape = f"{args.outputs} outputs x batch {args.batch} x {args.queries} queries x max_boxes {args.max_boxes}"
    table = (_table(f"`assign` only, cost given ({shape}); jitted, median of {args.repeats} interleaved repeats.",
                    rows_solve) + "\n\n" +
             _table("`match_cost` + `assign` in one jit (what a train step does); same shapes.", rows_step))
    print(table)
    try:
        load = "load average %.1f %.1f %.1f" % os.getloadavg()
    except OSError:  # pragma: no cover
        load = "load average n/a"
    header = (f"# Matcher benchmark ({jax.default_backend()} backend)\n\n"
              f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}\n"
              f"- machine: {_cpu_info()}; {load} at the end of the run; jax {jax.__version__}; "
              f"devices {jax.devices()}\n"
              f"- command: `python benchmarks/matcher.py` (default method on this backend: "
              f"`{matcher._resolve('auto')}`)\n\n")
    if args.out:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(header + table + "\n")


if __name__ == "__main__":
    app.run(main)
