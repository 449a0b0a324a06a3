"""DEIM criterion: parity with the official losses/matchings in train.npz, unit tests of the pieces.

The parity tests feed the fixture's own model outputs (``<v>/out/...``) and targets, so the only
difference left is the criterion itself (observed: relative differences <= 8.2e-7, DDF terms;
<= 2.2e-7 for all others).

Tolerances. Every comparison of two float32 evaluations (two compiled graphs, JAX vs the PyTorch
fixture, float32 vs a float64 transcription) uses :func:`_sum_rtol`: all loss terms are sums of
n nonnegative elements, each element carries a few ulps of rounding from its exp / log / pow
chain (<= 8 eps), and the relative rounding error of the sum grows like sqrt(n) eps for
independently rounded partial sums (statistical bound, Higham, "Accuracy and Stability of
Numerical Algorithms" §4.2). Comparisons of one graph with itself are exact.
"""

import ast
import dataclasses
import os

import numpy as np
import jax
import jax.numpy as jnp
import optax
import pytest

from deim_jax import configs, losses
from deim_jax.errors import ConfigError
from deim_jax.losses import criterion as C
from deim_jax.losses import matching, terms
from deim_jax.ops import fdr
from tests.parity_utils import load_npz

M_PAD = 5  # targets padded beyond the real maximum (3) to exercise the mask
EPS32 = float(np.finfo(np.float32).eps)


def _sum_rtol(n):
    """Relative float32 noise of a sum of n nonnegative elements (module docstring)."""
    return EPS32 * (8 + np.sqrt(n))


def _crit(config="dfine_n", **changes):
    """The criterion of a config (dfine_*: MAL + boxes + local with the union set; rtdetrv2_*:
    MAL + boxes, own matchings), optionally with fields replaced."""
    return dataclasses.replace(losses.build(configs.get_config(config)), **changes)


# ------------------------------------------------------------------------------------------
# Fixture loading.
# ------------------------------------------------------------------------------------------

def _tree(z, prefix):
    root = {}
    for k in z.files:
        if k.startswith(prefix):
            parts = k[len(prefix):].split("/")
            cur = root
            for p in parts[:-1]:
                cur = cur.setdefault(p, {})
            cur[parts[-1]] = z[k]

    def fix(x):
        if isinstance(x, dict):
            if x and all(k.isdigit() for k in x):
                return [fix(x[str(i)]) for i in range(len(x))]
            return {k: fix(v) for k, v in x.items()}
        return x

    return fix(root)


def _targets(z, m_pad=M_PAD):
    B = 2
    labels = np.zeros((B, m_pad), np.int32)
    boxes = np.zeros((B, m_pad, 4), np.float32)
    mask = np.zeros((B, m_pad), bool)
    for b in range(B):
        lab, box = z[f"targets/{b}/labels"], z[f"targets/{b}/boxes"]
        labels[b, :len(lab)], boxes[b, :len(lab)], mask[b, :len(lab)] = lab, box, True
    return dict(labels=labels, boxes=boxes, mask=mask)


def _outputs(z, v, extra_dn_slots=0, seed=0):
    """Model-format outputs from a fixture variant; optionally pad the DN slots with garbage."""
    out = _tree(z, f"{v}/out/")
    outputs = {k: out[k] for k in out if k not in ("enc_meta", "dn_meta")}
    if "dn_outputs" in out:
        num_group = int(out["dn_meta"]["dn_num_group"])
        D = out["dn_outputs"][0]["pred_logits"].shape[1]
        max_gt = D // (2 * num_group)
        rng = np.random.default_rng(seed)

        def pad(d):
            res = {}
            for k, a in d.items():
                if extra_dn_slots and a.ndim == 3:
                    junk = rng.normal(size=(a.shape[0], extra_dn_slots, a.shape[2])).astype(a.dtype)
                    if k == "pred_boxes" or k == "ref_points":
                        junk = np.abs(junk) * 0.1 + 0.2
                    a = np.concatenate([a, junk], axis=1)
                res[k] = a
            return res

        outputs["dn_outputs"] = [pad(d) for d in out["dn_outputs"]]
        if "dn_pre_outputs" in out:
            outputs["dn_pre_outputs"] = pad(out["dn_pre_outputs"])
        valid = np.arange(D + extra_dn_slots) < D
        outputs["dn_meta"] = dict(num_group=np.int32(num_group), max_gt=np.int32(max_gt), valid=valid)
    return outputs


def _fixture_matchings(z, v, shapes):
    """Fixture matchings as [B, Q] arrays (-1 unmatched); shapes: name -> Q."""
    res = {}
    for name, Q in shapes.items():
        arr = np.full((2, Q), -1, np.int32)
        for b in range(2):
            arr[b, z[f"{v}/matcher/{name}/{b}/src"]] = z[f"{v}/matcher/{name}/{b}/tgt"]
        res[name] = arr
    return res


def _as_pairs(arr):
    arr = np.asarray(arr)
    return {(q, int(arr[q])) for q in range(len(arr)) if arr[q] >= 0}


def _check_union_up_to_ties(mine, names, b, ref):
    """Union set equal to the reference's, except on queries whose most frequent target is a tie
    (the reference's tie order is implementation-defined): there both picks must be tied maxima."""
    got = _as_pairs(mine["union_go"][b])
    assert {q for q, _ in got} == {q for q, _ in ref}
    layers = [n for n in names if n not in ("union_go", "dn")]
    ref_of = dict(ref)
    for q, g in got:
        if ref_of[q] != g:
            counts = np.bincount([int(np.asarray(mine[n][b])[q]) for n in layers
                                  if int(np.asarray(mine[n][b])[q]) >= 0], minlength=max(g, ref_of[q]) + 1)
            assert counts[g] == counts[ref_of[q]] == counts.max(), (b, q, g, ref_of[q], counts)


_JITTED = {}


def _jitted(crit):
    """One compiled (match, loss) pair per criterion configuration, shared by the tests (n and s
    have identical shapes, so s reuses n's compilation)."""
    if crit not in _JITTED:
        _JITTED[crit] = (jax.jit(crit.match), jax.jit(crit))
    return _JITTED[crit]


def _check(name, v, crit, extra_dn_slots=0):
    z = load_npz(name, "train.npz")
    outputs = _outputs(z, v, extra_dn_slots)
    targets = _targets(z)
    B, Q, Cn = outputs["pred_logits"].shape
    rtol = _sum_rtol(B * Q * max(Cn, 4 * (crit.reg_max + 1)))  # the largest sum of any term
    match_fn, loss_fn = _jitted(crit)
    mine = match_fn(outputs, targets)
    # every matching equal as a set of (query, target) pairs, per image
    names = sorted({k.split("/")[2] for k in z.files if k.startswith(f"{v}/matcher/")})
    assert set(names) == set(mine)
    for n in names:
        for b in range(2):
            ref = set(zip(z[f"{v}/matcher/{n}/{b}/src"].tolist(), z[f"{v}/matcher/{n}/{b}/tgt"].tolist()))
            if n == "union_go":
                _check_union_up_to_ties(mine, names, b, ref)
            else:
                assert _as_pairs(mine[n][b]) == ref, (n, b)
    ref_losses = {k[len(f"{v}/loss/"):]: float(z[k]) for k in z.files if k.startswith(f"{v}/loss/")}
    got = {k: float(x) for k, x in loss_fn(outputs, targets, mine).items()}
    assert set(got) == set(ref_losses)
    for k, r in ref_losses.items():
        assert abs(got[k] - r) <= rtol * abs(r), (k, got[k], r)
    total = sum(got.values())
    assert abs(total - float(z[f"{v}/loss_total"])) <= rtol * abs(float(z[f"{v}/loss_total"]))
    # the same with the fixture's own matchings fed in (losses in isolation)
    shapes = {n: np.asarray(mine[n]).shape[1] for n in names}
    fixed = loss_fn(outputs, targets, {k: jnp.asarray(a) for k, a in _fixture_matchings(z, v, shapes).items()})
    for k, r in ref_losses.items():
        assert abs(float(fixed[k]) - r) <= rtol * abs(r), (k, float(fixed[k]), r)
    return got


# ------------------------------------------------------------------------------------------
# Parity.
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,v", [("n", "nodn"), ("n", "dn"), ("s", "nodn"), ("s", "dn")])
def test_parity_n_s(name, v):
    got = _check(name, v, _crit(f"dfine_{name}"))
    assert len(got) == (37 if v == "dn" else 20)


def test_parity_l():
    got = _check("l", "dn", _crit("dfine_l"))
    assert len(got) == 67  # 10 (L-1) + 17 with L = 6


def test_parity_dn_in_larger_static_slot():
    """DN outputs padded from 198 to 200 slots with junk, valid=False: same losses and matchings."""
    _check("n", "dn", _crit("dfine_n"), extra_dn_slots=2)


@pytest.mark.parametrize("v", ["nodn", "dn"])
def test_parity_rtdetrv2_r18(v):
    crit = _crit("rtdetrv2_r18")
    assert crit.losses == ("mal", "boxes") and not crit.use_uni_set
    got = _check("rtdetrv2_r18", v, crit)
    assert len(got) == (21 if v == "dn" else 12)


def test_parity_rtdetrv2_r50_union_tie():
    """r50 (6 layers): every matching and loss equal; its union set has one tie (query 37 of image
    0 is matched once to target 0 and once to target 1) that the reference breaks the other way."""
    got = _check("rtdetrv2_r50", "nodn", _crit("rtdetrv2_r50"))
    assert len(got) == 21


# ------------------------------------------------------------------------------------------
# Units.
# ------------------------------------------------------------------------------------------

def _sig(x):
    return 1 / (1 + np.exp(-x))


def _bce(x, t):
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def _np_iou(a, b):
    def xyxy(c):
        return np.stack([c[..., 0] - c[..., 2] / 2, c[..., 1] - c[..., 3] / 2,
                         c[..., 0] + c[..., 2] / 2, c[..., 1] + c[..., 3] / 2], -1)
    a, b = xyxy(a), xyxy(b)
    lt, rb = np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), -1)
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _random_case(seed=0, B=2, Q=7, Cn=5, M=3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(B, Q, Cn)).astype(np.float32) * 2
    boxes = np.concatenate([rng.uniform(0.3, 0.7, (B, Q, 2)), rng.uniform(0.1, 0.4, (B, Q, 2))], -1).astype(np.float32)
    tboxes = np.concatenate([rng.uniform(0.3, 0.7, (B, M, 2)), rng.uniform(0.1, 0.4, (B, M, 2))], -1).astype(np.float32)
    labels = rng.integers(0, Cn, (B, M)).astype(np.int32)
    idx = np.full((B, Q), -1, np.int32)
    idx[0, [1, 4, 6]] = [2, 0, 1]
    idx[1, [0, 3]] = [1, 0]
    return logits, boxes, tboxes, labels, idx


def _np_cls_loss(logits, boxes, tboxes, labels, idx, n, kind):
    B, Q, Cn = logits.shape
    total = 0.0
    for b in range(B):
        for q in range(Q):
            t = np.zeros(Cn)
            iou = 0.0
            if idx[b, q] >= 0:
                t[labels[b, idx[b, q]]] = 1
                iou = _np_iou(boxes[b, q].astype(np.float64), tboxes[b, idx[b, q]].astype(np.float64))
            x = logits[b, q].astype(np.float64)
            p = _sig(x)
            if kind == "vfl":  # alpha 0.75, gamma 2
                s = iou * t
                w = 0.75 * p ** 2 * (1 - t) + s
            else:  # mal, gamma 1.5
                s = (iou * t) ** 1.5
                w = p ** 1.5 * (1 - t) + t
            total += np.sum(_bce(x, s) * w)
    return total / n


@pytest.mark.parametrize("kind", ["vfl", "mal"])
def test_classification_losses_against_numpy(kind):
    logits, boxes, tboxes, labels, idx = _random_case()
    fn = terms.loss_vfl if kind == "vfl" else terms.loss_mal
    kw = dict(gamma=2.0, alpha=0.75) if kind == "vfl" else dict(gamma=1.5, alpha=None)
    got = float(fn(logits=logits, boxes=boxes, idx=jnp.asarray(idx), tgt_labels=labels,
                   tgt_boxes=tboxes, num_boxes=4.0, **kw))
    ref = _np_cls_loss(logits, boxes, tboxes, labels, idx, 4.0, kind)
    np.testing.assert_allclose(got, ref, rtol=_sum_rtol(logits.size))


def test_focal_against_numpy():
    logits, boxes, tboxes, labels, idx = _random_case(1)
    got = float(terms.loss_focal(logits=logits, idx=jnp.asarray(idx), tgt_labels=labels,
                                 num_boxes=3.0, gamma=2.0, alpha=0.25))
    x = logits.astype(np.float64)
    t = np.zeros_like(x)
    for b, q in zip(*np.where(idx >= 0)):
        t[b, q, labels[b, idx[b, q]]] = 1
    p = _sig(x)
    pt = p * t + (1 - p) * (1 - t)
    ref = np.sum((0.25 * t + 0.75 * (1 - t)) * _bce(x, t) * (1 - pt) ** 2) / 3.0
    np.testing.assert_allclose(got, ref, rtol=_sum_rtol(logits.size))


def test_weighting_function_and_translate_gt():
    w = np.asarray(fdr.weighting_function(32, np.array([0.5]), np.array([4.0])))
    assert w.shape == (33,)
    # expected values printed to 5 decimals: atol 1e-5 is their rounding (float32 noise of
    # values <= 4 is 8 eps * 4 = 3.8e-6 below it)
    np.testing.assert_allclose(w[:4], [-4, -2, -1.78813, -1.59122], atol=1e-5)
    np.testing.assert_allclose(w[14:17], [-0.15775, -0.07599, 0.0], atol=1e-5)
    np.testing.assert_array_equal(w, -w[::-1])  # both halves by the same float32 ops: exact
    d = jnp.array([-10.0, -4.0, 0.0, -0.07599 / 2, 3.0, 4.0, 9.0])
    idx, wr, wl = (np.asarray(a) for a in fdr.translate_gt(d, 32, 0.5, 4.0))
    np.testing.assert_array_equal(idx[[0, 1, 2]], [0, 0, 16])
    np.testing.assert_array_equal([wl[0], wr[0]], [1, 0])  # below range
    np.testing.assert_array_equal([wl[2], wr[2]], [1, 0])  # exactly on a bin (W_16 = 0)
    # halfway between W_15 and W_16 = 0 with W_15 printed to 5 decimals: its rounding (5e-6) over
    # the bin width (0.076) moves the weights by up to 6.6e-5
    np.testing.assert_allclose([idx[3], wl[3], wr[3]], [15, 0.5, 0.5], atol=1e-4)
    np.testing.assert_array_equal(idx[[5, 6]], np.float32(31.9))  # at / above +u2: clamped
    np.testing.assert_array_equal([wl[5], wr[5], wl[6], wr[6]], [0, 1, 0, 1])
    # between W_31 = 2 and W_32 = 4: W_31 = step^15 - 1 carries float32 noise of a pow of 15
    # factors (~16 eps relative, i.e. 4e-6 at 2), which moves the weights by half as much
    np.testing.assert_array_equal(idx[4], 31)
    np.testing.assert_allclose([wl[4], wr[4]], [0.5, 0.5], atol=16 * EPS32 * 2 / 2)
    # round trip: distances of a box from its reference decode back to it; box coordinates
    # (|x| <= 1) carry ~8 eps of noise, amplified by reg_scale / min(ref w, h) = 4 / 0.2 = 20
    ref = jnp.array([0.5, 0.5, 0.2, 0.3])
    dist = jnp.array([0.3, -0.2, 0.1, 0.5])
    box = fdr.distance2bbox(ref, dist, 4.0)
    x1y1 = box[:2] - box[2:] / 2
    x2y2 = box[:2] + box[2:] / 2
    rs = 4.0
    back = jnp.array([(ref[0] - x1y1[0]) / (ref[2] / rs) - rs / 2, (ref[1] - x1y1[1]) / (ref[3] / rs) - rs / 2,
                      (x2y2[0] - ref[0]) / (ref[2] / rs) - rs / 2, (x2y2[1] - ref[1]) / (ref[3] / rs) - rs / 2])
    np.testing.assert_allclose(np.asarray(back), np.asarray(dist), atol=8 * EPS32 * 20)


def test_union_matching_ties_and_counts():
    # 4 matchings, 1 image, 3 queries, 3 targets
    idx = np.array([[[0, 1, -1]], [[0, 2, -1]], [[1, 2, -1]], [[-1, 1, 2]]], np.int32)  # [K=4, B=1, Q=3]
    go = np.asarray(matching.union_matching(jnp.asarray(idx), 3))
    # q0: 0 twice, 1 once -> 0; q1: 1 twice, 2 twice -> tie -> smaller target 1; q2: 2 once
    np.testing.assert_array_equal(go, [[0, 1, 2]])


def test_dn_matching_layout():
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    dn = np.asarray(matching.dn_matching(20, 3, np.arange(20) < 18, mask))  # M=3, G=3 -> 18 slots
    for s in range(20):
        j = s % 6
        assert dn[0, s] == (j if (j < 3 and s < 18) else -1)
        assert dn[1, s] == (j if (j < 2 and s < 18) else -1)


def test_dn_matching_agrees_with_denoising_group():
    """The fixed DN matching from the formula equals the decoder group's positive/target_index."""
    from deim_jax.models import denoising

    labels = np.array([[3, 5, 7, 0], [1, 2, 0, 0]], np.int32)
    boxes = np.full((2, 4, 4), 0.3, np.float32)
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    grp = denoising.make_contrastive_group(jax.random.PRNGKey(0), labels, boxes, mask, 80, max_slots=200)
    D = grp["valid"].shape[0]
    formula = np.asarray(matching.dn_matching(D, grp["max_gt"], grp["valid"], mask))
    from_group = np.where(np.asarray(grp["positive"]), np.asarray(grp["target_index"]), -1)
    np.testing.assert_array_equal(formula, from_group)
    assert int(grp["num_group"]) == 33 and int(np.sum(formula[0] >= 0)) == 99 and int(np.sum(formula[1] >= 0)) == 66


def test_gradients_finite_and_mal_iou_detached():
    z = load_npz("n", "train.npz")
    outputs = _outputs(z, "dn")
    targets = _targets(z)
    crit = _crit("dfine_n")
    m = _jitted(crit)[0](outputs, targets)

    def total(lg, bx, cr):
        o = dict(outputs, pred_logits=lg, pred_boxes=bx, pred_corners=cr)
        return sum(crit(o, targets, m).values())

    g = jax.jit(jax.grad(total, argnums=(0, 1, 2)))(outputs["pred_logits"], outputs["pred_boxes"],
                                                     outputs["pred_corners"])
    for a in g:
        a = np.asarray(a)
        assert np.all(np.isfinite(a)) and np.any(a != 0)
    # MAL: the IoU target is detached -> no gradient w.r.t. boxes
    kw = dict(logits=outputs["pred_logits"], idx=m["final"], tgt_labels=targets["labels"],
              tgt_boxes=targets["boxes"], num_boxes=5.0)
    gm = jax.grad(lambda bx: terms.loss_mal(boxes=bx, gamma=1.5, alpha=None, **kw))(
        jnp.asarray(outputs["pred_boxes"]))
    assert np.all(np.asarray(gm) == 0)
    gv = jax.grad(lambda bx: terms.loss_vfl(boxes=bx, gamma=2.0, alpha=0.75, **kw))(
        jnp.asarray(outputs["pred_boxes"]))
    assert np.all(np.asarray(gv) == 0)


def _synthetic_outputs(rng, B=2, Q=6, Cn=4, L=2, D=8):
    def layer():
        return dict(pred_logits=rng.normal(size=(B, Q, Cn)).astype(np.float32),
                    pred_boxes=np.concatenate([rng.uniform(0.2, 0.8, (B, Q, 2)),
                                               rng.uniform(0.05, 0.3, (B, Q, 2))], -1).astype(np.float32),
                    pred_corners=rng.normal(size=(B, Q, 4 * 33)).astype(np.float32),
                    ref_points=np.concatenate([rng.uniform(0.2, 0.8, (B, Q, 2)),
                                               rng.uniform(0.05, 0.3, (B, Q, 2))], -1).astype(np.float32))

    last = layer()
    # degenerate predictions: negative / zero widths and heights (distance2bbox can produce them)
    last["pred_boxes"][:, 0, 2] = -0.1
    last["pred_boxes"][:, 1, 2:] = 0.0
    aux = [dict(layer(), teacher_corners=last["pred_corners"], teacher_logits=last["pred_logits"])
           for _ in range(L - 1)]
    out = dict(last, up=np.array([0.5], np.float32), reg_scale=np.array([4.0], np.float32), aux_outputs=aux,
               pre_outputs={k: layer()[k] for k in ("pred_logits", "pred_boxes")},
               enc_aux_outputs=[{k: layer()[k] for k in ("pred_logits", "pred_boxes")}])
    dn_last = {k: v[:, :1].repeat(D, 1) for k, v in layer().items()}
    dn_last["pred_boxes"][:, 2, 2] = -0.2
    out["dn_outputs"] = [dict({k: v[:, :1].repeat(D, 1) for k, v in layer().items()},
                              teacher_corners=dn_last["pred_corners"], teacher_logits=dn_last["pred_logits"]),
                         dict(dn_last, teacher_corners=dn_last["pred_corners"],
                              teacher_logits=dn_last["pred_logits"])]
    out["dn_pre_outputs"] = {k: dn_last[k] for k in ("pred_logits", "pred_boxes")}
    out["dn_meta"] = dict(num_group=np.int32(2), max_gt=np.int32(2), valid=np.arange(D) < 8)
    return out


def test_image_without_targets_and_degenerate_boxes_give_finite_gradients():
    rng = np.random.default_rng(3)
    outputs = _synthetic_outputs(rng)
    targets = dict(labels=np.array([[1, 3, 0], [0, 0, 0]], np.int32),
                   boxes=np.array([[[0.4, 0.5, 0.2, 0.3], [0.6, 0.4, 0.1, 0.2], [0, 0, 0, 0]],
                                   [[0, 0, 0, 0]] * 3], np.float32),
                   mask=np.array([[True, True, False], [False, False, False]]))
    crit = _crit("dfine_n", num_classes=4)

    meta = outputs.pop("dn_meta")

    def total(o):
        res = crit(dict(o, dn_meta=meta), targets)
        return sum(res.values()), res

    (_, res), g = jax.jit(jax.value_and_grad(total, has_aux=True))(outputs)
    assert all(np.isfinite(float(v)) for v in res.values())
    assert "loss_ddf_aux_0" in res and "loss_ddf_dn_0" in res and "loss_ddf_dn_1" not in res
    for leaf in jax.tree_util.tree_leaves(g):
        assert np.all(np.isfinite(np.asarray(leaf)))


def test_num_boxes_averaged_over_devices():
    """Per-device criterion (axis_name) averaged over 2 'devices' equals the global-batch one for
    the terms normalized by num_boxes / num_boxes_go (MAL, L1, GIoU, FGL), up to float32 noise
    (two graphs summing in different orders)."""
    z = load_npz("n", "train.npz")
    outputs = _outputs(z, "nodn")
    targets = _targets(z)
    crit = _crit("dfine_n")
    glob = _jitted(crit)[1](outputs, targets, _jitted(crit)[0](outputs, targets))
    dev = dataclasses.replace(crit, axis_name="d")
    split = lambda t: jax.tree_util.tree_map(lambda a: a.reshape((2, 1) + a.shape[1:])  # noqa: E731
                                             if a.ndim >= 2 and a.shape[0] == 2 else np.stack([a, a]), t)
    per = jax.jit(jax.vmap(dev, axis_name="d"))(split(outputs), split(targets))
    for k in glob:
        if "ddf" in k:
            continue
        B, Q, Cn = outputs["pred_logits"].shape
        np.testing.assert_allclose(float(np.mean(per[k])), float(glob[k]),
                                   rtol=_sum_rtol(B * Q * max(Cn, 4 * 33)), err_msg=k)


def test_build_from_config():
    crit = losses.build(configs.get_config("dfine_n"))
    assert tuple(crit.losses) == ("mal", "boxes", "local") and crit.gamma == 1.5 and crit.use_uni_set
    base = losses.build(configs.get_config("dfine_n_baseline"))
    assert tuple(base.losses)[0] == "vfl" and base.gamma == 2.0 and base.alpha == 0.75
    assert dict(crit.weights)["loss_ddf"] == 1.5 and dict(crit.weights)["loss_fgl"] == 0.15
    hash(crit)  # usable as a jit static argument / cache key
    assert crit.mal_alpha is None and crit.distill_temperature == 5.0 and crit.num_classes == 80
    assert crit.matcher_weights == (2.0, 5.0, 2.0) and crit.matcher_method == "auto"


def test_build_is_strict():
    """Every field is read from the config: missing, misspelled or unknown fields are errors, and
    so is a missing weight of an active loss (named in the message)."""
    cfg = configs.get_config("dfine_n")
    missing = configs.get_config("dfine_n")
    with missing.unlocked():  # configs are locked: fields can only be removed or added on purpose
        del missing.loss["gamma"]
    with pytest.raises(AttributeError, match="gamma"):
        losses.build(missing)
    typo = configs.get_config("dfine_n")
    with pytest.raises(AttributeError, match="cost_class"):  # the locked config names the field it has
        typo.loss.matcher.cost_clas = 2.0
    with typo.unlocked():
        typo.loss.matcher.cost_clas = 2.0
    with pytest.raises(ConfigError, match="cost_clas"):
        losses.build(typo)
    no_w = configs.get_config("dfine_n")
    no_w.loss.weights = {k: v for k, v in cfg.loss.weights.items() if k != "loss_fgl"}
    with pytest.raises(ConfigError, match="loss_fgl"):
        losses.build(no_w)
    bad = configs.get_config("dfine_n")
    bad.loss.losses = ("mal", "boxes", "locl")
    with pytest.raises(ConfigError, match="locl"):
        losses.build(bad)
    bad.loss.losses = cfg.loss.losses
    bad.loss.matcher.method = "jax"  # would otherwise fail only inside jit tracing
    with pytest.raises(ConfigError, match=r"loss.matcher.method='jax': not one of \['auto', 'device', 'scipy'\]"):
        losses.build(bad)
    # a weight for an inactive loss is fine (the configs carry both loss_mal and loss_vfl)
    assert "loss_vfl" in dict(losses.build(cfg).weights)
    with pytest.raises(ValueError, match="classes"):  # logits must have num_classes classes
        _crit("dfine_n", num_classes=81)(_synthetic_outputs(np.random.default_rng(0), Cn=80),
                                         dict(labels=np.zeros((2, 1), np.int32),
                                              boxes=np.full((2, 1, 4), 0.3, np.float32),
                                              mask=np.ones((2, 1), bool)))


def test_loss_table_produces_the_named_terms():
    """LOSS_MAP and LOSS_TERMS name the same losses, and each table entry returns exactly its
    terms for an output with corners and a teacher."""
    assert set(C.LOSS_MAP) == set(C.LOSS_TERMS) == {"mal", "vfl", "focal", "boxes", "local"}
    rng = np.random.default_rng(4)
    out = _synthetic_outputs(rng)
    o = {k: jnp.asarray(out["aux_outputs"][0][k]) for k in
         ("pred_logits", "pred_boxes", "pred_corners", "ref_points", "teacher_corners", "teacher_logits")}
    idx = jnp.asarray(np.array([[0, -1, 1, -1, -1, -1], [-1, -1, -1, 0, -1, -1]], np.int32))
    s = C.Shared(labels=jnp.array([[1, 2], [3, 0]], jnp.int32),
                 boxes=jnp.asarray(np.full((2, 2, 4), 0.3, np.float32)), n_cls=jnp.float32(3.0),
                 n_box=jnp.float32(3.0), query_valid=None, up=jnp.asarray(out["up"]),
                 reg_scale=jnp.asarray(out["reg_scale"]), ddf_norm=terms.ddf_normalizers(idx))
    crit = _crit("dfine_n", num_classes=4)
    for name, fn in C.LOSS_MAP.items():
        r = fn(crit, o, C.Matched(idx, idx), s)
        assert tuple(sorted(r)) == tuple(sorted(C.LOSS_TERMS[name])), name
        assert all(np.isfinite(float(v)) and float(v) > 0 for v in r.values()), (name, r)
    # without corners the local losses do not apply
    assert C.LOSS_MAP["local"](crit, {k: o[k] for k in ("pred_logits", "pred_boxes")},
                               C.Matched(idx, idx), s) == {}


# ------------------------------------------------------------------------------------------
# optax replacements: each equals the formula it replaced (see losses/terms.py).
# ------------------------------------------------------------------------------------------

def _logits_with_extremes(rng, shape):
    x = (rng.normal(size=shape) * 3).astype(np.float32)
    x.flat[:22] = [-1e4, -1e3, -100, -88, -50, -30, -17, -10, -1e-3, 0, 1e-3, 10, 17, 30, 50,
                   88, 100, 1e3, 1e4, -7.5, 7.5, 3e4]
    return x


def _ulps(a, b):
    """|a - b| in ulps of the larger magnitude (float32)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    d = np.abs(a.astype(np.float64) - b)
    return d / np.spacing(np.maximum(np.abs(a), np.abs(b))).astype(np.float64)


def test_bce_is_accurate_and_equals_optax_on_hard_targets():
    """terms.bce_with_logits (torch's formula): within 3 eps of the float64 value for soft targets,
    large |logits| included, and bitwise optax.sigmoid_binary_cross_entropy for 0/1 targets."""
    rng = np.random.default_rng(10)
    x = _logits_with_extremes(rng, (4000, 33))
    ours = jax.jit(terms.bce_with_logits)
    hard = (rng.random(x.shape) < 0.3).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(ours(x, hard)),
                                  np.asarray(jax.jit(optax.sigmoid_binary_cross_entropy)(x, hard)))
    soft = rng.random(x.shape).astype(np.float32)
    got = np.asarray(ours(x, soft)).astype(np.float64)
    xd, td = x.astype(np.float64), soft.astype(np.float64)
    exact = np.maximum(xd, 0) - xd * td + np.log1p(np.exp(-np.abs(xd)))
    assert np.max(np.abs(got - exact) / np.maximum(np.abs(exact), 1e-30)) <= 3 * EPS32


def test_optax_ce_and_kl_equal_previous_formulas():
    """optax.softmax_cross_entropy_with_integer_labels and kl_divergence_with_log_targets are
    bitwise the former logsumexp - logit[label] and sum exp(lt) (lt - lp), large logits included."""
    rng = np.random.default_rng(11)
    for scale in (1.0, 5.0, 50.0):
        lg = (rng.normal(size=(3000, 33)) * scale).astype(np.float32)
        lg[0, :] = 1e4
        lab = rng.integers(0, 33, 3000).astype(np.int32)
        old = jax.jit(lambda l, i: jax.nn.logsumexp(l, axis=-1)
                      - jnp.take_along_axis(l, i[..., None], axis=-1)[..., 0])
        new = jax.jit(optax.softmax_cross_entropy_with_integer_labels)
        np.testing.assert_array_equal(np.asarray(new(lg, lab)), np.asarray(old(lg, lab)))
        t = (rng.normal(size=lg.shape) * scale).astype(np.float32)

        def logs(p, q, T=5.0):
            return jax.nn.log_softmax(p / T, axis=-1), jax.nn.log_softmax(q / T, axis=-1)

        old_kl = jax.jit(lambda p, q: (lambda lp, lt: jnp.sum(jnp.exp(lt) * (lt - lp), -1))(*logs(p, q)))
        new_kl = jax.jit(lambda p, q: optax.losses.kl_divergence_with_log_targets(*logs(p, q)))
        np.testing.assert_array_equal(np.asarray(new_kl(lg, t)), np.asarray(old_kl(lg, t)))


def test_optax_focal_differs_from_the_reference_formula():
    """Why loss_focal keeps its own formula: optax.sigmoid_focal_loss computes (1 - p_t)^gamma as
    exp(gamma log(1 - p_t)), not torchvision's (1 - p_t) ** gamma with p_t from sigmoid; on
    confident logits the two differ far beyond float32 noise (measured: up to 3x relative on
    tiny values, 1.9e-6 absolute), so optax would not give the reference's numbers."""
    rng = np.random.default_rng(12)
    x = _logits_with_extremes(rng, (2000, 33))
    t = (rng.random(x.shape) < 0.3).astype(np.float32)
    p = jax.nn.sigmoid(x)  # the per-element formula of terms.loss_focal
    ce = optax.sigmoid_binary_cross_entropy(x, t)
    p_t = p * t + (1 - p) * (1 - t)
    ref = np.asarray((0.25 * t + 0.75 * (1 - t)) * (ce * (1 - p_t) ** 2))
    opt = np.asarray(optax.sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0))
    big = ref > 1e-30
    assert np.max(np.abs(opt - ref)[big] / ref[big]) > 100 * EPS32


# ------------------------------------------------------------------------------------------
# Package structure (the limits).
# ------------------------------------------------------------------------------------------

def test_losses_package_limits():
    """No module of deim_jax/losses over 400 lines, no function over 80 lines, and no import of
    models / evaluate / train / tools."""
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "deim_jax", "losses")
    for fname in sorted(os.listdir(root)):
        if not fname.endswith(".py"):
            continue
        src = open(os.path.join(root, fname)).read()
        assert len(src.splitlines()) <= 400, fname
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 80, (fname, node.name)
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for m in mods:
                    assert not m.startswith(("deim_jax.models", "deim_jax.evaluate", "deim_jax.train",
                                             "deim_jax.tools")), (fname, m)
