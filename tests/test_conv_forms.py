"""The CPU forms of ``layers.Conv`` (oneDNN's convolutions where they build; without them 1x1 as a
matrix product, depthwise as shifted slices) and ``layers.max_pool`` give the same outputs and
gradients as XLA's convolution and reduce-window (PyTorch's first-maximum gradient for ties), and
a whole backbone is the same in both forms. Every test of the forms runs with and without oneDNN."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deim_jax.kernels import onednn
from deim_jax.models import hgnetv2, layers


@pytest.fixture(params=[False, True], ids=["xla-forms", "onednn"])
def forms(request):
    """Set ``layers.CPU_FORMS`` inside a test (with oneDNN's kernels on or off) and restore the
    defaults after it."""
    if request.param and not onednn.available():
        pytest.skip("oneDNN's convolutions do not build here (see deim_jax.kernels.onednn)")
    layers.NATIVE_KERNELS = request.param
    yield lambda value: setattr(layers, "CPU_FORMS", value)
    layers.CPU_FORMS, layers.NATIVE_KERNELS = None, True


def _apply_both(forms, module, x):
    """(output, input gradient, parameter gradients) with the CPU forms off and on."""
    variables = module.init(jax.random.PRNGKey(0), x)
    results = []
    for on in (False, True):
        forms(on)
        loss = lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))  # noqa: E731
        y = jax.jit(module.apply)(variables, x)
        gv, gx = jax.jit(jax.grad(loss, (0, 1)))(variables, x)
        results.append((y, gx, gv))
    return results


@pytest.mark.parametrize("features,kernel,stride,groups,cin", [
    (24, 1, 1, 1, 16),   # 1x1: a matrix product on CPU
    (16, 3, 1, 16, 16),  # depthwise 3x3
    (16, 5, 1, 16, 16),  # depthwise 5x5 (HGNetv2 light blocks)
    (16, 3, 2, 16, 16),  # depthwise 3x3 stride 2 (downsample, SCDown)
    (8, 3, 2, 1, 4),     # dense 3x3 stride 2
    (8, 2, 1, 1, 12),    # dense 2x2 (HGNetv2 stem), more inputs than outputs
    (12, 3, 1, 3, 6),    # grouped
])
def test_conv_forms_agree(forms, features, kernel, stride, groups, cin):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 11, 13, cin)), jnp.float32)
    module = layers.conv(features, kernel, stride, groups, use_bias=True)
    (y0, gx0, gv0), (y1, gx1, gv1) = _apply_both(forms, module, x)
    assert y0.shape == y1.shape == (2, (11 + 2 * ((kernel - 1) // 2) - kernel) // stride + 1,
                                    (13 + 2 * ((kernel - 1) // 2) - kernel) // stride + 1, features)
    np.testing.assert_allclose(y1, y0, atol=1e-5)
    np.testing.assert_allclose(gx1, gx0, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(gv1), jax.tree_util.tree_leaves(gv0)):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_conv_rejects_channels_that_do_not_split_into_groups():
    with pytest.raises(ValueError, match="do not split into 4 groups"):
        layers.conv(8, 3, groups=4).init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, 6)))


def test_max_pool_matches_reduce_window_and_sends_tied_gradients_to_the_first_maximum():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9, 9, 3)), jnp.float32)
    pad = ((1, 1), (1, 1))
    np.testing.assert_array_equal(layers.max_pool(x, 3, 2, pad), nn.max_pool(x, (3, 3), (2, 2), pad))
    np.testing.assert_array_equal(layers.max_pool(x, 2, 1), nn.max_pool(x, (2, 2), (1, 1), "VALID"))
    # one 2x2 window of equal values: PyTorch gives the whole gradient to the top-left one
    g = jax.grad(lambda x: jnp.sum(layers.max_pool(x, 2, 2)))(jnp.ones((1, 2, 2, 1)))
    np.testing.assert_array_equal(g[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize("window,stride,pad", [(2, 1, ((0, 0), (0, 0))), (3, 2, ((1, 1), (1, 1))),
                                               (2, 2, ((0, 1), (0, 1)))])
def test_max_pool_gradient_equals_pytorch_with_ties(window, stride, pad):
    """Rounded values (many ties, as after a ReLU), the hand-written gradient against torch's."""
    rng = np.random.default_rng(3)
    x = np.maximum(np.round(rng.normal(size=(2, 8, 7, 3)) * 2), 0).astype(np.float32)
    dy_shape = layers.max_pool(jnp.asarray(x), window, stride, pad).shape
    dy = rng.normal(size=dy_shape).astype(np.float32)
    _, pull = jax.vjp(lambda x: layers.max_pool(x, window, stride, pad), jnp.asarray(x))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    # torch pads symmetrically only: pad by hand with -inf, then pool without padding
    xp = F.pad(xt, (pad[1][0], pad[1][1], pad[0][0], pad[0][1]), value=-float("inf"))
    F.max_pool2d(xp, window, stride).backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(pull(jnp.asarray(dy))[0], xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


def test_backbone_is_the_same_in_both_forms(forms):
    model = hgnetv2.HGNetv2(variant="B0", use_lab=True, return_idx=(1, 2, 3))
    x = jnp.asarray(np.random.default_rng(2).random((1, 64, 64, 3)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    outs = []
    for on in (False, True):
        forms(on)
        outs.append(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
