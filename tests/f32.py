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
