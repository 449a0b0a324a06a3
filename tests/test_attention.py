"""``deim_jax.models.attention``: the hand-written gradient of masked softmax attention equals
the autodiff of the textbook formula, with and without a mask, and under ``vmap``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deim_jax.models.attention import attention


def _formula(q, k, v, mask):
    logits = jnp.einsum("bqhc,bkhc->bhqk", q, k)
    if mask is not None:
        logits = jnp.where(mask, -jnp.inf, logits)
    return jnp.einsum("bhqk,bkhc->bqhc", jax.nn.softmax(logits, axis=-1), v)


def _inputs(seed=0, b=2, lq=7, lk=9, h=3, c=4):
    rng = np.random.default_rng(seed)
    q, dy = (jnp.asarray(rng.normal(size=(b, lq, h, c)), jnp.float32) for _ in range(2))
    k, v = (jnp.asarray(rng.normal(size=(b, lk, h, c)), jnp.float32) for _ in range(2))
    mask = rng.random((lq, lk)) < 0.4
    mask[np.arange(lq), np.arange(lq) % lk] = False  # every query may attend somewhere
    return q, k, v, jnp.asarray(mask)[None, None], dy


@pytest.mark.parametrize("masked", [False, True])
def test_values_and_gradients_equal_autodiff_of_the_formula(masked):
    q, k, v, mask, dy = _inputs()
    mask = mask if masked else None
    (y, pull), (y_ref, pull_ref) = (jax.vjp(lambda *a: f(*a, mask), q, k, v) for f in (attention, _formula))
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    for ours, ref, name in zip(pull(dy), pull_ref(dy), "qkv"):
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5, err_msg=name)


def test_vmap_of_the_gradient():
    q, k, v, mask, _ = _inputs(1)
    grad = lambda f: jax.vmap(jax.grad(lambda q: jnp.sum(jnp.sin(f(q[None], k[:1], v[:1], mask)))))
    np.testing.assert_allclose(grad(attention)(q), grad(_formula)(q), rtol=1e-4, atol=1e-5)
