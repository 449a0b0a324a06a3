"""HybridEncoder (D-FINE version, and the RT-DETRv2 variant) in Flax linen.

``HybridEncoder(...)(feats, train)``: ``feats`` is a list of NHWC backbone maps
(finest first, channels ``in_channels``, strides ``feat_strides``); returns a
list of NHWC maps with ``hidden_dim`` channels, finest first, same sizes.

Flow: 1x1 conv+BN input projections (``input_proj_i``); one post-norm
transformer layer (``encoder_0/layers_0``) over the levels in
``use_encoder_idx`` with a 2-D sin-cos position embedding; top-down FPN
(``lateral_convs_k``, nearest x2 upsample, ``fpn_blocks_k`` on
[upsampled, lateral input]); bottom-up PAN (``downsample_convs_k``,
``pan_blocks_k`` on [downsampled, lateral-conv output]).

The wiring is shared; the three block types depend on ``version``:
  'dfine'     lateral 1x1 conv+BN (no act), SCDown, RepNCSPELAN4;
  'rtdetrv2'  lateral 1x1 conv+BN+act, 3x3 s2 conv+BN+act, CSPRepLayer (CSPLayer).
(Any version other than 'dfine' selects the RT-DETRv2 blocks, as the official code does.)
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deim_jax.models.activations import get_activation
from deim_jax.models.layers import ConvNorm, LayerNorm, MultiheadAttention, conv, torch_kernel_init

VERSIONS = ("dfine", "rtdetrv2")  # values of HybridEncoder.version


def build_2d_sincos_position_embedding(w: int, h: int, embed_dim: int, temperature: float = 10000.0) -> np.ndarray:
    """[1, w*h, embed_dim] float32 table, exactly as the official builder.

    Token k gets ``concat(sin(a w), cos(a w), sin(b w), cos(b w))`` with
    ``a = k // h``, ``b = k % h`` and ``w_d = 1 / T^(d / (embed_dim/4))``.
    On a square map (raster tokens k = y*W + x) a is the row, b the column.
    """
    if embed_dim % 4 != 0:
        raise ValueError("embed_dim must be divisible by 4 for the 2D sin-cos position embedding")
    pos_dim = embed_dim // 4
    omega = np.arange(pos_dim, dtype=np.float32) / np.float32(pos_dim)
    omega = (1.0 / (np.float32(temperature) ** omega)).astype(np.float32)
    k = np.arange(w * h)
    a = (k // h).astype(np.float32)
    b = (k % h).astype(np.float32)
    out_a = a[:, None] * omega[None, :]
    out_b = b[:, None] * omega[None, :]
    pe = np.concatenate([np.sin(out_a), np.cos(out_a), np.sin(out_b), np.cos(out_b)], axis=1)
    return pe[None].astype(np.float32)


def _conv_norm(features, kernel, stride=1, groups=1, act=None, name=None):
    """ConvNormLayer(_fuse): conv (no bias, pad (k-1)//2) ``conv`` -> BN ``norm`` -> act."""
    return ConvNorm(features, kernel, stride=stride, groups=groups, act=act, norm_name="norm", name=name)


class VGGBlock(nn.Module):
    """act(BN(conv3x3(x)) + BN(conv1x1(x))); submodules ``conv1`` (3x3), ``conv2`` (1x1), or the
    one re-parameterized 3x3 conv ``conv`` (with bias) when the variables hold it
    (``deim_jax.models.fusion``, the official ``convert_to_deploy``)."""

    features: int
    act: str = "silu"

    @nn.compact
    def __call__(self, x, train: bool):
        if not self.is_initializing() and "conv" in self.variables.get("params", {}):
            y = conv(self.features, 3, use_bias=True, name="conv")(x)
        else:
            y = _conv_norm(self.features, 3, name="conv1")(x, train) + _conv_norm(self.features, 1, name="conv2")(x, train)
        return get_activation(self.act)(y)


class CSPLayer(nn.Module):
    """conv3(bottlenecks(conv1(x)) + conv2(x)); hidden = int(out * expansion); conv3 only if hidden != out."""

    features: int
    num_blocks: int = 3
    expansion: float = 1.0
    act: str = "silu"

    @nn.compact
    def __call__(self, x, train: bool):
        hidden = int(self.features * self.expansion)
        x2 = _conv_norm(hidden, 1, act=self.act, name="conv2")(x, train)
        x1 = _conv_norm(hidden, 1, act=self.act, name="conv1")(x, train)
        for j in range(self.num_blocks):
            x1 = VGGBlock(hidden, act=self.act, name=f"bottlenecks_{j}")(x1, train)
        y = x1 + x2
        if hidden != self.features:
            y = _conv_norm(self.features, 1, act=self.act, name="conv3")(y, train)
        return y


class RepNCSPELAN4(nn.Module):
    """cv4(cat[y0, y1, y2, y3]) with (y0, y1) = split(cv1(x)), y2 = cv2(y1), y3 = cv3(y2).

    ``cv2``/``cv3`` are Sequential(CSPLayer(-> c4, n), 3x3 ConvNorm c4): submodules
    ``cv2_0``, ``cv2_1``, ``cv3_0``, ``cv3_1``.
    """

    c2: int
    c3: int
    c4: int
    n: int = 1
    act: str = "silu"

    @nn.compact
    def __call__(self, x, train: bool):
        y = _conv_norm(self.c3, 1, act=self.act, name="cv1")(x, train)
        half = self.c3 // 2
        ys = [y[..., :half], y[..., half:]]
        for name in ("cv2", "cv3"):
            t = CSPLayer(self.c4, self.n, 1.0, self.act, name=f"{name}_0")(ys[-1], train)
            t = _conv_norm(self.c4, 3, act=self.act, name=f"{name}_1")(t, train)
            ys.append(t)
        return _conv_norm(self.c2, 1, act=self.act, name="cv4")(jnp.concatenate(ys, axis=-1), train)


class SCDown(nn.Module):
    """1x1 ConvNorm ``cv1`` then depthwise k x k stride-s ConvNorm ``cv2``, no activations."""

    features: int
    kernel: int = 3
    stride: int = 2

    @nn.compact
    def __call__(self, x, train: bool):
        x = _conv_norm(self.features, 1, name="cv1")(x, train)
        return _conv_norm(self.features, self.kernel, self.stride, groups=self.features, name="cv2")(x, train)


class TransformerEncoderLayer(nn.Module):
    """Post-norm layer: LN1(x + MHA(x+pos, x+pos, x)), then LN2(x + linear2(act(linear1(x)))). x: [B, N, d]."""

    d_model: int
    nhead: int
    dim_feedforward: int
    dropout: float = 0.0
    activation: str = "gelu"

    @nn.compact
    def __call__(self, src, pos_embed=None, train: bool = False):
        if self.dropout > 0:
            raise NotImplementedError("TransformerEncoderLayer: dropout > 0 is not implemented")
        q = k = src if pos_embed is None else src + pos_embed
        attn = MultiheadAttention(self.nhead, name="self_attn")(q, k, src)
        src = LayerNorm(name="norm1")(src + attn)
        h = nn.Dense(self.dim_feedforward, kernel_init=torch_kernel_init, name="linear1")(src)
        h = get_activation(self.activation)(h)
        h = nn.Dense(self.d_model, kernel_init=torch_kernel_init, name="linear2")(h)
        return LayerNorm(name="norm2")(src + h)


class TransformerEncoder(nn.Module):
    """``num_layers`` layers ``layers_i`` made by ``make_layer`` (a TransformerEncoderLayer), no final norm."""

    make_layer: Callable[..., nn.Module]
    num_layers: int

    @nn.compact
    def __call__(self, src, pos_embed=None, train: bool = False):
        for i in range(self.num_layers):
            src = self.make_layer(name=f"layers_{i}")(src, pos_embed, train)
        return src


def _upsample2(x):
    """Nearest-neighbour x2 on NHWC (F.interpolate(scale_factor=2, mode='nearest'))."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class HybridEncoder(nn.Module):
    """D-FINE HybridEncoder. ``__call__(feats: list of NHWC maps, train) -> list of NHWC maps (finest first)``.

    Eval mode with ``eval_spatial_size`` uses the position embedding table
    precomputed for that size (the input must then be that size); train mode,
    or ``eval_spatial_size=None``, builds it for the actual map size.
    """

    in_channels: Tuple[int, ...] = (512, 1024, 2048)
    feat_strides: Tuple[int, ...] = (8, 16, 32)
    hidden_dim: int = 256
    dim_feedforward: int = 1024
    use_encoder_idx: Tuple[int, ...] = (2,)
    num_encoder_layers: int = 1
    nhead: int = 8
    dropout: float = 0.0
    enc_act: str = "gelu"
    act: str = "silu"
    expansion: float = 1.0
    depth_mult: float = 1.0
    pe_temperature: float = 10000.0
    eval_spatial_size: Optional[Tuple[int, int]] = (640, 640)
    version: str = "dfine"

    # ---- blocks that differ between versions -------------------------------------------------
    def _num_blocks(self) -> int:
        return round(3 * self.depth_mult)

    def _lateral(self, k):
        act = None if self.version == "dfine" else self.act
        return _conv_norm(self.hidden_dim, 1, act=act, name=f"lateral_convs_{k}")

    def _downsample(self, k):
        if self.version == "dfine":
            return SCDown(self.hidden_dim, 3, 2, name=f"downsample_convs_{k}_0")
        return _conv_norm(self.hidden_dim, 3, 2, act=self.act, name=f"downsample_convs_{k}")

    def _csp_block(self, name):
        hd = self.hidden_dim
        if self.version == "dfine":
            c4 = round(self.expansion * hd // 2)
            return RepNCSPELAN4(hd, hd * 2, c4, self._num_blocks(), self.act, name=name)
        return CSPLayer(hd, self._num_blocks(), self.expansion, self.act, name=name)

    # ---- shared wiring ---------------------------------------------------------------------
    def _pos_embed(self, level: int, h: int, w: int, train: bool):
        if train or self.eval_spatial_size is None:
            return jnp.asarray(build_2d_sincos_position_embedding(w, h, self.hidden_dim, self.pe_temperature))
        stride = self.feat_strides[level]
        eh, ew = self.eval_spatial_size[0] // stride, self.eval_spatial_size[1] // stride
        if (eh, ew) != (h, w):
            raise ValueError(
                f"HybridEncoder eval mode uses the position embedding precomputed for eval_spatial_size="
                f"{tuple(self.eval_spatial_size)} (map {eh}x{ew} at stride {stride}), but the map is {h}x{w}; "
                f"feed {tuple(self.eval_spatial_size)} images or set eval_spatial_size=None"
            )
        return jnp.asarray(build_2d_sincos_position_embedding(ew, eh, self.hidden_dim, self.pe_temperature))

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array], train: bool):
        if len(feats) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} feature maps, got {len(feats)}")
        if self.dropout > 0:
            raise NotImplementedError("HybridEncoder: dropout > 0 is not implemented")
        hd = self.hidden_dim
        n_lvl = len(self.in_channels)
        proj = [_conv_norm(hd, 1, name=f"input_proj_{i}")(f, train) for i, f in enumerate(feats)]

        for i, enc_ind in enumerate(self.use_encoder_idx):
            b, h, w, _ = proj[enc_ind].shape
            src = proj[enc_ind].reshape(b, h * w, hd)
            pos = self._pos_embed(enc_ind, h, w, train).astype(src.dtype)
            layer = functools.partial(TransformerEncoderLayer, hd, self.nhead, self.dim_feedforward, self.dropout,
                                      self.enc_act)
            mem = TransformerEncoder(layer, self.num_encoder_layers, name=f"encoder_{i}")(src, pos, train)
            proj[enc_ind] = mem.reshape(b, h, w, hd)

        # top-down FPN
        inner = [proj[-1]]
        for idx in range(n_lvl - 1, 0, -1):
            k = n_lvl - 1 - idx
            high = self._lateral(k)(inner[0], train)
            inner[0] = high
            up = _upsample2(high)
            inner.insert(0, self._csp_block(f"fpn_blocks_{k}")(jnp.concatenate([up, proj[idx - 1]], axis=-1), train))

        # bottom-up PAN
        outs = [inner[0]]
        for idx in range(n_lvl - 1):
            down = self._downsample(idx)(outs[-1], train)
            outs.append(self._csp_block(f"pan_blocks_{idx}")(jnp.concatenate([down, inner[idx + 1]], axis=-1), train))
        return outs
