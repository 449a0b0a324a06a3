"""HGNetv2 backbone (the D-FINE / DEIM variant) in Flax linen.

Input: images NHWC float32 in [0, 1] (no mean/std normalization). Output: a list
of NHWC feature maps, one per stage index in ``return_idx`` (stage strides
4, 8, 16, 32 for indices 0..3).

Module names mirror the PyTorch attributes (``stem/stem1/conv``,
``stages_2/blocks_0/layers_0/conv1/bn``, ``stages_1/downsample/bn`` ...), so a
state dict converted with ``deim_jax.convert.raw_variables`` feeds it directly.
Every conv has no bias; every norm is a BatchNorm named ``bn``; activations are
ReLU, followed by a LearnableAffineBlock ``lab`` when ``use_lab``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from deim_jax.models.layers import BatchNorm, Conv, backbone_freeze_filter, config_value

# Stage row: (in, mid, out, num_blocks, downsample, light_block, kernel, layer_num).
# B0/B2/B4/B5 are the ones DEIM-D-FINE uses (deim_dfine.md §3.2, proven by parity/param counts);
# B1/B3/B6 follow the official table (not exercised by any fixture).
_ARCH: Dict[str, Dict[str, Any]] = {
    "B0": dict(
        stem=(3, 16, 16),
        stages=(
            (16, 16, 64, 1, False, False, 3, 3),
            (64, 32, 256, 1, True, False, 3, 3),
            (256, 64, 512, 2, True, True, 5, 3),
            (512, 128, 1024, 1, True, True, 5, 3),
        ),
    ),
    "B1": dict(
        stem=(3, 24, 32),
        stages=(
            (32, 32, 64, 1, False, False, 3, 3),
            (64, 48, 256, 1, True, False, 3, 3),
            (256, 96, 512, 2, True, True, 5, 3),
            (512, 192, 1024, 1, True, True, 5, 3),
        ),
    ),
    "B2": dict(
        stem=(3, 24, 32),
        stages=(
            (32, 32, 96, 1, False, False, 3, 4),
            (96, 64, 384, 1, True, False, 3, 4),
            (384, 128, 768, 3, True, True, 5, 4),
            (768, 256, 1536, 1, True, True, 5, 4),
        ),
    ),
    "B3": dict(
        stem=(3, 24, 32),
        stages=(
            (32, 32, 128, 1, False, False, 3, 5),
            (128, 64, 512, 1, True, False, 3, 5),
            (512, 128, 1024, 3, True, True, 5, 5),
            (1024, 256, 2048, 1, True, True, 5, 5),
        ),
    ),
    "B4": dict(
        stem=(3, 32, 48),
        stages=(
            (48, 48, 128, 1, False, False, 3, 6),
            (128, 96, 512, 1, True, False, 3, 6),
            (512, 192, 1024, 3, True, True, 5, 6),
            (1024, 384, 2048, 1, True, True, 5, 6),
        ),
    ),
    "B5": dict(
        stem=(3, 32, 64),
        stages=(
            (64, 64, 128, 1, False, False, 3, 6),
            (128, 128, 512, 2, True, False, 3, 6),
            (512, 256, 1024, 5, True, True, 5, 6),
            (1024, 512, 2048, 2, True, True, 5, 6),
        ),
    ),
    "B6": dict(
        stem=(3, 48, 96),
        stages=(
            (96, 96, 192, 2, False, False, 3, 6),
            (192, 192, 512, 3, True, False, 3, 6),
            (512, 384, 1024, 6, True, True, 5, 6),
            (1024, 768, 2048, 3, True, True, 5, 6),
        ),
    ),
}

ARCH_CONFIGS = _ARCH  # public, read-only by convention


def out_channels(name_variant: str, return_idx: Sequence[int] = (1, 2, 3)) -> Tuple[int, ...]:
    """Channels of the returned maps of a variant."""
    stages = _arch(name_variant)["stages"]
    return tuple(stages[i][2] for i in return_idx)


def _arch(name_variant: str) -> Dict[str, Any]:
    if name_variant not in _ARCH:
        raise ValueError(f"unknown HGNetv2 variant {name_variant!r}; known: {sorted(_ARCH)}")
    return _ARCH[name_variant]


def _pad_right_bottom(x: jax.Array) -> jax.Array:
    """Zero pad NHWC by one pixel on the right and at the bottom (torch F.pad(x, (0, 1, 0, 1)))."""
    return jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))


class LearnableAffineBlock(nn.Module):
    """y = scale * x + bias with scalar parameters ``scale`` (init 1) and ``bias`` (init 0), shape [1]."""

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (1,))
        bias = self.param("bias", nn.initializers.zeros, (1,))
        return scale.astype(x.dtype) * x + bias.astype(x.dtype)


class ConvBNAct(nn.Module):
    """conv (k x k, no bias) -> BN ``bn`` -> ReLU -> LAB ``lab`` (act and lab only when ``use_act``).

    ``padding``: symmetric int ((k-1)//2 by default); 0 for the stem's 2x2 convs.
    """

    features: int
    kernel: int
    stride: int = 1
    groups: int = 1
    padding: int | None = None
    use_act: bool = True
    use_lab: bool = False
    frozen_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        x = Conv(self.features, self.kernel, self.stride, self.groups, self.padding, name="conv")(x)
        x = BatchNorm(frozen=self.frozen_norm, name="bn")(x, train)
        if self.use_act:
            x = jax.nn.relu(x)
            if self.use_lab:
                x = LearnableAffineBlock(name="lab")(x)
        return x


class LightConvBNAct(nn.Module):
    """1x1 ConvBN (``conv1``, no act) then depthwise k x k ConvBNAct (``conv2``)."""

    features: int
    kernel: int
    use_lab: bool = False
    frozen_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        x = ConvBNAct(self.features, 1, use_act=False, use_lab=self.use_lab, frozen_norm=self.frozen_norm, name="conv1")(
            x, train
        )
        x = ConvBNAct(
            self.features,
            self.kernel,
            groups=self.features,
            use_act=True,
            use_lab=self.use_lab,
            frozen_norm=self.frozen_norm,
            name="conv2",
        )(x, train)
        return x


class StemBlock(nn.Module):
    """HGNetv2 stem: [B,H,W,3] -> [B,H/4,W/4,out] (stride 4)."""

    mid: int
    out: int
    use_lab: bool = False
    frozen_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        kw = dict(use_lab=self.use_lab, frozen_norm=self.frozen_norm)
        x = ConvBNAct(self.mid, 3, stride=2, name="stem1", **kw)(x, train)
        x = _pad_right_bottom(x)
        x2 = ConvBNAct(self.mid // 2, 2, padding=0, name="stem2a", **kw)(x, train)
        x2 = _pad_right_bottom(x2)
        x2 = ConvBNAct(self.mid, 2, padding=0, name="stem2b", **kw)(x2, train)
        # 2x2 stride-1 max pool on the zero-padded map (ceil_mode changes nothing here).
        x1 = nn.max_pool(x, (2, 2), strides=(1, 1), padding="VALID")
        x = jnp.concatenate([x1, x2], axis=-1)
        x = ConvBNAct(self.mid, 3, stride=2, name="stem3", **kw)(x, train)
        x = ConvBNAct(self.out, 1, name="stem4", **kw)(x, train)
        return x


class HGBlock(nn.Module):
    """``layer_num`` convs chained, concat [x, l1..ln], 'se' aggregation (1x1 to out/2, 1x1 to out), optional residual."""

    mid: int
    out: int
    layer_num: int
    kernel: int
    residual: bool = False
    light_block: bool = False
    use_lab: bool = False
    frozen_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        kw = dict(use_lab=self.use_lab, frozen_norm=self.frozen_norm)
        identity = x
        outs = [x]
        for i in range(self.layer_num):
            if self.light_block:
                x = LightConvBNAct(self.mid, self.kernel, name=f"layers_{i}", **kw)(x, train)
            else:
                x = ConvBNAct(self.mid, self.kernel, name=f"layers_{i}", **kw)(x, train)
            outs.append(x)
        x = jnp.concatenate(outs, axis=-1)
        x = ConvBNAct(self.out // 2, 1, name="aggregation_0", **kw)(x, train)
        x = ConvBNAct(self.out, 1, name="aggregation_1", **kw)(x, train)
        if self.residual:
            x = x + identity
        return x


class HGStage(nn.Module):
    """Optional depthwise 3x3 s2 ConvBN ``downsample`` (no act), then ``blocks_j`` (residual for j > 0)."""

    in_ch: int
    mid: int
    out: int
    num_blocks: int
    layer_num: int
    downsample: bool
    light_block: bool
    kernel: int
    use_lab: bool = False
    frozen_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        kw = dict(use_lab=self.use_lab, frozen_norm=self.frozen_norm)
        if self.downsample:
            x = ConvBNAct(self.in_ch, 3, stride=2, groups=self.in_ch, use_act=False, name="downsample", **kw)(x, train)
        for j in range(self.num_blocks):
            x = HGBlock(
                self.mid,
                self.out,
                self.layer_num,
                self.kernel,
                residual=j > 0,
                light_block=self.light_block,
                name=f"blocks_{j}",
                **kw,
            )(x, train)
        return x


class HGNetv2(nn.Module):
    """HGNetv2 backbone.

    ``__call__(x [B,H,W,3], train) -> [maps of the stages in return_idx]`` (NHWC).
    ``freeze_norm=True`` turns every BN into a frozen one (running statistics,
    no ``num_batches_tracked``). ``freeze_at`` / ``freeze_stem_only`` do not
    change the computation; they only say which parameters the optimizer must
    leave alone, see :func:`frozen_param_filter`.
    """

    name_variant: str = "B0"
    use_lab: bool = False
    return_idx: Tuple[int, ...] = (1, 2, 3)
    freeze_at: int = -1
    freeze_norm: bool = False
    freeze_stem_only: bool = True

    @property
    def out_channels(self) -> Tuple[int, ...]:
        return out_channels(self.name_variant, self.return_idx)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool):
        arch = _arch(self.name_variant)
        _, mid, out = arch["stem"]
        kw = dict(use_lab=self.use_lab, frozen_norm=self.freeze_norm)
        x = StemBlock(mid, out, name="stem", **kw)(x, train)
        outs = []
        for i, (cin, cmid, cout, nb, down, light, k, nl) in enumerate(arch["stages"]):
            x = HGStage(cin, cmid, cout, nb, nl, down, light, k, name=f"stages_{i}", **kw)(x, train)
            if i in self.return_idx:
                outs.append(x)
        return outs




def frozen_param_filter(cfg_backbone) -> Callable[[Tuple[str, ...]], bool]:
    """Predicate ``path -> True if that backbone parameter is frozen``.

    ``cfg_backbone``: the backbone config (ConfigDict/dict with ``freeze_at``,
    ``freeze_norm``, ``freeze_stem_only``) or an :class:`HGNetv2` module.
    ``path``: a tuple of keys into the params tree, either relative to the
    backbone (``('stem', 'stem1', 'conv', 'kernel')``) or from the model root
    (``('backbone', 'stem', ...)``; paths outside ``backbone`` are never frozen).
    Semantics of the official code: ``freeze_at >= 0`` freezes the stem and, when
    ``freeze_stem_only`` is False, stages 0..freeze_at as well; ``freeze_norm``
    freezes every BN scale/bias (FrozenBatchNorm2d holds them as buffers).
    """
    freeze_at = int(config_value(cfg_backbone, "freeze_at", -1))
    freeze_norm = bool(config_value(cfg_backbone, "freeze_norm", False))
    stem_only = bool(config_value(cfg_backbone, "freeze_stem_only", True))
    frozen_tops = set()
    if freeze_at >= 0:
        frozen_tops.add("stem")
        if not stem_only:
            frozen_tops.update(f"stages_{i}" for i in range(min(freeze_at + 1, 4)))

    return backbone_freeze_filter(frozen_tops, freeze_norm, "bn")
