"""``deim_jax.kernels.onednn``: oneDNN's convolutions through XLA's FFI compute what
``lax.conv_general_dilated`` computes, forward and backward (up to float rounding), for the
geometries the models use; where they cannot be built the reason is said and XLA's ops are kept."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deim_jax.kernels import onednn

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="oneDNN's convolutions do not build here")


def _xla_conv(x, kernel, stride, padding):
    groups = x.shape[-1] // kernel.shape[2]
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, feature_group_count=groups,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@needs_onednn
@pytest.mark.parametrize("kernel,stride,padding,cin,cout,groups", [
    (3, 2, ((1, 1), (1, 1)), 3, 16, 1),    # HGNetv2 stem 1
    (2, 1, ((0, 1), (0, 1)), 16, 8, 1),    # stem 2a: asymmetric padding, fewer outputs than inputs
    (3, 1, ((1, 1), (1, 1)), 12, 20, 1),   # dense 3x3
    (1, 1, ((0, 0), (0, 0)), 24, 16, 1),   # 1x1
    (5, 1, ((2, 2), (2, 2)), 16, 16, 16),  # depthwise 5x5
    (3, 2, ((1, 1), (1, 1)), 16, 16, 16),  # depthwise stride 2
    (3, 1, ((1, 1), (1, 1)), 12, 8, 4),    # grouped
])
def test_forward_and_gradients_equal_xla(kernel, stride, padding, cin, cout, groups):
    rng = np.random.default_rng(kernel + stride + cin)
    x = jnp.asarray(rng.normal(size=(2, 13, 11, cin)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(kernel, kernel, cin // groups, cout)), jnp.float32)
    y = jax.jit(onednn.conv, static_argnums=(2, 3))(x, k, stride, padding)
    np.testing.assert_allclose(y, _xla_conv(x, k, stride, padding), rtol=1e-5, atol=1e-4)
    grads = [jax.jit(jax.grad(lambda x, k, f=f: jnp.sum(jnp.sin(f(x, k, stride, padding))), (0, 1)))(x, k)
             for f in (onednn.conv, _xla_conv)]
    for ours, ref in zip(*grads):
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def _available_in_subprocess(**env):
    code = "from deim_jax.kernels import onednn; print(onednn.available())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu", **env))
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1], r.stderr


def test_switched_off_by_the_environment():
    assert _available_in_subprocess(DEIM_JAX_ONEDNN="0")[0] == "False"


def test_a_failed_build_is_said_and_xla_is_kept(tmp_path):
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr); "
            "from deim_jax.kernels import onednn; print(onednn.available())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu", CXX="/bin/false", DEIM_JAX_KERNEL_DIR=str(tmp_path)))
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "False", r.stderr[-2000:]
    assert "oneDNN convolutions off, XLA's used instead: compiling" in r.stderr
    assert not list(tmp_path.iterdir())   # no half-written library left behind


@needs_onednn
def test_several_devices_keep_xla():
    assert _available_in_subprocess(XLA_FLAGS="--xla_force_host_platform_device_count=2")[0] == "False"


@needs_onednn
def test_vmap_and_jacobians_equal_xla():
    """vmap over images folds into the batch, over kernels runs one call per kernel; jacrev vmaps
    the backward calls over cotangents."""
    rng = np.random.default_rng(3)
    xs = jnp.asarray(rng.normal(size=(3, 2, 9, 7, 6)), jnp.float32)
    ks = jnp.asarray(rng.normal(size=(3, 3, 3, 6, 5)), jnp.float32)
    pad = ((1, 1), (1, 1))
    for in_axes in [(0, None), (None, 0), (0, 0)]:
        args = (xs if in_axes[0] == 0 else xs[0], ks if in_axes[1] == 0 else ks[0])
        ours, ref = (jax.jit(jax.vmap(lambda x, k, f=f: f(x, k, 2, pad), in_axes))(*args)
                     for f in (onednn.conv, _xla_conv))
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)
    ours, ref = (jax.jit(jax.jacrev(lambda x, k, f=f: jnp.sum(f(x, k, 2, pad) ** 2, axis=(1, 2, 3)), (0, 1)))(
        xs[0], ks[0]) for f in (onednn.conv, _xla_conv))
    for o, r in zip(ours, ref):
        np.testing.assert_allclose(o, r, rtol=1e-4, atol=1e-3)
