"""Data parallelism: 8 simulated CPU devices give the same loss and update as 1 device (same global batch).

BatchNorm statistics and the loss normalizer are global-batch reductions inside ``jit``
(SyncBN semantics), so only the reduction order differs between the two runs.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.train_helpers import tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(devices, root, out):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "tests.multidevice_step", root, out], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return np.load(out)


def test_eight_devices_equal_one(tmp_path):
    root = tiny_dataset(str(tmp_path / "data"), num_train=8, num_val=4)
    one = _run(1, root, str(tmp_path / "one.npz"))
    eight = _run(8, root, str(tmp_path / "eight.npz"))
    assert int(one["devices"]) == 1 and int(eight["devices"]) == 8
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-5)
    keys = [k for k in one.files if k not in ("loss", "devices")]
    assert keys and sorted(keys) == sorted(k for k in eight.files if k not in ("loss", "devices"))
    worst = max(float(np.max(np.abs(eight[k].astype(np.float64) - one[k]))) for k in keys)
    assert worst < 1e-5, worst
