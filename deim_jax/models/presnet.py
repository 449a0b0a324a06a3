"""PResNet (ResNet-vd) backbone of DEIM-RT-DETRv2 (rtdetrv2.md §3).

Input NHWC float32 images in [0, 1]; output the NHWC maps of the stages in ``return_idx``
(strides 8, 16, 32 for the default ``(1, 2, 3)``). Flax submodules carry the PyTorch attribute
names, so ``convert.raw_variables(sd)['params']['backbone']`` feeds :class:`PResNet` directly:
``conv1/conv1_{1,2,3}/{conv,norm}``, ``res_layers_{s}/blocks_{b}/{branch2a,branch2b[,branch2c],short}``.

Variant 'd' only: 3-conv stem (32, 32, 64) + max-pool 3x3/2 (pad 1, -inf), stride on the 3x3 conv
of a bottleneck, and a downsampling shortcut avg-pool 2x2/2 (ceil mode) + 1x1 conv + BN.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from deim_jax.models.layers import ConvNorm, backbone_freeze_filter, max_pool

# depth -> (block type, blocks per stage)
ARCH = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)


def avg_pool_2x2_ceil(x: jax.Array) -> jax.Array:
    """``nn.AvgPool2d(2, 2, 0, ceil_mode=True)`` on NHWC: partial edge windows average only the
    pixels that exist (odd sizes); on even sizes a plain 2x2 mean."""
    _, h, w, _ = x.shape
    ph, pw = h % 2, w % 2
    if ph == 0 and pw == 0:
        return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    pad = ((0, 0), (0, ph), (0, pw), (0, 0))
    s = nn.pool(jnp.pad(x, pad), 0.0, jax.lax.add, (2, 2), (2, 2), "VALID")
    ones = jnp.pad(jnp.ones((1, h, w, 1), x.dtype), pad)
    n = nn.pool(ones, 0.0, jax.lax.add, (2, 2), (2, 2), "VALID")
    return s / n


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """``nn.MaxPool2d(3, 2, 1)``: the padding acts as -inf."""
    return max_pool(x, 3, 2, ((1, 1), (1, 1)))


class _ShortD(nn.Module):
    """'d' downsampling shortcut: ``short.pool`` (no params) then ``short.conv`` (1x1 conv + BN)."""

    features: int
    frozen_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        x = avg_pool_2x2_ceil(x)
        return ConvNorm(self.features, 1, 1, act=None, frozen_norm=self.frozen_norm, name="conv")(x, train)


def _shortcut(x, features, stride, has_proj, frozen_norm, train):
    if not has_proj:
        return x
    if stride == 2:
        return _ShortD(features, frozen_norm, name="short")(x, train)
    return ConvNorm(features, 1, stride, act=None, frozen_norm=frozen_norm, name="short")(x, train)


class Block(nn.Module):
    """A residual block ``relu(branch(x) + short(x))`` of variant 'd'.

    ``block='basic'``: ``branch2a`` 3x3 (stride, ReLU) -> ``branch2b`` 3x3 (no act), ``features``
    out. ``'bottleneck'``: ``branch2a`` 1x1 (ReLU) -> ``branch2b`` 3x3 (stride, ReLU) ->
    ``branch2c`` 1x1 to ``4 * features`` (no act). ``short``: identity or projection (``has_proj``).
    """

    block: str
    features: int
    stride: int = 1
    has_proj: bool = False
    frozen_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        w, fz = self.features, self.frozen_norm
        if self.block == "basic":
            convs = ((w, 3, self.stride, "relu"), (w, 3, 1, None))
        else:
            convs = ((w, 1, 1, "relu"), (w, 3, self.stride, "relu"), (w * 4, 1, 1, None))
        y = x
        for name, (c, k, s, act) in zip(("branch2a", "branch2b", "branch2c"), convs):
            y = ConvNorm(c, k, s, act=act, frozen_norm=fz, name=name)(y, train)
        short = _shortcut(x, convs[-1][0], self.stride, self.has_proj, fz, train)
        return jax.nn.relu(y + short)


class _Blocks(nn.Module):
    """``res_layers.{s}``: holds ``blocks_{b}``."""

    block: str
    features: int
    count: int
    stride: int
    frozen_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        for b in range(self.count):
            x = Block(
                self.block,
                self.features,
                stride=self.stride if b == 0 else 1,
                has_proj=b == 0,
                frozen_norm=self.frozen_norm,
                name=f"blocks_{b}",
            )(x, train)
        return x


class _Stem(nn.Module):
    """``conv1``: conv1_1 (3->32, s2), conv1_2 (32->32), conv1_3 (32->64), each conv+BN+ReLU."""

    frozen_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        for name, c, s in (("conv1_1", 32, 2), ("conv1_2", 32, 1), ("conv1_3", 64, 1)):
            x = ConvNorm(c, 3, s, act="relu", frozen_norm=self.frozen_norm, name=name)(x, train)
        return x


class PResNet(nn.Module):
    """ResNet-vd backbone.

    ``__call__(images [B, H, W, 3], *, train) -> [maps]`` NHWC, one per ``return_idx`` stage
    (channels ``out_channels``). ``freeze_norm`` makes every BatchNorm a FrozenBatchNorm (running
    statistics always). ``freeze_at >= 0`` freezes the stem and ``res_layers[0 .. freeze_at-1]``:
    their outputs are gradient-stopped and :meth:`frozen_param_filter` lists their parameters for
    the optimizer.
    """

    depth: int = 50
    variant: str = "d"
    return_idx: Tuple[int, ...] = (1, 2, 3)
    freeze_at: int = -1
    freeze_norm: bool = False
    num_stages: int = 4
    act: str = "relu"

    @property
    def out_channels(self) -> Tuple[int, ...]:
        """Channels of the returned maps (128/256/512 for R18/R34, 512/1024/2048 for R50/R101)."""
        exp = 1 if _arch(self.depth)[0] == "basic" else 4
        return tuple(STAGE_WIDTHS[i] * exp for i in self.return_idx)

    def frozen_tops(self) -> Tuple[str, ...]:
        """Top-level submodules frozen by ``freeze_at`` (official rules: stem ``conv1`` and the
        first ``freeze_at`` stages)."""
        if self.freeze_at < 0:
            return ()
        return ("conv1",) + tuple(f"res_layers_{s}" for s in range(self.freeze_at))

    def frozen_param_filter(self) -> Optional[Callable[[Tuple[str, ...]], bool]]:
        """Predicate over backbone-relative params paths (None when nothing is frozen), see
        ``layers.backbone_freeze_filter``; every BatchNorm is named ``norm``."""
        return backbone_freeze_filter(self.frozen_tops(), self.freeze_norm, "norm")

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> List[jax.Array]:
        if self.variant != "d":
            raise NotImplementedError(f"PResNet variant {self.variant!r}: only 'd' is implemented")
        if self.act != "relu":
            raise NotImplementedError("PResNet act: only 'relu' is used by the official configs")
        block, counts = _arch(self.depth)
        fz = self.freeze_norm
        frozen = self.frozen_tops()
        x = _Stem(fz, name="conv1")(x, train)
        x = jax.lax.stop_gradient(x) if "conv1" in frozen else x
        x = max_pool_3x3_s2(x)
        outs = []
        for s in range(self.num_stages):
            x = _Blocks(block, STAGE_WIDTHS[s], counts[s], 1 if s == 0 else 2, fz, name=f"res_layers_{s}")(x, train)
            x = jax.lax.stop_gradient(x) if f"res_layers_{s}" in frozen else x
            if s in self.return_idx:
                outs.append(x)
        return outs


def _arch(depth: int):
    if depth not in ARCH:
        raise ValueError(f"PResNet depth {depth}: choose one of {sorted(ARCH)}")
    return ARCH[depth]
