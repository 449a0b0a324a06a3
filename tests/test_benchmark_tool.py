"""``deim_jax.tools.benchmark``: one row per batch and dtype with the measured fields, written as
markdown and JSON; side by side with the official model where an official tree is given."""

import json
import os
import subprocess
import sys

import pytest

from deim_jax import configs
from tests.train_helpers import tiny_dataset

OFFICIAL = os.environ.get("DEIM_OFFICIAL_DIR")
OFFICIAL_PYTHON = os.environ.get("DEIM_OFFICIAL_PYTHON", sys.executable)


def _run(*args):
    r = subprocess.run([sys.executable, "-m", "deim_jax.tools.benchmark", *args], capture_output=True, text=True,
                       cwd=configs.REPO_ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_benchmark_writes_every_setting(tmp_path):
    root = tiny_dataset(str(tmp_path / "data"))
    _run(f"--config=tests/tiny_config.py:{root}", "--batch=1,2", "--dtype=float32,bfloat16", "--deploy", "--runs=3",
         "--warmup=1", "--peak_tflops=1", f"--out={tmp_path}/out")
    result = json.load(open(tmp_path / "out" / "benchmark_demo_cpu_deploy.json"))
    assert result["deploy"] and result["size"] == [96, 96] and result["runs"] == 3
    rows = result["rows"]
    assert [(r["batch"], r["dtype"]) for r in rows] == [(1, "float32"), (1, "bfloat16"), (2, "float32"), (2, "bfloat16")]
    for r in rows:
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] and r["gflops"] > 0 and r["compile_s"] > 0
        assert r["images_per_s"] == pytest.approx(r["batch"] * 1e3 / r["median_ms"])
        assert r["peak_share"] == pytest.approx(r["tflops_per_s"])
    table = open(tmp_path / "out" / "benchmark_demo_cpu_deploy.md").read()
    assert table.count("| deim_jax |") == 4 and "deploy fusion on" in table


@pytest.mark.skipif(not OFFICIAL, reason="set DEIM_OFFICIAL_DIR (and DEIM_OFFICIAL_PYTHON) to an official DEIM tree")
def test_benchmark_runs_the_official_model_side_by_side(tmp_path):
    _run("--config=dfine_n", "--size=320", "--runs=2", "--warmup=1", f"--official={OFFICIAL}",
         f"--official_python={OFFICIAL_PYTHON}", f"--out={tmp_path}")
    rows = json.load(open(tmp_path / "benchmark_dfine_n_cpu.json"))["rows"]
    assert rows[0]["impl"] == "deim_jax" and rows[1]["impl"].startswith("official PyTorch")
    assert rows[0]["top_score_diff_vs_official"] < 1e-3 and rows[0]["speedup_vs_official"] > 0
