"""2-D convolutions by oneDNN on CPU, with their gradients (``conv``).

XLA:CPU's convolution is 1.4-2.4x slower than oneDNN's on the backbone's dense convs, and its
weight gradient the most (``benchmarks/conv_forms.py``). ``onednn_conv.cc`` wraps oneDNN's
forward, backward-data and backward-weights primitives as XLA FFI handlers; ``conv`` is a
``jax.custom_vjp`` over them with ``lax.conv_general_dilated``'s meaning (NHWC, HWIO, explicit
padding, groups = C / kernel's input channels, float32) and its results up to float rounding
(tests/test_onednn_conv.py).

``available()`` compiles the handlers on first use (g++ and oneDNN's headers and library, e.g.
Debian's ``libdnnl-dev``; about 4 s) into ``$DEIM_JAX_KERNEL_DIR`` (default
``~/.cache/deim_jax/kernels``, one file per source and jax version), loads and registers them,
and says False, with one log line naming what is missing, where that cannot be done. They are
used on one CPU device only: XLA has no rule to split a custom call over a mesh, so a sharded
program would gather the whole batch on every device (several devices keep XLA's convolutions).
``DEIM_JAX_ONEDNN=0`` turns the kernels off.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from deim_jax.kernels import native

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn_conv.cc")
SWITCH_ENV = "DEIM_JAX_ONEDNN"
_TARGETS = {"forward": "DeimConvForward", "data": "DeimConvBackwardData", "weights": "DeimConvBackwardWeights"}

Padding = Tuple[Tuple[int, int], Tuple[int, int]]


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether the oneDNN convolutions can run here (building them on first use)."""
    return native.enable(SOURCE, {_target(name): symbol for name, symbol in _TARGETS.items()}, SWITCH_ENV,
                         "oneDNN convolutions off, XLA's used instead", ["-ldnnl"],
                         "oneDNN's headers or library not found (install libdnnl-dev)",
                         # OpenMP threads sleep between calls instead of spinning on cores that XLA's
                         # threads need (read when OpenMP starts, so only where nothing started it before)
                         env_defaults={"OMP_WAIT_POLICY": "PASSIVE"})


def _target(name: str) -> str:
    return f"deim_onednn_conv_{name}"


def _call(name: str, out_shape: Sequence[int], a, b, stride: int, padding: Padding):
    return _batchable_call(name, tuple(out_shape), stride, padding)(a, b)


@functools.lru_cache(maxsize=None)
def _batchable_call(name: str, out_shape: Tuple[int, ...], stride: int, padding: Padding):
    """The FFI call ``(a, b) -> out_shape`` for fixed geometry, with a vmap rule: a vmapped
    image-like first operand (x for forward, dy for backward-data) folds into the batch axis;
    any other vmap runs the calls one after another (``lax.map``)."""
    (top, bottom), (left, right) = padding
    attrs = dict(stride=np.int64(stride), pad_top=np.int64(top), pad_bottom=np.int64(bottom),
                 pad_left=np.int64(left), pad_right=np.int64(right))

    @jax.custom_batching.custom_vmap
    def call(a, b):
        return jax.ffi.ffi_call(_target(name), jax.ShapeDtypeStruct(out_shape, jnp.float32))(a, b, **attrs)

    @call.def_vmap
    def _rule(axis_size, in_batched, a, b):
        if name != "weights" and in_batched == [True, False]:
            folded = _batchable_call(name, (axis_size * out_shape[0],) + out_shape[1:], stride, padding)
            y = folded(a.reshape((-1,) + a.shape[2:]), b)
            return y.reshape((axis_size,) + out_shape), True
        a, b = (v if batched else jnp.broadcast_to(v, (axis_size,) + v.shape) for v, batched in zip((a, b), in_batched))
        return jax.lax.map(lambda ab: call(*ab), (a, b)), True

    return call


def output_shape(x_shape, kernel_shape, stride: int, padding: Padding):
    b, h, w, _ = x_shape
    kh, kw, _, out = kernel_shape
    (top, bottom), (left, right) = padding
    return b, (h + top + bottom - kh) // stride + 1, (w + left + right - kw) // stride + 1, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """x [B, H, W, C] float32, kernel [kh, kw, C / groups, O] float32 -> [B, H', W', O];
    ``padding`` ((top, bottom), (left, right)). Call only where ``available()``."""
    return _call("forward", output_shape(x.shape, kernel.shape, stride, padding), x, kernel, stride, padding)


def _conv_fwd(x, kernel, stride, padding):
    return conv(x, kernel, stride, padding), (x, kernel)


def _conv_bwd(stride, padding, residuals, dy):
    x, kernel = residuals
    dx = _call("data", x.shape, dy, kernel, stride, padding)
    dk = _call("weights", kernel.shape, x, dy, stride, padding)
    return dx, dk


conv.defvjp(_conv_fwd, _conv_bwd)
