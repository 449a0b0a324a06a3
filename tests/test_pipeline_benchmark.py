"""``benchmarks/input_pipeline.py``: a row per pipeline and core count with positive rates, side by
side with the official DataLoader (same files, same cores) when an official tree is given."""

import os
import subprocess
import sys

from deim_jax import configs

OFFICIAL = os.environ.get("DEIM_OFFICIAL_DIR")
OFFICIAL_PYTHON = os.environ.get("DEIM_OFFICIAL_PYTHON", sys.executable)


def test_input_pipeline_benchmark_rows(tmp_path):
    out = tmp_path / "pipeline.md"
    args = ["--cores=1", "--batches=1", "--batch=2", "--rounds=2", f"--results={out}"]
    if OFFICIAL:
        args += [f"--official={OFFICIAL}", f"--official_python={OFFICIAL_PYTHON}"]
    r = subprocess.run([sys.executable, "benchmarks/input_pipeline.py", *args], capture_output=True, text=True,
                       cwd=configs.REPO_ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.strip("| ").split(" | ") for line in open(out).read().splitlines() if line.startswith("| 20")]
    assert [row[2] for row in rows] == ["eval path (decode, resize 640)", "Mosaic phase", "no-Mosaic phase",
                                        "no-aug phase"]
    for row in rows:
        assert row[3] == "1" and float(row[4]) > 0
        if OFFICIAL and row[2] != "eval path (decode, resize 640)":
            assert float(row[5]) > 0 and row[6].endswith("x")
