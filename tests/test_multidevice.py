"""Data parallelism: 8 simulated CPU devices, and 2 processes on localhost, give the same loss and update
as 1 device for the same global batch.

BatchNorm statistics and the loss normalizer are global-batch reductions inside ``jit``
(SyncBN semantics), so only the reduction order differs between the two runs.
"""

import os
import subprocess
import sys

import numpy as np

from tests.train_helpers import tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices, **extra):
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
                JAX_DISABLE_MOST_OPTIMIZATIONS="1", **extra)


def _run(devices, root, out):
    r = subprocess.run([sys.executable, "-m", "tests.multidevice_step", root, out], cwd=REPO, env=_env(devices),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return np.load(out)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compare(a, b):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    keys = [k for k in a.files if k not in ("loss", "devices")]
    assert keys and sorted(keys) == sorted(k for k in b.files if k not in ("loss", "devices"))
    worst = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in keys)
    assert worst < 1e-5, worst


def test_eight_devices_equal_one(tmp_path):
    root = tiny_dataset(str(tmp_path / "data"), num_train=8, num_val=4)
    one = _run(1, root, str(tmp_path / "one.npz"))
    eight = _run(8, root, str(tmp_path / "eight.npz"))
    assert int(one["devices"]) == 1 and int(eight["devices"]) == 8
    _compare(eight, one)
    # Two processes on localhost (jax.distributed, gloo collectives), one device each.
    port = _free_port()
    out = str(tmp_path / "two.npz")
    procs = [subprocess.Popen([sys.executable, "-m", "tests.multidevice_step", root, out], cwd=REPO,
                              env=_env(1, DEIM_COORDINATOR=f"127.0.0.1:{port}", DEIM_NUM_PROCESSES="2",
                                       DEIM_PROCESS_ID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(e[-3000:] for e in errs)
    two = np.load(out)
    assert int(two["devices"]) == 2
    _compare(two, one)
