"""The decoder layer of both families and its container (torch ``decoder.decoder``).

Tokens are [B, Q, d]; reference boxes are normalized cxcywh. Submodule names are the PyTorch
attributes (``self_attn``, ``norm1``, ``cross_attn``, ``gateway`` or ``norm2``, ``linear1``,
``linear2``, ``norm3``), so converted state dicts feed these modules directly.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from deim_jax.models.deformable_attention import MSDeformableAttention
from deim_jax.models.activations import get_activation
from deim_jax.models.layers import LayerNorm, MultiheadAttention, xavier_uniform

FP16_MAX = 65504.0


class Gate(nn.Module):
    """``LN(g1 * x1 + g2 * x2)`` with ``[g1, g2] = sigmoid(Linear(cat[x1, x2]))`` (zero init)."""

    d_model: int

    @nn.compact
    def __call__(self, x1, x2):
        g = jax.nn.sigmoid(
            nn.Dense(2 * self.d_model, kernel_init=nn.initializers.zeros, name="gate")(jnp.concatenate([x1, x2], -1))
        )
        g1, g2 = jnp.split(g, 2, axis=-1)
        return LayerNorm(name="norm")(g1 * x1 + g2 * x2)


class DecoderLayer(nn.Module):
    """Post-norm decoder layer.

    ``t = LN1(t + MHA(t+pos, t+pos, t))``; ``a = MSDA(t + pos, ref, value)``; then
    ``gated`` (D-FINE): ``t = Gate(t, a)`` and the FFN sum is clamped to +-65504 before ``LN3``;
    otherwise (RT-DETRv2): ``t = LN2(t + a)``. Finally ``LN3(t + linear2(act(linear1(t))))``.
    ``use_projections``: the cross-attention has ``value_proj`` / ``output_proj`` (RT-DETRv2;
    ``value`` is then the raw memory [B, S, d], otherwise ``split_heads(memory)``).
    ``attn_mask`` [Q', Q'] bool, True = blocked (or None); ``pos`` [B, Q, d].
    """

    d_model: int
    nhead: int
    dim_feedforward: int
    num_points: Tuple[int, ...]
    activation: str
    gated: bool
    use_projections: bool
    cross_attn_method: str = "default"

    @nn.compact
    def __call__(self, tgt, ref, value, spatial_shapes, attn_mask, pos):
        q = tgt + pos
        mask = None if attn_mask is None else attn_mask[None, None]
        t2 = MultiheadAttention(self.nhead, name="self_attn")(q, q, tgt, mask)
        tgt = LayerNorm(name="norm1")(tgt + t2)
        t2 = MSDeformableAttention(self.d_model, self.nhead, tuple(self.num_points),
                                   use_projections=self.use_projections, method=self.cross_attn_method,
                                   name="cross_attn")(tgt + pos, ref, value, spatial_shapes)
        if self.gated:
            tgt = Gate(self.d_model, name="gateway")(tgt, t2)
        else:
            tgt = LayerNorm(name="norm2")(tgt + t2)
        f = nn.Dense(self.dim_feedforward, kernel_init=xavier_uniform, name="linear1")(tgt)
        f = nn.Dense(self.d_model, kernel_init=xavier_uniform, name="linear2")(get_activation(self.activation)(f))
        out = tgt + f
        if self.gated:
            out = jnp.clip(out, -FP16_MAX, FP16_MAX)
        return LayerNorm(name="norm3")(out)


class LayerStack(nn.Module):
    """Parameter container of torch ``decoder.decoder``: ``layers_i`` and, when ``make_lqe`` is
    given (D-FINE), ``lqe_layers_i``. The parent decoder runs the loop through the lists."""

    make_layer: Callable[[], nn.Module]
    num_layers: int
    make_lqe: Optional[Callable[[], nn.Module]] = None

    def setup(self):
        self.layers = [self.make_layer() for _ in range(self.num_layers)]
        if self.make_lqe is not None:
            self.lqe_layers = [self.make_lqe() for _ in range(self.num_layers)]

    def __call__(self, *args, **kwargs):  # pragma: no cover - used through the layer lists
        raise NotImplementedError
