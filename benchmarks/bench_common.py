"""What the config-driven benchmarks share: the command line (``--config=NAME`` plus overrides,
as ``deim_jax.main``) and appending a row to a markdown results table."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from typing import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def device_description() -> str:
    import jax

    dev = jax.devices()[0]
    return (f"{datetime.date.today()}, {len(jax.devices())}x {dev.platform}: {dev.device_kind}, {os.cpu_count()} CPUs, "
            f"{platform.machine()}, jax {jax.__version__}")


def host_description() -> str:
    """Date, CPU model and core count of this machine (for benchmarks that do not use jax)."""
    model = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        model = names[0] if names else model
    return f"{datetime.date.today()}, {model}, {os.cpu_count()} CPUs"


def code_version() -> str:
    """Short commit of this checkout, with ``+changes`` when tracked files (results aside) differ from it."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results") else "")


def append_row(path: str, title: str, columns: Sequence[str], row: Sequence[str]) -> None:
    """Add ``row`` to the last table of ``path``; when that table has other columns (or there is
    none) a new table headed by ``title`` is started below what the file holds."""
    header = "| " + " | ".join(columns) + " |"
    lines = open(path).read().splitlines() if os.path.isfile(path) else []
    tables = [i for i, line in enumerate(lines) if line.startswith("| ") and i + 1 < len(lines)
              and lines[i + 1].startswith("|---")]
    if not tables or lines[tables[-1]] != header:
        lines += ([""] if lines else []) + [title, "", header, "|" + "---|" * len(columns)]
    lines.append("| " + " | ".join(row) + " |")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(lines[-1])
    print(f"wrote {path}")


def synthetic_batch(batch, size, max_boxes=100, n_boxes=20, seed=0):
    """A train batch of random [batch, size, size, 3] images with ``n_boxes`` random boxes each
    (normalized cxcywh, padded to ``max_boxes``), as the input pipeline gives it."""
    import numpy as np

    rng = np.random.default_rng(seed)
    cxcy = rng.uniform(0.2, 0.8, (batch, max_boxes, 2))
    wh = rng.uniform(0.05, 0.3, (batch, max_boxes, 2))
    mask = np.zeros((batch, max_boxes), bool)
    mask[:, :n_boxes] = True
    return {"image": rng.random((batch, size, size, 3), np.float32),
            "boxes": np.concatenate([cxcy, wh], -1).astype(np.float32),
            "labels": rng.integers(0, 80, (batch, max_boxes)).astype(np.int32), "mask": mask}
