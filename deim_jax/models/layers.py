"""Building blocks shared by every model family, with PyTorch numerics.

Conventions (the converter in ``deim_jax.convert`` relies on them):
  * activations are NHWC for images and [B, N, C] for tokens;
  * a Flax submodule is named after the PyTorch attribute it mirrors, with list
    indices joined by ``_`` (PyTorch ``stages.0.blocks.1.conv`` -> Flax
    ``stages_0/blocks_1/conv``);
  * parameter leaves: conv/linear ``kernel`` (+ ``bias``), norms ``scale`` +
    ``bias``; BatchNorm running statistics live in the ``batch_stats``
    collection as ``mean``, ``var`` and ``num_batches_tracked``.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from deim_jax.kernels import gather_sum, onednn
from deim_jax.models.activations import get_activation
from deim_jax.models.attention import attention
from deim_jax.models.batch_norm import BatchNorm

# PyTorch's default Linear/Conv weight init, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
xavier_uniform = nn.initializers.xavier_uniform()

LN_EPS = 1e-5  # PyTorch LayerNorm default (Flax's is 1e-6).


def LayerNorm(name: Optional[str] = None) -> nn.LayerNorm:
    """LayerNorm with PyTorch's epsilon (1e-5)."""
    return nn.LayerNorm(epsilon=LN_EPS, name=name)


def _windows(x: jax.Array, kh: int, kw: int, stride: int):
    """(i, j, x[:, i::stride, j::stride, :] cut to the output size) for every window offset, row-major."""
    b, h, w, c = x.shape
    out_h, out_w = (h - kh) // stride + 1, (w - kw) // stride + 1
    for i in range(kh):
        for j in range(kw):
            end = (b, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c)
            yield i, j, jax.lax.slice(x, (0, i, j, 0), end, (1, stride, stride, 1))


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
    """Depthwise 2-D conv as a sum of k*k shifted, strided slices times their kernel row.

    x: [B, H, W, C]; kernel: [k, k, 1, C] (Flax's layout for ``feature_group_count=C``);
    padding: ((top, bottom), (left, right)). The same result as ``lax.conv_general_dilated``
    with ``feature_group_count=C`` up to float rounding (the k*k products are summed in a fixed
    order), but XLA fuses it into elementwise loops: on XLA:CPU about 10-25x faster forward and
    5-40x in the backward pass than its grouped convolution (``benchmarks/conv_forms.py``).
    """
    out = None
    for i, j, window in _windows(jnp.pad(x, ((0, 0), *padding, (0, 0))), *kernel.shape[:2], stride):
        term = window * kernel[i, j, 0]
        out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: int, stride: int, padding=((0, 0), (0, 0))) -> jax.Array:
    """PyTorch's ``MaxPool2d(window, stride, padding)`` on NHWC (the padding acts as -inf).

    A chain of strict ``>`` selections over the window offsets in row-major order. The gradient
    goes to the first maximum of each window, as in PyTorch, and is written by hand: one pass that
    adds each offset's share, where autodiff of the chain stores a mask per offset and pads each
    share separately (XLA's own max-pool gradient, select-and-scatter, is slower still on CPU).
    """
    out = None
    for _, _, win in _windows(_pad_low(x, padding), window, window, stride):
        out = win if out is None else jnp.where(win > out, win, out)
    return out


def _pad_low(x, padding):
    return jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)


def _max_pool_fwd(x, window, stride, padding):
    out = max_pool(x, window, stride, padding)
    return out, (x, out)


def _max_pool_bwd(window, stride, padding, residuals, g):
    x, out = residuals
    xp = _pad_low(x, padding)
    dxp, taken = jnp.zeros_like(xp), None
    for i, j, win in _windows(xp, window, window, stride):
        first = win == out if taken is None else (win == out) & ~taken
        taken = first if taken is None else taken | first
        share = jnp.where(first, g, 0.0).astype(x.dtype)
        # place share[y, x] at padded position (i + y * stride, j + x * stride)
        dxp = dxp + jax.lax.pad(share, jnp.zeros((), x.dtype), (
            (0, 0, 0),
            (i, xp.shape[1] - i - (share.shape[1] - 1) * stride - 1, stride - 1),
            (j, xp.shape[2] - j - (share.shape[2] - 1) * stride - 1, stride - 1),
            (0, 0, 0)))
    (top, _), (left, _) = padding
    return (dxp[:, top : top + x.shape[1], left : left + x.shape[2]],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


# Which forms ``Conv`` computes: None = by backend (the CPU forms on CPU, XLA's convolution on
# GPU/TPU); True/False forces them (tests show every form gives the same outputs).
CPU_FORMS: Optional[bool] = None


def use_cpu_forms() -> bool:
    return jax.default_backend() == "cpu" if CPU_FORMS is None else CPU_FORMS


# Whether the CPU forms may call native kernels (``deim_jax.kernels``: oneDNN's convolutions, the
# deformable sampler's gathered sums) where they build; ``portable_ops`` turns them off while
# tracing what runs elsewhere.
NATIVE_KERNELS = True


def use_native_convs() -> bool:
    """Whether ``Conv`` computes float32 convs with oneDNN (``kernels.onednn``) in this process."""
    return use_cpu_forms() and NATIVE_KERNELS and onednn.available()


def use_native_sampling() -> bool:
    """Whether deformable attention sums its float32 taps with ``kernels.gather_sum`` here."""
    return use_cpu_forms() and NATIVE_KERNELS and gather_sum.available()


@contextlib.contextmanager
def portable_ops():
    """Trace with XLA's own operations only: for artifacts run outside this process (export)."""
    global NATIVE_KERNELS
    before, NATIVE_KERNELS = NATIVE_KERNELS, False
    try:
        yield
    finally:
        NATIVE_KERNELS = before


class Conv(nn.Module):
    """A 2-D conv with PyTorch's explicit padding and ``nn.Conv``'s parameters: ``kernel``
    [k, k, in/groups, features] and, with ``use_bias``, ``bias`` [features].

    ``padding``: ((top, bottom), (left, right)). On CPU (``use_cpu_forms``) a float32 conv is
    oneDNN's (``kernels.onednn``: PyTorch's CPU kernels, 1.4-4x faster than XLA:CPU's convolution
    forward and backward) where it builds; without it a 1x1 stride-1 conv is a matrix product over
    channels and a depthwise conv (``groups`` == in == features) is ``depthwise_conv``, which
    XLA:CPU runs several times faster than its convolution (``benchmarks/conv_forms.py``);
    everything else is ``lax.conv_general_dilated``.
    """

    features: int
    kernel_size: int
    stride: int = 1
    groups: int = 1
    padding: Tuple[Tuple[int, int], Tuple[int, int]] = ((0, 0), (0, 0))
    use_bias: bool = False
    kernel_init: Callable = torch_kernel_init

    @nn.compact
    def __call__(self, x):
        k, c_in = self.kernel_size, x.shape[-1]
        if c_in % self.groups:
            raise ValueError(f"{self.name}: {c_in} input channels do not split into {self.groups} groups")
        kernel = self.param("kernel", self.kernel_init, (k, k, c_in // self.groups, self.features))
        x, kernel = nn.dtypes.promote_dtype(x, kernel)
        cpu_forms = use_cpu_forms()
        no_pad = all(p == (0, 0) for p in self.padding)
        if x.dtype == jnp.float32 and use_native_convs():
            y = onednn.conv(x, kernel, self.stride, self.padding)
        elif cpu_forms and k == 1 and self.stride == 1 and self.groups == 1 and no_pad:
            y = jnp.einsum("bhwc,cd->bhwd", x, kernel[0, 0])
        elif cpu_forms and self.groups == c_in == self.features > 1:
            y = depthwise_conv(x, kernel, self.stride, self.padding)
        else:
            y = jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride), self.padding,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                             feature_group_count=self.groups)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(y.dtype)
        return y


def conv(
    features: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    padding: Union[int, Sequence[Tuple[int, int]], None] = None,
    use_bias: bool = False,
    name: Optional[str] = None,
    kernel_init=torch_kernel_init,
) -> Conv:
    """``Conv`` with symmetric padding (k-1)//2 by default (an int pads both sides by it)."""
    if padding is None:
        padding = (kernel - 1) // 2
    if isinstance(padding, int):
        padding = [(padding, padding), (padding, padding)]
    return Conv(features, kernel, stride, groups, tuple(map(tuple, padding)), use_bias, kernel_init, name=name)


def is_folded(module: nn.Module, norm_name: str) -> bool:
    """Whether ``module``'s variables hold its conv with the BatchNorm ``norm_name`` folded in
    (``conv/bias`` present, no ``norm_name``: ``deim_jax.models.fusion.fold``). The structure
    follows the variables, so one model applies both the trained and the folded weights."""
    if module.is_initializing():
        return False
    params = module.variables.get("params", {})
    return norm_name not in params and "bias" in params.get("conv", {})


def conv_then_norm(module: nn.Module, x, train: bool, *, features: int, kernel: int, stride: int = 1,
                   groups: int = 1, padding=None, norm_name: str = "norm", frozen_norm: bool = False,
                   kernel_init=torch_kernel_init, act: Optional[str] = None):
    """conv ``conv`` (no bias) -> BatchNorm ``norm_name`` -> ``act`` inside ``module``'s scope, or the
    folded conv with its bias -> ``act`` when the variables are folded (``is_folded``)."""
    if is_folded(module, norm_name):
        x = conv(features, kernel, stride, groups, padding, use_bias=True, name="conv", kernel_init=kernel_init)(x)
        return get_activation(act)(x)
    x = conv(features, kernel, stride, groups, padding, name="conv", kernel_init=kernel_init)(x)
    return BatchNorm(frozen=frozen_norm, name=norm_name)(x, train, act)


class ConvNorm(nn.Module):
    """conv (no bias) -> BatchNorm -> activation.

    ``norm_name`` is the PyTorch attribute of the norm ('bn' in HGNetv2,
    'norm' in the encoders and PResNet).
    """

    features: int
    kernel: int
    stride: int = 1
    groups: int = 1
    padding: Optional[int] = None
    act: Optional[str] = None
    norm_name: str = "norm"
    frozen_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        return conv_then_norm(self, x, train, features=self.features, kernel=self.kernel, stride=self.stride,
                              groups=self.groups, padding=self.padding, norm_name=self.norm_name,
                              frozen_norm=self.frozen_norm, act=self.act)


class MLP(nn.Module):
    """Linear layers ``layers_0..layers_{n-1}`` with ``act`` between them (not after the last).

    Init: PyTorch's default, xavier-uniform for the layers listed in ``xavier_layers``, all-zero
    kernel for the last layer when ``last_zero`` (biases start at zero).
    """

    hidden_dim: int
    output_dim: int
    num_layers: int
    act: str = "relu"
    xavier_layers: Tuple[int, ...] = ()
    last_zero: bool = False

    @nn.compact
    def __call__(self, x):
        f = get_activation(self.act)
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            init = xavier_uniform if i in self.xavier_layers else torch_kernel_init
            if last and self.last_zero:
                init = nn.initializers.zeros
            x = nn.Dense(self.output_dim if last else self.hidden_dim, kernel_init=init, name=f"layers_{i}")(x)
            if not last:
                x = f(x)
        return x


class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention (batch_first), with its packed input projection.

    Params: ``in_proj_kernel`` [d, 3d] (= PyTorch ``in_proj_weight.T``; columns
    q | k | v), ``in_proj_bias`` [3d], ``out_proj`` Dense d -> d.
    ``mask``: bool, broadcastable to [B, heads, Lq, Lk], **True = may not attend**.
    """

    num_heads: int

    @nn.compact
    def __call__(self, query, key, value, mask: Optional[jax.Array] = None):
        d = query.shape[-1]
        h = self.num_heads
        hd = d // h
        w = self.param("in_proj_kernel", xavier_uniform, (d, 3 * d))
        b = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,))
        w = w.astype(query.dtype)
        b = b.astype(query.dtype)
        q = query @ w[:, :d] + b[:d]
        k = key @ w[:, d : 2 * d] + b[d : 2 * d]
        v = value @ w[:, 2 * d :] + b[2 * d :]

        def heads(t):
            return t.reshape(t.shape[:-1] + (h, hd))

        out = attention(heads(q) * (hd**-0.5), heads(k), heads(v), mask)
        out = out.reshape(query.shape[:-1] + (d,))
        return nn.Dense(d, kernel_init=torch_kernel_init, name="out_proj")(out)


def backbone_freeze_filter(
    frozen_tops: Sequence[str], freeze_norm: bool, norm_name: str
) -> Optional[Callable[[Tuple[str, ...]], bool]]:
    """Predicate ``path -> frozen?`` over backbone-relative params paths (official freeze rules),
    or None when nothing is frozen.

    ``frozen_tops``: top-level backbone submodules whose parameters are all frozen (the stem,
    early stages). ``freeze_norm``: every BatchNorm scale/bias (named ``norm_name``) is frozen,
    as FrozenBatchNorm2d holds them as buffers. ``path``: string keys below the backbone, e.g.
    ``('stem', 'stem1', 'conv', 'kernel')``.
    """
    frozen_tops = frozenset(frozen_tops)
    if not frozen_tops and not freeze_norm:
        return None

    def is_frozen(path: Tuple[str, ...]) -> bool:
        if not path:
            return False
        if path[0] in frozen_tops:
            return True
        return freeze_norm and len(path) >= 2 and path[-2] == norm_name and path[-1] in ("scale", "bias")

    return is_frozen


def inverse_sigmoid(x, eps: float = 1e-5):
    """log(x / (1 - x)) with x clipped to [0, 1] and both terms to >= eps (official form)."""
    x = jnp.clip(x, 0.0, 1.0)
    return jnp.log(jnp.clip(x, eps, None) / jnp.clip(1.0 - x, eps, None))


def bias_init_with_prob(prior_prob: float) -> float:
    import math

    return float(-math.log((1 - prior_prob) / prior_prob))


def constant_init(value: float):
    return functools.partial(lambda v, key, shape, dtype=jnp.float32: jnp.full(shape, v, dtype), value)
