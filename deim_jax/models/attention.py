"""Scaled dot-product attention with a hand-written gradient (normalise after the value product).

``attention(q, k, v, mask)`` equals ``softmax(q k^T, masked) v`` per head. Shapes: ``q``
[B, Lq, H, C] (already scaled by C^-0.5), ``k``/``v`` [B, Lk, H, C]; ``mask`` bool, broadcastable
to [B, H, Lq, Lk], True = may not attend, or None. Returns [B, Lq, H, C].

Why not autodiff of ``jax.nn.softmax``: the [B, H, Lq, Lk] probabilities are the largest tensors
in the decoder, and on CPU every pass over them runs at memory speed. Here the forward divides
the [B, Lq, H, C] product by the row sums instead of dividing the probabilities, and the backward
takes the row term of the softmax gradient from ``sum_c(dO * O)`` (a [B, Lq, H] reduction over C)
instead of a reduction over Lk, so each direction makes fewer passes over the big tensor.
"""

from typing import Optional

import jax
import jax.numpy as jnp


def _unnormalised(q, k, mask):
    """exp(logits - rowmax) [B, H, Lq, Lk] (float32 or wider) and its row sums [B, Lq, H, 1]."""
    logits = jnp.einsum("bqhc,bkhc->bhqk", q, k)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    if mask is not None:
        logits = jnp.where(mask, -jnp.inf, logits)
    p = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
    rows = p.sum(axis=-1).transpose(0, 2, 1)[..., None]
    return p, rows


@jax.custom_vjp
def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    return _forward(q, k, v, mask)[0]


def _forward(q, k, v, mask):
    p, rows = _unnormalised(q, k, mask)
    p = p.astype(v.dtype)
    out = (jnp.einsum("bhqk,bkhc->bqhc", p, v) / rows).astype(v.dtype)
    return out, (q, k, v, mask, p, rows, out)


def _backward(residuals, d_out):
    q, k, v, mask, p, rows, out = residuals
    g = (d_out / rows).astype(v.dtype)  # dO with the row normalisation folded in, [B, Lq, H, C]
    row_term = (d_out * out).sum(axis=-1, keepdims=True) / rows  # [B, Lq, H, 1]
    d_v = jnp.einsum("bhqk,bqhc->bkhc", p, g)
    d_p = jnp.einsum("bqhc,bkhc->bhqk", g, v)
    d_logits = (p * (d_p - row_term.transpose(0, 2, 1, 3).astype(d_p.dtype))).astype(q.dtype)
    d_q = jnp.einsum("bhqk,bkhc->bqhc", d_logits, k)
    d_k = jnp.einsum("bhqk,bqhc->bkhc", d_logits, q)
    return d_q, d_k, d_v, None


attention.defvjp(_forward, _backward)
