"""Data parallelism: 8 simulated CPU devices, and 2 processes on localhost, give the same loss and update
as 1 device for the same global batch.

BatchNorm statistics and the loss normalizer are global-batch reductions inside ``jit``
(SyncBN semantics), so only the reduction order differs between the two runs.
"""

import os
import subprocess
import sys

import numpy as np

from tests.train_helpers import free_port, tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices, **extra):
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
                JAX_DISABLE_MOST_OPTIMIZATIONS="1", **extra)


def _run(devices, root, out):
    r = subprocess.run([sys.executable, "-m", "tests.multidevice_step", root, out], cwd=REPO, env=_env(devices),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return np.load(out)



# Tolerances. The runs execute the same math with the batch reductions (BatchNorm statistics, the
# loss normalizer, the gradient all-reduce) split over devices: float32 sums in another order.
# Reordering a float32 sum of n terms moves it by about log2(n) ulps for XLA's tree reductions:
# n <= 8 * 96 * 96 = 73,728 terms per BatchNorm channel -> ~17 * 2**-23 = 2e-6 relative.
# Measured on the 2-core x86 dev machine (8 devices vs 1): loss 1.3e-7 relative; grad norm 1.9e-4;
# batch statistics <= 3e-7 absolute; parameters <= 3.9e-6 absolute (2 * lr0 = 4e-6, see below).
# Each tolerance is ~10x the noise; a real sharding bug (another slice of the batch, unsynchronised
# BatchNorm statistics) changes the loss and the statistics by O(1e-2) relative or more.
LOSS_RTOL = 1e-5  # ~5x the log2(n)-ulp estimate, 75x the measured 1.3e-7
# The gradient is noisier than the loss: near-ties in the Hungarian cost can swap a matched pair
# (equal loss, another gradient direction) and gradient entries near zero are pure rounding noise
# (the parameter check below sees their sign flip); 2e-3 is ~10x the measured 1.9e-4.
GRAD_NORM_RTOL = 2e-3
# Running BatchNorm statistics after one momentum update: relative noise of the reduced statistic,
# plus an absolute floor for means of centred features, which are themselves rounding noise:
# features are O(1), so a mean over n terms carries ~2e-6 absolute noise, times momentum 0.1.
STATS_RTOL, STATS_ATOL = 1e-4, 1e-6
F32_ULP = float(np.finfo(np.float32).eps)
SCALARS = ("loss", "grad_norm", "devices", "lr0")


def _compare(a, b):
    """``a`` (multi-device) vs ``b`` (one device): loss and gradient norm, batch statistics, parameters."""
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=GRAD_NORM_RTOL)
    keys = [k for k in a.files if k not in SCALARS]
    assert keys and sorted(keys) == sorted(k for k in b.files if k not in SCALARS)
    stats = [k for k in keys if "batch_stats" in k]
    assert stats
    for k in stats:
        np.testing.assert_allclose(a[k].astype(np.float64), b[k], rtol=STATS_RTOL, atol=STATS_ATOL, err_msg=k)
    # Parameters after one AdamW step from the same init: p1 = p0 (1 - lr wd) - lr * g / (|g| + eps).
    # The Adam factor lies in (-1, 1), so gradient noise moves a parameter by less than 2 * lr0
    # (lr0 = the first step's largest group lr), on top of a few ulps of rounding of p itself.
    lr0 = float(b["lr0"])
    for k in keys:
        if k not in stats:
            x, y = a[k].astype(np.float64), b[k].astype(np.float64)
            excess = float(np.max(np.abs(x - y) - (2 * lr0 + 4 * F32_ULP * np.abs(y))))
            assert excess <= 0, (k, excess)


def test_eight_devices_equal_one(tmp_path):
    root = tiny_dataset(str(tmp_path / "data"), num_train=8, num_val=4)
    one = _run(1, root, str(tmp_path / "one.npz"))
    eight = _run(8, root, str(tmp_path / "eight.npz"))
    assert int(one["devices"]) == 1 and int(eight["devices"]) == 8
    _compare(eight, one)
    # Two processes on localhost (jax.distributed, gloo collectives), one device each.
    port = free_port()
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
