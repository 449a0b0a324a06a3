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


# Tolerances. The two runs execute the same math with the batch reductions (BatchNorm statistics,
# the loss normalizer, the gradient all-reduce) split over devices, i.e. float32 sums in another
# order. Reordering a float32 sum of n terms changes it by about log2(n) ulps for the tree
# reductions XLA emits: n <= 8 * 96 * 96 = 73,728 terms per BatchNorm channel, ~17 * 2**-23 = 2e-6
# relative, then carried through the model and the loss (a few more roundings per layer).
# RTOL = 1e-4 is ~50x that estimate and still 1000x below what a missing cross-device reduction
# gives (a per-device batch statistic differs from the global one by O(1) relative).
RTOL = 1e-4
F32_ULP = float(np.finfo(np.float32).eps)


def _compare(a, b):
    """``a`` (multi-device) vs ``b`` (one device): loss and gradient norm, batch statistics, parameters."""
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=RTOL)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=RTOL)
    keys = [k for k in a.files if k not in ("loss", "grad_norm", "devices", "lr0")]
    assert keys and sorted(keys) == sorted(k for k in b.files if k not in ("loss", "grad_norm", "devices", "lr0"))
    # Batch statistics (running mean/var after one momentum update): relative noise of the reduced
    # statistic, plus an absolute floor for entries that are ~0 (means of centred features).
    stats = [k for k in keys if "batch_stats" in k]
    assert stats
    for k in stats:
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        np.testing.assert_allclose(x, y, rtol=RTOL, atol=RTOL * float(np.abs(y).max()), err_msg=k)
    # Parameters after one AdamW step from the same init: p1 = p0 (1 - lr wd) - lr * g / (|g| + eps),
    # the Adam factor lies in (-1, 1), so gradient noise moves a parameter by at most 2 * lr0
    # (lr0 = the first step's largest group lr), on top of the rounding of p itself (a few ulps).
    lr0 = float(b["lr0"])
    for k in keys:
        if k in stats:
            continue
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        bound = 2 * lr0 + 4 * F32_ULP * np.abs(y)
        worst = float(np.max(np.abs(x - y) - bound))
        assert worst <= 0, (k, worst)


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
