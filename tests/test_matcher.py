"""Tests for deim_jax.losses.matcher against scipy.optimize.linear_sum_assignment.

Tolerances are multiples of the float32 epsilon of the compared quantities (documented at each
use); comparisons of integer assignments are exact.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from deim_jax.losses import matcher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("device", "scipy")
EPS32 = float(np.finfo(np.float32).eps)
# The device solver works in float32: its potentials and reduced costs are float32 sums whose
# magnitude is bounded by scale = max|cost| * min(Q, M_valid), each rounded to <= eps * scale per
# operation (~4 per reduced cost, plus the float32 total), so it can only prefer an assignment
# whose total is within a few eps * scale of the optimum: rtol 17 eps (2e-6) of scale.
SOLVER_RTOL = 17 * EPS32

_assign_jit = {m: jax.jit(lambda c, k, m=m: matcher.assign(c, k, method=m)) for m in METHODS}


def _scipy_opt(cost, mask):
    """Optimal total cost (float64) per problem of cost [N, Q, M], mask [N, M]; + index arrays."""
    tot, idx = [], []
    for c, m in zip(cost, mask):
        cols = np.nonzero(m)[0]
        out = np.full(c.shape[0], -1)
        if cols.size:
            r, k = linear_sum_assignment(c[:, cols].astype(np.float64))
            out[r] = cols[k]
            tot.append(c[:, cols][r, k].astype(np.float64).sum())
        else:
            tot.append(0.0)
        idx.append(out)
    return np.array(tot), np.array(idx)


def _check(cost, mask, idx, rtol=SOLVER_RTOL):
    """Assignment is valid and its total cost equals scipy's optimum. Returns scipy indices."""
    cost = np.asarray(cost)
    mask = np.asarray(mask)
    idx = np.asarray(idx)
    N, Q, M = cost.shape
    assert idx.shape == (N, Q) and idx.dtype == np.int32
    ref_tot, ref_idx = _scipy_opt(cost, mask)
    got = np.zeros(N)
    for b in range(N):
        sel = idx[b] >= 0
        js = idx[b][sel]
        assert np.all(js < M) and np.all(mask[b][js]), "matched a padded target"
        assert len(np.unique(js)) == len(js), "target matched twice"
        assert sel.sum() == min(Q, mask[b].sum()), "not a maximum matching"
        got[b] = cost[b][np.nonzero(sel)[0], js].astype(np.float64).sum()
    # float32 solver vs float64 optimum of the same float32 matrix: rounding-level slack.
    scale = np.abs(np.where(mask[:, None, :], cost, 0)).max(axis=(1, 2)) * np.minimum(Q, mask.sum(1)) + 1e-30
    np.testing.assert_array_less(ref_tot - got, rtol * scale + 1e-300)  # never better than optimal
    assert np.all(np.abs(got - ref_tot) <= rtol * scale), np.max(np.abs(got - ref_tot) / scale)
    return ref_idx


def _random_mask(rng, n, m, p_full=0.2, p_empty=0.1):
    counts = rng.integers(0, m + 1, size=n)
    counts[rng.random(n) < p_full] = m
    counts[rng.random(n) < p_empty] = 0
    mask = np.zeros((n, m), bool)
    for b, k in enumerate(counts):
        mask[b, rng.permutation(m)[:k]] = True  # valid targets not necessarily a prefix
    return mask


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (8, 8), (30, 20), (3, 1), (1, 4)])
def test_random_uniform_matches_scipy(method, shape):
    rng = np.random.default_rng(hash(shape) % 2**32)
    Q, M = shape
    n = 400
    cost = rng.random((n, Q, M)).astype(np.float32)
    mask = _random_mask(rng, n, M)
    idx = _assign_jit[method](cost, mask)
    ref_idx = _check(cost, mask, idx)
    # continuous random costs: the optimum is unique, so indices must agree exactly
    np.testing.assert_array_equal(np.asarray(idx), ref_idx)


def _detr_like(rng, n, Q, M, C=7):
    logits = rng.normal(size=(n, Q, C)).astype(np.float32) * 2
    pb = np.concatenate([rng.random((n, Q, 2)), 0.02 + 0.5 * rng.random((n, Q, 2))], -1).astype(np.float32)
    labels = rng.integers(0, C, size=(n, M))
    tb = np.concatenate([rng.random((n, M, 2)), 0.02 + 0.5 * rng.random((n, M, 2))], -1).astype(np.float32)
    return logits, pb, labels, tb


@pytest.mark.parametrize("method", METHODS)
def test_detr_like_costs(method):
    rng = np.random.default_rng(1)
    n, Q, M = 600, 40, 24
    logits, pb, labels, tb = _detr_like(rng, n, Q, M)
    cost = np.asarray(jax.jit(matcher.match_cost)(logits, pb, labels, tb))
    mask = _random_mask(rng, n, M)
    _check(cost, mask, _assign_jit[method](cost, mask))
    # more targets than queries (Dense O2O mosaic+mixup can exceed the query count)
    cost_w = cost[:200, :10]
    mask_w = _random_mask(rng, 200, M, p_full=0.5)
    _check(cost_w, mask_w, _assign_jit[method](cost_w, mask_w))


@pytest.mark.parametrize("method", METHODS)
def test_zero_one_and_max_targets(method):
    rng = np.random.default_rng(2)
    Q, M = 20, 9
    cost = rng.random((3, Q, M)).astype(np.float32)
    mask = np.zeros((3, M), bool)
    mask[1, 4] = True
    mask[2] = True
    idx = np.asarray(_assign_jit[method](cost, mask))
    assert np.all(idx[0] == -1)
    assert (idx[1] >= 0).sum() == 1 and idx[1, np.argmin(cost[1, :, 4])] == 4
    _check(cost, mask, idx)
    # degenerate static shapes: no target slots / no queries
    assert np.all(np.asarray(matcher.assign(np.zeros((2, 5, 0), np.float32), np.zeros((2, 0), bool),
                                            method=method)) == -1)
    assert matcher.assign(np.zeros((2, 0, 4), np.float32), np.ones((2, 4), bool), method=method).shape == (2, 0)
    # square, all valid
    cost_sq = rng.random((50, M, M)).astype(np.float32)
    _check(cost_sq, np.ones((50, M), bool), _assign_jit[method](cost_sq, np.ones((50, M), bool)))


@pytest.mark.parametrize("method", METHODS)
def test_ties_integer_and_constant(method):
    rng = np.random.default_rng(3)
    for Q, M in [(10, 6), (6, 10), (7, 7)]:
        cost = rng.integers(0, 3, size=(320, Q, M)).astype(np.float32)
        cost[300:] = 3.0  # constant matrices: every maximum matching is optimal
        mask = _random_mask(rng, 320, M)
        _check(cost, mask, _assign_jit[method](cost, mask))


@pytest.mark.parametrize("method", METHODS)
def test_huge_and_tiny_magnitudes(method):
    rng = np.random.default_rng(4)
    Q, M = 15, 10
    mask = _random_mask(rng, 300, M)
    huge = (10.0 ** rng.uniform(6, 9, size=(300, Q, M))).astype(np.float32)
    _check(huge, mask, _assign_jit[method](huge, mask))
    tiny = (1e-9 * rng.random((300, Q, M))).astype(np.float32)
    ref_idx = _check(tiny, mask, _assign_jit[method](tiny, mask))
    np.testing.assert_array_equal(np.asarray(_assign_jit[method](tiny, mask)), ref_idx)
    offset = (1e4 + rng.random((300, Q, M))).astype(np.float32)  # large common offset
    # a common offset is exact in float32 (costs 1e4 + U(0, 1) have spacing ~1e-3 = 8192 eps):
    # the solver's sums stay at the offset's scale, 9 eps (1e-6) of it
    _check(offset, mask, _assign_jit[method](offset, mask), rtol=9 * EPS32)


@pytest.mark.parametrize("method", METHODS)
def test_nonfinite_costs_are_sanitized(method):
    rng = np.random.default_rng(5)
    Q, M, n = 12, 8, 300
    cost = rng.random((n, Q, M)).astype(np.float32)
    r = rng.random((n, Q, M))
    cost[r < 0.1] = np.nan
    cost[(r >= 0.1) & (r < 0.2)] = np.inf
    cost[(r >= 0.2) & (r < 0.25)] = -np.inf
    cost[0, :, :] = np.nan          # whole matrix NaN
    cost[1, 3, :] = np.inf          # whole row inf
    cost[2, :, 5] = -np.inf         # whole column -inf
    mask = _random_mask(rng, n, M)
    idx = _assign_jit[method](cost, mask)
    clean = np.asarray(matcher.sanitize_cost(cost, mask))
    assert np.all(np.isfinite(clean))
    np.testing.assert_array_equal(clean[np.isnan(cost)], 1.0)
    fin = np.isfinite(cost)
    np.testing.assert_array_equal(clean[fin], cost[fin])
    # infinities become +-B_b per problem, B_b dominating any sum of its finite entries
    big = np.abs(np.where(fin & mask[:, None, :], cost, 0)).max(axis=(1, 2))
    for b in range(n):
        vals = np.concatenate([clean[b][np.isposinf(cost[b])], -clean[b][np.isneginf(cost[b])]])
        if vals.size:
            assert np.all(vals == vals[0]) and vals[0] >= 2 * (big[b] + 1) * min(Q, M)
    # every valid row/column entry finite and the solver exact on the sanitized matrix
    # (tolerance from its finite, O(1..B) magnitudes)
    _check(clean, mask, idx)
    # huge finite values are clipped to COST_BOUND
    huge = np.asarray(matcher.sanitize_cost(np.array([[[3e12, -3e12, 1.0]]], np.float32)))
    np.testing.assert_array_equal(huge, [[[matcher.COST_BOUND, -matcher.COST_BOUND, 1.0]]])


def test_device_and_scipy_agree_and_batched_axes():
    rng = np.random.default_rng(6)
    K, B, Q, M = 4, 6, 25, 12
    cost = rng.random((K, B, Q, M)).astype(np.float32)
    mask = _random_mask(rng, B, M)
    # mask [B, M] broadcasts against cost [K, B, Q, M]
    a = np.asarray(jax.jit(lambda c, m: matcher.assign(c, m, method="device"))(cost, mask))
    s = np.asarray(jax.jit(lambda c, m: matcher.assign(c, m, method="scipy"))(cost, mask))
    assert a.shape == (K, B, Q)
    np.testing.assert_array_equal(a, s)
    # jax.vmap over an extra leading axis gives the same as the batched call
    for method in METHODS:
        v = jax.jit(jax.vmap(lambda c, m=method: matcher.assign(c, jnp.asarray(mask), method=m)))(cost)
        np.testing.assert_array_equal(np.asarray(v), a)
    tot = np.asarray(matcher.matched_cost(cost, a))
    ref, _ = _scipy_opt(cost.reshape(-1, Q, M), np.broadcast_to(mask, (K, B, M)).reshape(-1, M))
    # matched_cost: a float32 sum of <= M nonnegative costs vs the float64 sum of the same
    # float32 values: recursive summation error <= (M - 1) eps of the total
    np.testing.assert_allclose(tot.reshape(-1), ref, rtol=M * EPS32)
    assert matcher.assign(cost, mask, method="auto").shape == (K, B, Q)
    with pytest.raises(ValueError):
        matcher.assign(cost, mask, method="greedy")


def test_no_gradient_through_matcher():
    rng = np.random.default_rng(7)
    cost = jnp.asarray(rng.random((2, 6, 4)).astype(np.float32))
    mask = jnp.ones((2, 4), bool)

    def loss(c):
        idx = matcher.assign(c, mask, method="device")
        return matcher.matched_cost(c, idx).sum(), idx

    g, idx = jax.jit(jax.grad(loss, has_aux=True))(cost)
    g, idx = np.asarray(g), np.asarray(idx)
    expect = np.zeros(cost.shape, np.float32)
    for b in range(2):
        for q in range(6):
            if idx[b, q] >= 0:
                expect[b, q, idx[b, q]] = 1.0
    np.testing.assert_array_equal(g, expect)


def _np_match_cost(logits, pb, labels, tb, alpha=0.25, gamma=2.0):
    """Direct numpy transcription of reference §7 for one image, in float32 like the
    official (PyTorch float32) code: -log(1 - p + 1e-8) near p = 1 depends on it."""
    f = np.float32
    p = (f(1) / (f(1) + np.exp(-logits.astype(f)))).astype(f)
    pg = p[:, labels]
    neg = f(1 - alpha) * pg ** f(gamma) * (-np.log(f(1) - pg + f(1e-8)))
    pos = f(alpha) * (f(1) - pg) ** f(gamma) * (-np.log(pg + f(1e-8)))
    c_class = (pos - neg).astype(np.float64)
    c_bbox = np.abs(pb[:, None, :].astype(np.float64) - tb[None, :, :]).sum(-1)

    def xyxy(b):
        b = b.astype(np.float64)
        w, h = np.maximum(b[:, 2], 0), np.maximum(b[:, 3], 0)
        return np.stack([b[:, 0] - w / 2, b[:, 1] - h / 2, b[:, 0] + w / 2, b[:, 1] + h / 2], -1)

    a, b = xyxy(pb), xyxy(tb)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None] - inter
    iou = inter / union
    lt = np.minimum(a[:, None, :2], b[None, :, :2])
    rb = np.maximum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    hull = wh[..., 0] * wh[..., 1]
    giou = iou - (hull - union) / hull
    return 5 * c_bbox + 2 * c_class + 2 * (-giou)


def _np_cost_noise(logits, pb, labels, tb, weights=(2.0, 5.0, 2.0), alpha=0.25, gamma=2.0):
    """Float32 noise of each entry of match_cost vs _np_match_cost [Q, M].

    Both evaluate the class cost in float32, and XLA's and numpy's exp may round p differently
    by up to 2 ulps (none once saturated: 1 - p < eps / 8 rounds to exactly 1 in any faithful
    evaluation); the log terms amplify that by (1 - a) p^g / (1 - p + 1e-8) and
    a (1 - p)^g / (p + 1e-8), the prefactors by their derivatives. Every other rounding is a few
    (4) eps of the magnitudes of the summed parts (GIoU in [-1, 1]).
    """
    w_class, w_bbox, w_giou = weights
    p = (1 / (1 + np.exp(-logits.astype(np.float64))))[:, labels]
    dp = np.where((1 - p < EPS32 / 8) | (p < 1e-30), 0.0,
                  2 * np.spacing(p.astype(np.float32)).astype(np.float64))
    log_p, log_q = -np.log(p + 1e-8), -np.log(1 - p + 1e-8)
    sens = ((1 - alpha) * (p ** gamma / (1 - p + 1e-8) + gamma * p ** (gamma - 1) * log_q)
            + alpha * ((1 - p) ** gamma / (p + 1e-8) + gamma * (1 - p) ** (gamma - 1) * log_p))
    l1 = np.abs(pb[:, None, :].astype(np.float64) - tb[None, :, :]).sum(-1)
    mag = (w_bbox * l1 + w_class * (alpha * (1 - p) ** gamma * log_p + (1 - alpha) * p ** gamma * log_q)
           + w_giou * 2.0)
    return w_class * sens * dp + 4 * EPS32 * mag


def test_match_cost_matches_numpy_reference():
    rng = np.random.default_rng(8)
    n, Q, M = 4, 30, 11
    logits, pb, labels, tb = _detr_like(rng, n, Q, M, C=80)
    logits[0, :3] = [40.0] * 80  # saturated probabilities exercise the 1e-8 eps
    got = np.asarray(matcher.match_cost(logits, pb, labels, tb))
    assert got.shape == (n, Q, M)
    for b in range(n):
        diff = np.abs(got[b] - _np_match_cost(logits[b], pb[b], labels[b], tb[b]))
        assert np.all(diff <= _np_cost_noise(logits[b], pb[b], labels[b], tb[b])), np.max(diff)
    # several outputs [K, B, Q, C] against one set of targets [B, M] (criterion usage)
    stacked = np.asarray(matcher.match_cost(np.stack([logits, logits[::-1]]), np.stack([pb, pb[::-1]]),
                                            labels, tb))
    np.testing.assert_array_equal(stacked[0], got)
    diff = np.abs(stacked[1, 0] - _np_match_cost(logits[-1], pb[-1], labels[0], tb[0]))
    assert np.all(diff <= _np_cost_noise(logits[-1], pb[-1], labels[0], tb[0]))
    # degenerate (zero-size) boxes give NaN GIoU in the reference -> 1.0 after sanitizing
    tb0 = tb.copy()
    tb0[:, 0, 2:] = 0.0
    pb0 = pb.copy()
    pb0[:, 0, :] = tb0[:, 0, :]
    c0 = np.asarray(matcher.match_cost(logits, pb0, labels, tb0))
    assert np.all(np.isfinite(c0)) and np.all(c0[:, 0, 0] == 1.0)
    # custom weights are honoured
    w = np.asarray(matcher.match_cost(logits, pb, labels, tb, weights=(1.0, 0.0, 0.0)))
    p = 1 / (1 + np.exp(-logits[1].astype(np.float64)))[:, labels[1]]
    ref = 0.25 * (1 - p) ** 2 * -np.log(p + 1e-8) - 0.75 * p ** 2 * -np.log(1 - p + 1e-8)
    # float32 class cost vs its float64 value: the same noise with weights (1, 0, 0)
    assert np.all(np.abs(w[1] - ref) <= _np_cost_noise(logits[1], pb[1], labels[1], tb[1],
                                                          weights=(1.0, 0.0, 0.0)))


def test_sharded_assign_solves_per_device():
    """With 4 forced host devices, each scipy callback sees only its local shard."""
    code = textwrap.dedent("""
        import os
        os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
        import numpy as np, jax, jax.numpy as jnp
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from deim_jax.losses import matcher
        seen = []
        orig = matcher._scipy_host
        def spy(c, m):
            seen.append(np.shape(c)); return orig(c, m)
        matcher._scipy_host = spy
        assert jax.device_count() == 4
        mesh = Mesh(np.array(jax.devices()), ('data',))
        rng = np.random.default_rng(0)
        cost = rng.random((8, 30, 6)).astype(np.float32)
        mask = rng.random((8, 6)) < 0.7
        ref = np.asarray(matcher.assign(cost, mask, method='device'))
        c = jax.device_put(cost, NamedSharding(mesh, P('data')))
        m = jax.device_put(mask, NamedSharding(mesh, P('data')))
        for method in ('scipy', 'device'):
            f = jax.jit(lambda c, m: matcher.assign_sharded(c, m, mesh, 'data', method=method))
            out = f(c, m)
            np.testing.assert_array_equal(np.asarray(out), ref)
            assert out.sharding.spec[0] == 'data'
        assert seen and all(s == (2, 30, 6) for s in seen), seen
        # extra leading axis K, batch on axis 1
        cost2 = np.stack([cost, cost[::-1]])
        mask2 = np.stack([mask, mask[::-1]])
        out2 = jax.jit(lambda c, m: matcher.assign_sharded(c, m, mesh, method='scipy',
                                                          batch_axis=1))(cost2, mask2)
        np.testing.assert_array_equal(np.asarray(out2)[0], ref)
        np.testing.assert_array_equal(np.asarray(out2)[1], ref[::-1])
        print('OK')
    """)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=300)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr
