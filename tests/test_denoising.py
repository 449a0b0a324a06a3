"""Contrastive denoising groups: static-shape layout, mask semantics, noise distributions, and the
official mask for M = 3, G = 33."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deim_jax.models import denoising
from deim_jax.models.layers import inverse_sigmoid
from tests import parity_utils as pu

make = jax.jit(
    denoising.make_contrastive_group,
    static_argnames=("num_classes", "num_denoising", "label_noise_ratio", "box_noise_scale", "max_slots",
                     "num_queries"),
)


def _targets(counts, m_pad, seed=0, max_wh=0.3):
    rng = np.random.default_rng(seed)
    b = len(counts)
    labels = rng.integers(0, 80, (b, m_pad)).astype(np.int32)
    cxcy = rng.uniform(0.35, 0.65, (b, m_pad, 2))
    wh = rng.uniform(0.05, max_wh, (b, m_pad, 2))
    boxes = np.concatenate([cxcy, wh], -1).astype(np.float32)
    mask = np.arange(m_pad)[None] < np.asarray(counts)[:, None]
    return jnp.asarray(labels), jnp.asarray(boxes), jnp.asarray(mask)


@pytest.mark.parametrize("counts,m_pad,g_exp", [
    ([0, 0], 4, 0), ([1, 0], 4, 100), ([3, 2], 5, 33), ([7, 1], 8, 14), ([100, 3], 100, 1), ([150, 2], 160, 1),
    ([40, 60], 64, 1), ([2, 51], 64, 1), ([50, 9], 64, 2),
])
def test_group_count_and_layout(counts, m_pad, g_exp):
    labels, boxes, mask = _targets(counts, m_pad)
    g = make(jax.random.PRNGKey(0), labels, boxes, mask, num_classes=80, num_denoising=100, label_noise_ratio=0.0,
             box_noise_scale=0.0, num_queries=300)
    m = max(counts)
    d_max = 2 * max(100, m_pad)
    assert g["query_class"].shape == (2, d_max) and g["query_bbox_unact"].shape == (2, d_max, 4)
    assert g["attn_mask"].shape == (d_max + 300, d_max + 300)
    assert int(g["num_group"]) == g_exp and int(g["max_gt"]) == (m if g_exp else 0)
    n_valid = 2 * m * g_exp
    np.testing.assert_array_equal(np.asarray(g["valid"]), np.arange(d_max) < n_valid)
    cls = np.asarray(g["query_class"])
    unact = np.asarray(g["query_bbox_unact"])
    pos = np.asarray(g["positive"])
    for b, n in enumerate(counts):
        s = np.arange(d_max)
        j = s % (2 * max(m, 1))
        real = (s < n_valid) & ((j % max(m, 1)) < n) & (j < 2 * m)
        exp_pos = (s < n_valid) & (j < n)
        np.testing.assert_array_equal(pos[b], exp_pos)
        # official positive indices: [g*2M + j for g < G for j < n_b]
        np.testing.assert_array_equal(np.nonzero(pos[b])[0],
                                      [gg * 2 * m + jj for gg in range(g_exp) for jj in range(n)])
        t = j % max(m, 1)
        exp_cls = np.where(real, np.asarray(labels)[b][np.minimum(t, m_pad - 1)], 80)
        np.testing.assert_array_equal(cls[b], exp_cls)
        exp_box = np.where(real[:, None], np.asarray(boxes)[b][np.minimum(t, m_pad - 1)], 0.0)
        np.testing.assert_allclose(unact[b], np.asarray(inverse_sigmoid(jnp.asarray(exp_box))), atol=1e-5)


def test_non_contiguous_targets_keep_order():
    labels = jnp.array([[5, 6, 7, 8]], jnp.int32)
    boxes = jnp.tile(jnp.array([0.5, 0.5, 0.2, 0.2]), (1, 4, 1)) * jnp.array([1, 1, 1, 1.0])
    mask = jnp.array([[False, True, False, True]])
    g = make(jax.random.PRNGKey(0), labels, boxes, mask, num_classes=80, num_denoising=10, label_noise_ratio=0.0,
             box_noise_scale=0.0, num_queries=5)
    assert int(g["max_gt"]) == 2 and int(g["num_group"]) == 5
    np.testing.assert_array_equal(np.asarray(g["query_class"])[0, :4], [6, 8, 6, 8])
    np.testing.assert_array_equal(np.asarray(g["target_index"])[0, :4], [1, 3, 1, 3])


def _check_mask(mask, valid, m, g_count, q):
    mask = np.asarray(mask)
    d = valid.shape[0]
    n = 2 * m * g_count
    grp = np.arange(d) // max(2 * m, 1)
    for r in range(d + q):
        row = mask[r]
        if r >= d:  # matching query
            assert row[:d].all() and not row[d:].any()
        elif r < n:  # valid denoising slot
            exp = np.ones(d, bool)
            exp[(np.arange(d) < n) & (grp == grp[r])] = False
            np.testing.assert_array_equal(row[:d], exp)
            assert not row[d:].any()
        else:  # invalid slot: only itself
            exp = np.ones(d + q, bool)
            exp[r] = False
            np.testing.assert_array_equal(row, exp)
    # nobody else attends to an invalid slot
    inv = np.nonzero(~np.asarray(valid))[0]
    for c in inv:
        col = mask[:, c].copy()
        col[c] = True
        assert col.all()


@pytest.mark.parametrize("counts", [[3, 2], [0, 0], [7, 1]])
def test_attention_mask_semantics(counts):
    labels, boxes, mask = _targets(counts, 8)
    g = make(jax.random.PRNGKey(1), labels, boxes, mask, num_classes=80, num_denoising=20, num_queries=6)
    m = max(counts)
    _check_mask(g["attn_mask"], np.asarray(g["valid"]), m, int(g["num_group"]), 6)
    # every softmax row has at least one visible column
    assert (~np.asarray(g["attn_mask"])).any(axis=1).all()


def test_mask_equals_fixture():
    t = np.load(pu.fixture_dir("n") + "/train.npz")
    labels = np.zeros((2, 4), np.int32)
    boxes = np.zeros((2, 4, 4), np.float32)
    mask = np.zeros((2, 4), bool)
    for b in range(2):
        lab, bx = t[f"targets/{b}/labels"], t[f"targets/{b}/boxes"]
        labels[b, :len(lab)], boxes[b, :len(lab)], mask[b, :len(lab)] = lab, bx, True
    g = make(jax.random.PRNGKey(0), labels, boxes, mask, num_classes=80, max_slots=198, num_queries=300)
    assert int(g["num_group"]) == int(t["dn/dn_group/dn_meta/dn_num_group"]) == 33
    assert int(g["max_gt"]) == 3 and bool(g["valid"].all())
    np.testing.assert_array_equal(np.asarray(g["attn_mask"]), t["dn/dn_group/attn_mask"])
    for b in range(2):
        np.testing.assert_array_equal(np.nonzero(np.asarray(g["positive"])[b])[0],
                                      t[f"dn/dn_group/dn_meta/dn_positive_idx/{b}"])
    # padding slots (class 80) coincide with the fixture's
    np.testing.assert_array_equal(np.asarray(g["query_class"]) == 80, t["dn/dn_group/input_query_class"] == 80)


def test_noise_distributions():
    counts = [20] * 16
    labels, boxes, mask = _targets(counts, 20, seed=3, max_wh=0.15)
    g = make(jax.random.PRNGKey(7), labels, boxes, mask, num_classes=80, num_denoising=100, num_queries=4)
    m, gc = 20, 5
    d = 2 * m * gc
    s = np.arange(200)
    t = s % (2 * m) % m
    neg = (s % (2 * m)) >= m
    cls = np.asarray(g["query_class"])[:, :d]
    lab = np.asarray(labels)[:, t[:d]]
    changed = cls != lab
    # label noise: prob 0.25 of resampling uniformly in [0, 80) (a resample keeps the label w.p. 1/80)
    frac = changed.mean()
    assert abs(frac - 0.25 * 79 / 80) < 0.02, frac
    assert cls.min() >= 0 and cls.max() < 80
    # box noise: per coordinate, positives move by r * half-size with r in [0, 1), negatives r in [1, 2)
    box = np.asarray(boxes)[:, t[:d]]
    noised = 1 / (1 + np.exp(-np.asarray(g["query_bbox_unact"], np.float64)[:, :d]))

    def xyxy(bx):
        return np.concatenate([bx[..., :2] - bx[..., 2:] / 2, bx[..., :2] + bx[..., 2:] / 2], -1)

    half = np.concatenate([box[..., 2:], box[..., 2:]], -1) / 2
    r = np.abs(xyxy(noised) - xyxy(box)) / half  # boxes lie well inside: no clipping happens
    assert xyxy(box).min() > 0.0 and (xyxy(box) + 2 * half).max() < 1.0 and (xyxy(box) - 2 * half).min() > 0
    pos_r = r[:, ~neg[:d]]
    assert pos_r.max() < 1.0 + 1e-3 and abs(pos_r.mean() - 0.5) < 0.03
    # negatives: r in [1, 2). When both edges of an axis move inwards by more than the box, the edges
    # cross and the official abs() turns the box over, so the recovered edges may be swapped.
    rec, org, hh = xyxy(noised)[:, neg[:d]], xyxy(box)[:, neg[:d]], half[:, neg[:d]]
    ok = np.zeros(rec.shape, bool)
    for a, bb in ((0, 2), (1, 3)):
        same = [np.abs(rec[..., a] - org[..., a]) / hh[..., a], np.abs(rec[..., bb] - org[..., bb]) / hh[..., bb]]
        swap = [np.abs(rec[..., bb] - org[..., a]) / hh[..., a], np.abs(rec[..., a] - org[..., bb]) / hh[..., bb]]
        inr = lambda x: (x > 1 - 1e-3) & (x < 2 + 1e-3)
        good = (inr(same[0]) & inr(same[1])) | (inr(swap[0]) & inr(swap[1]))
        ok[..., a] = ok[..., bb] = good
    assert ok.all()
    # signs are symmetric
    sgn = np.sign(xyxy(noised) - xyxy(box))
    assert abs(sgn.mean()) < 0.03


def test_clipping_and_abs():
    # a box at the border: noised xyxy is clipped to [0, 1]; widths stay non-negative
    labels = jnp.zeros((1, 1), jnp.int32)
    boxes = jnp.array([[[0.02, 0.98, 0.04, 0.04]]])
    mask = jnp.ones((1, 1), bool)
    g = make(jax.random.PRNGKey(0), labels, boxes, mask, num_classes=3, num_denoising=50, num_queries=2)
    b = 1 / (1 + np.exp(-np.asarray(g["query_bbox_unact"], np.float64)[0, :100]))
    assert (b >= 0).all() and (b <= 1).all()
    x1, x2 = b[:, 0] - b[:, 2] / 2, b[:, 0] + b[:, 2] / 2
    assert x1.min() > -1e-4 and x2.max() < 1 + 1e-4


def test_no_targets_disables_denoising():
    labels, boxes, mask = _targets([0, 0, 0], 3)
    g = make(jax.random.PRNGKey(0), labels, boxes, mask, num_classes=80, num_denoising=100, num_queries=10)
    assert int(g["num_group"]) == 0 and int(g["max_gt"]) == 0
    assert not np.asarray(g["valid"]).any() and not np.asarray(g["positive"]).any()
    assert (np.asarray(g["query_class"]) == 80).all()
    assert np.isfinite(np.asarray(g["query_bbox_unact"])).all()
