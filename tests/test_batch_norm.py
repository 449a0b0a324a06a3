"""``deim_jax.models.batch_norm``: train-mode BatchNorm fused with its activation has the gradients
of the unfused formula and of PyTorch's BatchNorm2d + activation; the module's outputs and running
statistics are those of the formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from deim_jax.models.activations import get_activation
from deim_jax.models.batch_norm import BatchNorm, batch_norm_act

EPS = 1e-5


def _formula(x, scale, bias, act):
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), (0, 1, 2))
    return get_activation(act)((x - mean) * (jax.lax.rsqrt(var + EPS) * scale) + bias)


def _inputs(seed=0, shape=(2, 5, 7, 6)):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, size=shape).astype(np.float32)   # a mean and scale of its own
    scale = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
    bias = rng.normal(0, 0.5, shape[-1]).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    return x, scale, bias, dy


@pytest.mark.parametrize("act", [None, "relu", "silu"])
def test_fused_gradients_equal_autodiff_of_the_formula(act):
    x, scale, bias, dy = (jnp.asarray(a) for a in _inputs())

    @jax.jit
    def value_and_vjp(x, scale, bias, dy):
        return [(y, pull(dy)) for y, pull in (jax.vjp(f, x, scale, bias) for f in (
            lambda *a: batch_norm_act(*a, EPS, act), lambda *a: _formula(*a, act)))]

    (y, grads), (y_ref, grads_ref) = value_and_vjp(x, scale, bias, dy)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    for ours, ref, name in zip(grads, grads_ref, ("x", "scale", "bias")):
        np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("act", ["relu", "silu"])
def test_fused_gradients_equal_pytorch(act):
    x, scale, bias, dy = _inputs(1, (2, 6, 5, 4))
    _, pull = jax.vjp(lambda *a: batch_norm_act(*a, EPS, act), *(jnp.asarray(a) for a in (x, scale, bias)))
    ours = pull(jnp.asarray(dy))
    bn = torch.nn.BatchNorm2d(x.shape[-1], eps=EPS).train()
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(scale))
        bn.bias.copy_(torch.from_numpy(bias))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    yt = {"relu": torch.relu, "silu": torch.nn.functional.silu}[act](bn(xt))
    yt.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(ours[0], xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours[1], bn.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours[2], bn.bias.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype,act", [(jnp.float32, "relu"), (jnp.float32, "gelu"), (jnp.bfloat16, "silu")])
def test_module_outputs_and_running_stats(dtype, act):
    """float32 with relu is the fused path; gelu (not fused) and bfloat16 take the unfused one."""
    x, scale, bias, _ = _inputs(2)
    bn = BatchNorm()
    variables = bn.init(jax.random.PRNGKey(0), jnp.asarray(x), True)
    variables = {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)},
                 "batch_stats": variables["batch_stats"]}
    y, mutated = jax.jit(lambda v, x: bn.apply(v, x, True, act, mutable=["batch_stats"]))(
        variables, jnp.asarray(x, dtype))
    xq = np.asarray(jnp.asarray(x, dtype), np.float32)   # what the layer saw
    ref = _formula(jnp.asarray(xq), jnp.asarray(scale), jnp.asarray(bias), act)
    tol = 1e-5 if dtype == jnp.float32 else 5e-2
    assert y.dtype == dtype
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=tol, atol=tol)
    stats = mutated["batch_stats"]
    n = xq.size // xq.shape[-1]
    np.testing.assert_allclose(stats["mean"], 0.1 * xq.mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * xq.var((0, 1, 2)) * n / (n - 1), rtol=1e-5)
    assert int(stats["num_batches_tracked"]) == 1
