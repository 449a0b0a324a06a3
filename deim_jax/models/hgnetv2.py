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

from typing import Any, Callable, Dict, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from deim_jax.models.layers import backbone_freeze_filter, conv_then_norm, max_pool

# variant: (stem mid, stem out, layer_num, per stage (mid, out, num_blocks)). Stage i takes the
# previous stage's (or the stem's) output; stages 1..3 start with a downsample, stages 2..3 use
# light blocks with 5x5 kernels (3x3 before). B0/B2/B4/B5 are the ones DEIM-D-FINE uses
# (deim_dfine.md §3.2, proven by parity/param counts); B1/B3/B6 follow the official table (not
# exercised by any fixture).
_VARIANTS = {
    "B0": (16, 16, 3, ((16, 64, 1), (32, 256, 1), (64, 512, 2), (128, 1024, 1))),
    "B1": (24, 32, 3, ((32, 64, 1), (48, 256, 1), (96, 512, 2), (192, 1024, 1))),
    "B2": (24, 32, 4, ((32, 96, 1), (64, 384, 1), (128, 768, 3), (256, 1536, 1))),
    "B3": (24, 32, 5, ((32, 128, 1), (64, 512, 1), (128, 1024, 3), (256, 2048, 1))),
    "B4": (32, 48, 6, ((48, 128, 1), (96, 512, 1), (192, 1024, 3), (384, 2048, 1))),
    "B5": (32, 64, 6, ((64, 128, 1), (128, 512, 2), (256, 1024, 5), (512, 2048, 2))),
    "B6": (48, 96, 6, ((96, 192, 2), (192, 512, 3), (384, 1024, 6), (768, 2048, 3))),
}


def _expand(stem_mid: int, stem_out: int, layer_num: int, stages) -> Dict[str, Any]:
    rows, cin = [], stem_out
    for i, (mid, out, nb) in enumerate(stages):
        rows.append((cin, mid, out, nb, i > 0, i >= 2, 5 if i >= 2 else 3, layer_num))
        cin = out
    return {"stem": (3, stem_mid, stem_out), "stages": tuple(rows)}


# Stage row: (in, mid, out, num_blocks, downsample, light_block, kernel, layer_num).
ARCH_CONFIGS: Dict[str, Dict[str, Any]] = {k: _expand(*v) for k, v in _VARIANTS.items()}  # read-only


def _arch(variant: str) -> Dict[str, Any]:
    if variant not in ARCH_CONFIGS:
        raise ValueError(f"unknown HGNetv2 variant {variant!r}; known: {sorted(ARCH_CONFIGS)}")
    return ARCH_CONFIGS[variant]


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
        x = conv_then_norm(self, x, train, features=self.features, kernel=self.kernel, stride=self.stride,
                           groups=self.groups, padding=self.padding, norm_name="bn", frozen_norm=self.frozen_norm,
                           act="relu" if self.use_act else None)
        if self.use_act and self.use_lab:
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
        x1 = max_pool(x, 2, 1)
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

    ``__call__(x [B, H, W, 3], *, train) -> [maps of the stages in return_idx]`` (NHWC, channels
    ``out_channels``). ``freeze_norm=True`` turns every BN into a frozen one (running statistics,
    no ``num_batches_tracked``). ``freeze_at >= 0`` freezes the stem and, unless
    ``freeze_stem_only``, stages ``0..freeze_at``: their outputs are gradient-stopped and
    :meth:`frozen_param_filter` lists their parameters for the optimizer.
    """

    variant: str = "B0"
    use_lab: bool = False
    return_idx: Tuple[int, ...] = (1, 2, 3)
    freeze_at: int = -1
    freeze_norm: bool = False
    freeze_stem_only: bool = True

    @property
    def out_channels(self) -> Tuple[int, ...]:
        """Channels of the returned maps."""
        stages = _arch(self.variant)["stages"]
        return tuple(stages[i][2] for i in self.return_idx)

    def frozen_tops(self) -> Tuple[str, ...]:
        """Top-level submodules frozen by ``freeze_at`` / ``freeze_stem_only`` (official rules)."""
        if self.freeze_at < 0:
            return ()
        stages = () if self.freeze_stem_only else tuple(f"stages_{i}" for i in range(min(self.freeze_at + 1, 4)))
        return ("stem",) + stages

    def frozen_param_filter(self) -> Optional[Callable[[Tuple[str, ...]], bool]]:
        """Predicate over backbone-relative params paths (None when nothing is frozen), see
        ``layers.backbone_freeze_filter``; every BatchNorm is named ``bn``."""
        return backbone_freeze_filter(self.frozen_tops(), self.freeze_norm, "bn")

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> List[jax.Array]:
        arch = _arch(self.variant)
        _, mid, out = arch["stem"]
        kw = dict(use_lab=self.use_lab, frozen_norm=self.freeze_norm)
        frozen = self.frozen_tops()
        x = StemBlock(mid, out, name="stem", **kw)(x, train)
        x = jax.lax.stop_gradient(x) if "stem" in frozen else x
        outs = []
        for i, (cin, cmid, cout, nb, down, light, k, nl) in enumerate(arch["stages"]):
            x = HGStage(cin, cmid, cout, nb, nl, down, light, k, name=f"stages_{i}", **kw)(x, train)
            x = jax.lax.stop_gradient(x) if f"stages_{i}" in frozen else x
            if i in self.return_idx:
                outs.append(x)
        return outs
