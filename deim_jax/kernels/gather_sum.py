"""Weighted sums of gathered rows by a C++ kernel on CPU (``weighted_rows``), with their gradients.

``weighted_rows(table, rows, weights)[n] = sum_k weights[n, k] * table[rows[n, k]]`` is the inner
loop of deformable attention's sampling. XLA:CPU stores the [N, K, C] gathered taps and transposes
them for a batched product (about 40 ms a decoder layer of D-FINE L's train step, forward); the
handlers in ``gather_sum.cc`` read each tap once and keep nothing. Built on first use like the
oneDNN convolutions (``kernels.native``, needs only g++), used on one CPU device only (a custom
call cannot be split over a mesh); ``DEIM_JAX_NATIVE_SAMPLING=0`` turns it off.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from deim_jax.kernels import native

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gather_sum.cc")
SWITCH_ENV = "DEIM_JAX_NATIVE_SAMPLING"
_TARGETS = {"deim_gather_sum_forward": "DeimGatherSumForward",
            "deim_gather_sum_weights_grad": "DeimGatherSumWeightsGrad",
            "deim_gather_sum_table_grad": "DeimGatherSumTableGrad"}


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether the kernel can run here (building it on first use)."""
    return native.enable(SOURCE, _TARGETS, SWITCH_ENV, "native deformable sampling off, XLA's gather used instead")


def _ffi(target: str, out_shape, *operands):
    """One FFI call; under vmap, one call per item (``lax.map``)."""

    @jax.custom_batching.custom_vmap
    def call(*ops):
        return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(out_shape, jnp.float32))(*ops)

    @call.def_vmap
    def _rule(axis_size, in_batched, *ops):
        ops = tuple(v if b else jnp.broadcast_to(v, (axis_size,) + v.shape) for v, b in zip(ops, in_batched))
        return jax.lax.map(lambda o: _ffi(target, out_shape, *o), ops), True

    return call(*operands)


@jax.custom_vjp
def weighted_rows(table: jax.Array, rows: jax.Array, weights: jax.Array) -> jax.Array:
    """table [R, C] float32, rows [N, K] int32 (clamped to [0, R)), weights [N, K] float32 ->
    [N, C]. Call only where ``available()``."""
    return _ffi("deim_gather_sum_forward", (rows.shape[0], table.shape[1]), table, rows, weights)


def _fwd(table, rows, weights):
    return weighted_rows(table, rows, weights), (table, rows, weights)


def _bwd(residuals, g):
    table, rows, weights = residuals
    d_weights = _ffi("deim_gather_sum_weights_grad", weights.shape, table, rows, g)
    d_table = _ffi("deim_gather_sum_table_grad", table.shape, rows, weights, g)
    return d_table, np.zeros(rows.shape, jax.dtypes.float0), d_weights


weighted_rows.defvjp(_fwd, _bwd)
