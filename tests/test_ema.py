"""EMA decay values vs schedule.json, and the EMA update over params and batch stats."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deim_jax.train import ema as ema_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY = os.environ.get("DEIM_PARITY_DIR", os.path.join(REPO, "..", "shared", "parity"))


@pytest.mark.parametrize("model", ["n", "l", "rtdetrv2_r18"])
def test_every_ema_decay_in_schedule_json(model):
    if not os.path.isdir(PARITY):
        pytest.skip(f"parity fixtures not found at {PARITY}")
    d = json.load(open(os.path.join(PARITY, model, "schedule.json")))
    e = d["ema"]
    entries = d["iterations"] + d["dense"]
    u = np.array([x["iter"] + 1 for x in entries])  # the EMA update after step t is update number t + 1
    ref = np.array([x["ema_decay"] for x in entries])
    got = np.asarray(jax.jit(lambda u: ema_lib.ema_decay(u, e["decay"], e["warmups"]))(u))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=0)
    # the formula itself, in float64
    np.testing.assert_allclose(e["decay"] * (1 - np.exp(-u / e["warmups"])), ref, rtol=1e-12, atol=0)


def test_ema_update_params_and_batch_stats():
    rng = np.random.default_rng(0)
    ema = {
        "params": {"w": rng.normal(size=(3, 2)).astype(np.float32)},
        "batch_stats": {"bn": {"mean": rng.normal(size=(2,)).astype(np.float32),
                               "var": rng.uniform(size=(2,)).astype(np.float32),
                               "num_batches_tracked": np.array(7, np.int32)}},
    }
    new = jax.tree_util.tree_map(lambda x: (x + 1).astype(x.dtype) * 2, ema)
    upd = jax.jit(lambda a, b, u: ema_lib.ema_update(a, b, u, 0.9999, 1000))
    out = upd(ema, new, 5)
    d = np.float32(0.9999 * (1 - np.exp(-5 / 1000)))
    for path in (("params", "w"), ("batch_stats", "bn", "mean"), ("batch_stats", "bn", "var")):
        v, n, o = ema, new, out
        for k in path:
            v, n, o = v[k], n[k], o[k]
        # torch: v *= d; v += (1 - d) * new   (float32)
        want = v * d + (np.float32(1) - d) * n
        np.testing.assert_allclose(np.asarray(o), want, rtol=1e-6, atol=1e-7)
        assert o.dtype == jnp.float32
    nbt = out["batch_stats"]["bn"]["num_batches_tracked"]
    assert nbt.dtype == jnp.int32 and int(nbt) == 7  # integer leaves keep the EMA's own value


def test_ema_sequence_counts_updates_from_one():
    # three updates after steps t = 0, 1, 2 use decays d(1), d(2), d(3)
    v = jnp.zeros(()); target = jnp.ones(())
    ref = 0.0
    for t in range(3):
        v = ema_lib.ema_update(v, target, t + 1, 0.9999, 1000)
        d = 0.9999 * (1 - np.exp(-(t + 1) / 1000))
        ref = d * ref + (1 - d) * 1.0
    np.testing.assert_allclose(float(v), ref, rtol=1e-6)


def test_ema_via_optax_is_bit_equal_to_the_official_formula():
    """``ema_apply`` (optax.incremental_update) == ``v * d + (1 - d) * new`` bit for bit, eager and in jit,
    over decays from the warm-up (tiny d) to the plateau (d close to 1)."""
    rng = np.random.default_rng(1)
    v = rng.normal(size=(4096,)).astype(np.float32) * 10
    n = (v + rng.normal(size=v.shape).astype(np.float32)).astype(np.float32)

    def formula(v, n, d):
        d = jnp.asarray(d, jnp.float32)
        return v * d + (1 - d) * n

    for u in (1, 2, 7, 100, 1000, 5000, 100_000):
        d = ema_lib.ema_decay(u, 0.9999, 1000)
        for fn in (lambda f: f, jax.jit):
            got = np.asarray(fn(lambda a, b, c: ema_lib.ema_apply(a, b, c))(v, n, d))
            want = np.asarray(fn(formula)(v, n, d))
            assert got.tobytes() == want.tobytes(), u
