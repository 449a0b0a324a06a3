"""Tolerances for comparing float32 results of two separately compiled programs, or a program and
an independent reference implementation.

Two programs that compute the same function in float32 agree only up to rounding: XLA may fuse,
reorder and reassociate sums differently for other shapes, flags or CPUs. The noise is relative
to the magnitude of the values: a few ulps (float32 eps = 1.2e-7) for a single kernel, about 1e-5
of the magnitude after a stack of layers (attention, layer norms, several decoder layers). A
tolerance here is ``rtol * max|desired|`` (absolute, at the scale of the whole tensor), so small
entries of a large tensor are not held to a relative bound they cannot meet.
"""

import numpy as np

RTOL_DEEP = 1e-5  # whole networks / several layers
RTOL_OP = 1e-6  # one kernel or a handful of roundings (sampler, pooling, box algebra)


def assert_f32_close(actual, desired, rtol: float = RTOL_DEEP, err_msg: str = ""):
    """``|actual - desired| <= rtol * max|desired|`` elementwise (see the module docstring)."""
    actual = np.asarray(actual, np.float64)
    desired = np.asarray(desired, np.float64)
    scale = float(np.max(np.abs(desired))) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=0, atol=rtol * scale, err_msg=err_msg)


def align(a, idx):
    """Rows of ``a`` [B, Q, ...] sorted by the query indices ``idx`` [B, Q] (top-k order differs)."""
    p = np.argsort(idx, axis=1, kind="stable")
    return np.stack([a[b][p[b]] for b in range(a.shape[0])])


def check_max_abs(label, mine, ref, tol, idx=None):
    """``max|mine - ref| <= tol`` (after aligning both by their query indices ``idx = (mine, ref)``)."""
    mine = np.asarray(mine)
    if idx is not None:
        mine, ref = align(mine, idx[0]), align(ref, idx[1])
    assert mine.shape == ref.shape, label
    err = float(np.abs(mine - ref).max())
    assert err <= tol, f"{label}: max abs diff {err} > {tol}"


def fixture_dn_group(t):
    """The official denoising group stored in a fixture's ``train.npz`` (``t``), as the decoder takes it."""
    import jax.numpy as jnp

    n_dn = t["dn/dn_group/input_query_class"].shape[1]
    return {
        "query_class": jnp.asarray(t["dn/dn_group/input_query_class"]),
        "query_bbox_unact": jnp.asarray(t["dn/dn_group/input_query_bbox_unact"]),
        "attn_mask": jnp.asarray(t["dn/dn_group/attn_mask"]),
        "num_group": jnp.int32(t["dn/dn_group/dn_meta/dn_num_group"]),
        "max_gt": jnp.int32(3),
        "valid": jnp.ones((n_dn,), bool),
    }
