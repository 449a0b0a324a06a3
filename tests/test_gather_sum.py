"""``deim_jax.kernels.gather_sum``: the C++ weighted sum of gathered rows has the values and the
gradients of XLA's gather + product (indices out of range clamped), also under vmap, and
deformable sampling gives the same results with and without it."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deim_jax.kernels import gather_sum
from deim_jax.models import deformable_attention, layers

needs_kernel = pytest.mark.skipif(not gather_sum.available(), reason="the gather_sum kernel does not build here")


def _xla(table, rows, weights):
    return jnp.einsum("nk,nkc->nc", weights, jnp.take(table, rows, axis=0, mode="clip"))


def _inputs(seed=0, r=50, c=6, n=40, k=5):
    rng = np.random.default_rng(seed)
    table = jnp.asarray(rng.normal(size=(r, c)), jnp.float32)
    rows = jnp.asarray(rng.integers(-3, r + 3, size=(n, k)), jnp.int32)  # a few out of range
    weights, g = jnp.asarray(rng.normal(size=(n, k)), jnp.float32), jnp.asarray(rng.normal(size=(n, c)), jnp.float32)
    return table, rows, weights, g


@needs_kernel
def test_values_and_gradients_equal_xla():
    table, rows, weights, g = _inputs()
    (y, pull), (y_ref, pull_ref) = (jax.vjp(lambda t, w: f(t, rows, w), table, weights)
                                    for f in (gather_sum.weighted_rows, _xla))
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for ours, ref in zip(pull(g), pull_ref(g)):
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_vmap_and_jacobians_equal_xla():
    table, rows, weights, _ = _inputs(1, n=6, k=3)
    batch = jnp.stack([table, 2 * table])
    np.testing.assert_allclose(jax.vmap(lambda t: gather_sum.weighted_rows(t, rows, weights))(batch),
                               jax.vmap(lambda t: _xla(t, rows, weights))(batch), rtol=1e-5, atol=1e-5)
    jac = [jax.jacrev(lambda t, w: f(t, rows, w), argnums=(0, 1))(table, weights) for f in (gather_sum.weighted_rows, _xla)]
    for ours, ref in zip(*jac):
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_deformable_sampling_is_the_same_with_and_without_the_kernel(monkeypatch):
    shapes, points = [(6, 5), (3, 3)], (2, 3)
    rng = np.random.default_rng(2)
    value = jnp.asarray(rng.normal(size=(2, 39, 4, 8)), jnp.float32)
    loc = jnp.asarray(rng.uniform(-0.2, 1.2, size=(2, 7, 4, 5, 2)), jnp.float32)  # some outside the map
    w = jnp.asarray(rng.uniform(size=(2, 7, 4, 5)), jnp.float32)

    def value_and_grads():
        f = lambda v, l, w: jnp.sum(jnp.sin(deformable_attention.deformable_sample(v, shapes, l, w, points)))
        return jax.jit(jax.value_and_grad(f, (0, 1, 2)))(value, loc, w)

    ours = value_and_grads()
    monkeypatch.setattr(layers, "NATIVE_KERNELS", False)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(value_and_grads())):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_switched_off_by_the_environment():
    code = "from deim_jax.kernels import gather_sum; print(gather_sum.available())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu", DEIM_JAX_NATIVE_SAMPLING="0"))
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "False", r.stderr[-2000:]
