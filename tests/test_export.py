"""Exported detectors (StableHLO, TF SavedModel, ONNX) reloaded in their own runtime compute what
the jitted model computes: scores within 1e-4, boxes within 1e-2 px, the same labels."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from deim_jax import configs, convert, models
from deim_jax.deploy import exporters
from deim_jax.deploy.detector import make_detect
from deim_jax.models import fusion
from tests.parity_utils import synth_state_dict
from tests.train_helpers import tiny_config

SCORE_TOL, BOX_TOL_PX = 1e-4, 1e-2


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_config("/nonexistent")  # the model only: no data is read
    return cfg, jax.tree_util.tree_map(np.asarray, models.init(models.build(cfg), cfg, jax.random.PRNGKey(0)))


def _inputs(n, size, dtype, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((n, size, size, 3), np.float32)
    if dtype == "uint8":
        images = (images * 255).astype(np.uint8)
    return images, rng.uniform(100, 1000, (n, 2)).astype(np.float32)


def _assert_same(cfg, variables, path, fmt, n, size, dtype):
    images, sizes = _inputs(n, size, dtype, seed=n)
    want = {k: np.asarray(v) for k, v in jax.jit(make_detect(cfg, size=(size, size)))(variables, images, sizes).items()}
    got = exporters.run(path, fmt, images, sizes)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    err = exporters.compare(got, want)
    assert err["compared"] > 0.8, err  # most scores are distinct, so most detections are compared
    assert err["scores"] <= SCORE_TOL and err["boxes"] <= BOX_TOL_PX and err["labels"] == 0, err
    return err


@pytest.mark.parametrize("fmt,batch,size,dtype", [
    ("stablehlo", None, 96, "float32"),   # dynamic batch
    ("stablehlo", 2, 128, "uint8"),       # another size than the training size
    ("savedmodel", 2, 96, "float32"),
    ("savedmodel", 1, 128, "uint8"),
    ("onnx", None, 128, "uint8"),
    ("onnx", 2, 96, "float32"),
])
def test_tiny_artifact_equals_the_model(tiny, tmp_path, fmt, batch, size, dtype):
    cfg, variables = tiny
    path = str(tmp_path / ("model" if fmt == "savedmodel" else f"model.{fmt}"))
    exporters.export(cfg, variables, fmt, path, size=(size, size), batch=batch, input_dtype=dtype)
    for n in ([1, 3] if batch is None else [batch]):
        _assert_same(cfg, variables, path, fmt, n, size, dtype)


@pytest.mark.parametrize("fmt", ["stablehlo", "onnx"])
def test_dfine_n_artifact_equals_the_model(tmp_path, fmt):
    cfg = configs.get_config("dfine_n")
    variables = convert.from_torch_state_dict(synth_state_dict("n"), cfg)  # the parity fixtures' weights
    path = str(tmp_path / f"n.{fmt}")
    exporters.export(cfg, fusion.fold(variables), fmt, path, batch=None)  # deploy weights, checked against the trained
    _assert_same(cfg, variables, path, fmt, 2, 640, "float32")


def test_untied_leaves_out_equal_scores():
    scores = np.array([[0.9, 0.5, 0.5, 0.1]])
    assert exporters.untied(scores).tolist() == [[True, False, False, True]]


def test_export_command_line_checks_its_artifact(tmp_path):
    from deim_jax.train import checkpoints
    from tests.train_helpers import tiny_dataset

    root = tiny_dataset(str(tmp_path / "data"))
    cfg = tiny_config(root)
    variables = jax.tree_util.tree_map(np.asarray, models.init(models.build(cfg), cfg, jax.random.PRNGKey(1)))
    checkpoints.save_weights(str(tmp_path / "ckpt"), variables, config=cfg)
    base = [sys.executable, "-m", "deim_jax.export", f"--config=tests/tiny_config.py:{root}",
            f"--checkpoint={tmp_path}/ckpt"]
    r = subprocess.run(base + ["--format=stablehlo", f"--out={tmp_path}/m.stablehlo", "--size=128", "--batch=dynamic"],
                       capture_output=True, text=True, cwd=configs.REPO_ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wrote" in r.stdout and "checked in its runtime" in r.stdout and os.path.isfile(f"{tmp_path}/m.stablehlo")
    r = subprocess.run(base + ["--format=savedmodel", f"--out={tmp_path}/sm", "--batch=dynamic"],
                       capture_output=True, text=True, cwd=configs.REPO_ROOT, timeout=600)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
        "error: --batch=dynamic: a SavedModel needs a fixed batch")
