"""What the experiment scripts share: running a trainer into a run folder, reading deim_jax's
per-epoch AP, and drawing AP curves with a seed band per arm."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def deim_jax_curve(run_dir: str):
    """[(epoch, AP, AP50)] from deim_jax's ``eval.jsonl``."""
    path = os.path.join(run_dir, "eval.jsonl")
    if not os.path.isfile(path):
        return []
    rows = [json.loads(line) for line in open(path) if line.strip()]
    return [(int(r["epoch"]), float(r["AP"]), float(r["AP50"])) for r in rows]


def run_logged(cmd, run_dir: str, env=None) -> None:
    """Run ``cmd`` from the repository root, its output appended to ``run_dir/stdout.log`` and its wall
    time to ``run_dir/wall_s.txt``; exit with a message naming the log if it fails."""
    os.makedirs(run_dir, exist_ok=True)
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    with open(os.path.join(run_dir, "stdout.log"), "a") as log:
        done = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {done.returncode}); see {run_dir}/stdout.log")
    with open(os.path.join(run_dir, "wall_s.txt"), "a") as f:
        f.write(f"{time.time() - t0:.0f}\n")


def plot_bands(results, colors, path: str, title: str, ylabel: str, divider=None) -> bool:
    """AP per epoch, one line (seed mean) and band (seed range) per arm of ``results``
    ({arm: {seed: {'epochs', 'AP'}}}) in the order of ``colors`` ({arm: colour}); a dotted line at
    ``divider`` (an epoch) if given. False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (the plots extra): no curves.png")
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for arm, color in colors.items():
        if arm not in results:
            continue
        runs = list(results[arm].values())
        epochs = runs[0]["epochs"]
        aps = list(zip(*(r["AP"] for r in runs)))
        seeds = f"{len(runs)} seed{'s' if len(runs) > 1 else ''}"
        ax.plot(epochs, [statistics.mean(v) for v in aps], color=color, label=f"{arm} ({seeds}: mean, range)")
        ax.fill_between(epochs, [min(v) for v in aps], [max(v) for v in aps], color=color, alpha=0.2)
    if divider is not None:
        ax.axvline(divider, color="k", lw=0.8, ls=":")
    ax.set_xlabel("epoch" if divider is None else "epoch (stage 2 after the dotted line)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    return True
