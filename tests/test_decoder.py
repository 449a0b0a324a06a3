"""D-FINE decoder: anchors, bilinear sampler, deformable attention, FDR helpers, eval parity on
the n and s fixtures, train-mode output structure, and (when the full model exists) train-mode
parity of n with and without denoising."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deim_jax import convert
from deim_jax.models import denoising
from deim_jax.ops.anchors import generate_anchors
from deim_jax.models.deformable_attention import (
    MSDeformableAttention,
    grid_sample_bilinear,
    num_points_scale,
    sampling_offset_bias,
    split_heads,
)
from deim_jax.models.dfine_decoder import DFINETransformer
from deim_jax.ops.fdr import distance2bbox, integral, weighting_function
from tests import parity_utils as pu
from tests.model_checks import RTOL_OP, align, assert_f32_close, check_max_abs, fixture_dn_group

try:  # PyTorch is only the reference for the sampler tests
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = F = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed (reference for grid_sample)")

CFG = {
    "n": dict(feat_channels=(128, 128), feat_strides=(16, 32), hidden_dim=128, num_levels=2, num_points=(6, 6),
              num_layers=3, dim_feedforward=512),
    "s": dict(feat_channels=(256, 256, 256), feat_strides=(8, 16, 32), hidden_dim=256, num_levels=3,
              num_points=(3, 6, 3), num_layers=3, dim_feedforward=1024),
}


# ---------------------------------------------------------------- anchors


@pytest.mark.parametrize("name,shapes", [("n", [(40, 40), (20, 20)]), ("s", [(80, 80), (40, 40), (20, 20)])])
def test_anchors_match_fixture_buffers(name, shapes):
    fixed = np.load(pu.fixture_dir(name) + "/fixed.npz")
    anchors, valid = generate_anchors(shapes)
    ref_a, ref_v = fixed["decoder.anchors"], fixed["decoder.valid_mask"]
    assert anchors.shape == ref_a.shape and anchors.dtype == np.float32
    np.testing.assert_array_equal(valid, ref_v)
    np.testing.assert_array_equal(np.isinf(anchors), np.isinf(ref_a))
    fin = np.isfinite(ref_a)
    # numpy's and torch's float32 log differ by at most one ulp
    np.testing.assert_allclose(anchors[fin], ref_a[fin], rtol=0, atol=5e-7)
    assert int((~valid).sum()) == (316 if name == "s" else 0)


def test_anchor_geometry():
    a, v = generate_anchors([(2, 4), (1, 2)])
    box = 1 / (1 + np.exp(-a[0].astype(np.float64)))
    np.testing.assert_allclose(box[:8, 0], [0.125, 0.375, 0.625, 0.875] * 2, atol=1e-6)
    np.testing.assert_allclose(box[:8, 1], [0.25] * 4 + [0.75] * 4, atol=1e-6)
    np.testing.assert_allclose(box[8:, 2], 0.1, atol=1e-6)
    assert v.all()


# ---------------------------------------------------------------- sampler and deformable attention


@needs_torch
def test_grid_sample_matches_torch():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, 5, 7, 4)).astype(np.float32)
    loc = rng.uniform(-0.3, 1.3, size=(3, 64, 2)).astype(np.float32)
    loc[0, :5] = [[0, 0], [1, 1], [0.5, 0.5], [1 / 14, 0.1], [1.0, 0.0]]
    ref = F.grid_sample(torch.from_numpy(v).permute(0, 3, 1, 2), torch.from_numpy(2 * loc - 1)[:, :, None],
                        mode="bilinear", padding_mode="zeros", align_corners=False)
    ref = ref[:, :, :, 0].permute(0, 2, 1).numpy()
    out = np.asarray(jax.jit(grid_sample_bilinear)(jnp.asarray(v), jnp.asarray(loc)))
    assert_f32_close(out, ref, rtol=RTOL_OP)  # 4 products summed: a few ulps


def _torch_msda(query, ref, memory, shapes, points, nh, p):
    """Independent PyTorch formulation (per-level grid_sample) of the D-FINE deformable attention."""
    b, q, d = query.shape
    hd = d // nh
    tp = sum(points)
    off = (query @ p["sampling_offsets"]["kernel"] + p["sampling_offsets"]["bias"]).reshape(b, q, nh, tp, 2)
    aw = (query @ p["attention_weights"]["kernel"] + p["attention_weights"]["bias"]).reshape(b, q, nh, tp)
    aw = torch.softmax(aw, -1)
    scale = torch.tensor([1 / n for n in points for _ in range(n)], dtype=torch.float32)[:, None]
    loc = ref[:, :, None, None, :2] + off * scale * ref[:, :, None, None, 2:] * 0.5
    grids = (2 * loc - 1).permute(0, 2, 1, 3, 4).flatten(0, 1)  # [B*nH, Q, P, 2]
    vals = memory.reshape(b, -1, nh, hd).permute(0, 2, 3, 1).flatten(0, 1)  # [B*nH, hd, S]
    outs, s0, p0 = [], 0, 0
    for (h, w), n in zip(shapes, points):
        v = vals[:, :, s0:s0 + h * w].reshape(b * nh, hd, h, w)
        outs.append(F.grid_sample(v, grids[:, :, p0:p0 + n], mode="bilinear", padding_mode="zeros",
                                  align_corners=False))
        s0 += h * w
        p0 += n
    samp = torch.cat(outs, -1)  # [B*nH, hd, Q, P]
    w = aw.permute(0, 2, 1, 3).flatten(0, 1)[:, None]
    return (samp * w).sum(-1).reshape(b, nh * hd, q).permute(0, 2, 1)


@needs_torch
def test_deformable_attention_matches_grid_sample_reference():
    rng = np.random.default_rng(1)
    shapes, points, nh, d = [(6, 5), (3, 3)], (3, 2), 4, 16
    s = sum(h * w for h, w in shapes)
    query = rng.normal(size=(2, 7, d)).astype(np.float32)
    memory = rng.normal(size=(2, s, d)).astype(np.float32)
    ref = np.concatenate([rng.uniform(0.1, 0.9, (2, 7, 2)), rng.uniform(0.2, 1.2, (2, 7, 2))], -1).astype(np.float32)
    m = MSDeformableAttention(d, nh, points)
    value = split_heads(jnp.asarray(memory), nh)
    params = m.init(jax.random.PRNGKey(0), jnp.asarray(query), jnp.asarray(ref), value, shapes)["params"]
    # init: zero weights, grid bias
    np.testing.assert_array_equal(params["sampling_offsets"]["kernel"], 0)
    np.testing.assert_array_equal(params["attention_weights"]["kernel"], 0)
    np.testing.assert_array_equal(params["attention_weights"]["bias"], 0)
    # random parameters so that points leave the map and levels differ
    params = {k: {"kernel": rng.normal(size=v["kernel"].shape).astype(np.float32) * 0.5,
                  "bias": rng.normal(size=v["bias"].shape).astype(np.float32)} for k, v in params.items()}
    out = np.asarray(m.apply({"params": params}, jnp.asarray(query), jnp.asarray(ref), value, shapes))
    tp = {k: {kk: torch.from_numpy(np.asarray(vv)) for kk, vv in v.items()} for k, v in params.items()}
    exp = _torch_msda(torch.from_numpy(query), torch.from_numpy(ref), torch.from_numpy(memory), shapes, points, nh,
                      tp).numpy()
    assert_f32_close(out, exp)  # two formulations (one gather vs per-level grid_sample): float32 noise


def test_offset_bias_and_point_scale():
    b = sampling_offset_bias(8, (3, 6, 3)).reshape(8, 12, 2)
    np.testing.assert_allclose(b[0, :3], [[1, 0], [2, 0], [3, 0]], atol=1e-6)
    np.testing.assert_allclose(b[0, 3:9, 0], np.arange(1, 7), atol=1e-6)
    np.testing.assert_allclose(b[1, 0], [1, 1], atol=1e-6)  # 45 degrees, normalized by max(|cos|, |sin|)
    np.testing.assert_allclose(b[2, 0], [0, 1], atol=1e-6)
    np.testing.assert_allclose(num_points_scale((3, 6, 3)), np.repeat([1 / 3, 1 / 6, 1 / 3], [3, 6, 3]), rtol=1e-7)
    fixed = np.load(pu.fixture_dir("s") + "/fixed.npz")
    np.testing.assert_array_equal(num_points_scale((3, 6, 3)), fixed["decoder.decoder.layers.0.cross_attn.num_points_scale"])


# ---------------------------------------------------------------- FDR helpers


def test_weighting_function_values():
    w4 = np.asarray(weighting_function(32, jnp.array([0.5]), jnp.array([4])))
    assert w4.shape == (33,)
    np.testing.assert_allclose(w4[:4], [-4, -2, -1.78813, -1.59122], atol=1e-5)
    np.testing.assert_allclose(w4[14:17], [-0.15775, -0.07599, 0], atol=1e-5)
    np.testing.assert_allclose(w4, -w4[::-1], atol=1e-6)
    w8 = np.asarray(weighting_function(32, jnp.array([0.5]), jnp.array([8])))
    np.testing.assert_allclose(w8[:4], [-8, -4, -3.4913, -3.03436], atol=1e-4)


def test_distance2bbox_and_integral():
    ref = jnp.array([[0.5, 0.4, 0.2, 0.3]])
    # a handful of float32 roundings (FMA contraction may differ between CPUs)
    assert_f32_close(distance2bbox(ref, jnp.zeros((1, 4)), jnp.array([4.0])), ref, rtol=RTOL_OP)
    out = distance2bbox(ref, jnp.array([[2.0, 0.0, 2.0, 0.0]]), jnp.array([4.0]))  # each side grows by w/2
    assert_f32_close(out, [[0.5, 0.4, 0.4, 0.3]], rtol=RTOL_OP)
    proj = weighting_function(32, jnp.array([0.5]), jnp.array([4]))
    logits = jnp.full((1, 4 * 33), -1e4).at[0, 16].set(0.0).at[0, 33 + 32].set(0.0)
    np.testing.assert_allclose(integral(logits, proj, 32), [[0.0, 4.0, np.mean(np.asarray(proj)), np.mean(np.asarray(proj))]], atol=1e-5)


# ---------------------------------------------------------------- eval parity


@pytest.mark.parametrize("name", ["n", "s"])
def test_eval_parity(name):
    d = pu.fixture_dir(name)
    ev = np.load(d + "/eval.npz")
    sd = pu.synth_state_dict(name)
    params = convert.raw_variables(sd)["params"]["decoder"]
    feats = [jnp.asarray(np.transpose(ev[f"encoder/{i}"], (0, 2, 3, 1))) for i in range(3) if f"encoder/{i}" in ev.files]
    model = DFINETransformer(num_classes=80, **CFG[name])
    out = jax.jit(lambda v, f: model.apply(v, f, train=False, return_debug=True))({"params": params}, feats)
    out = jax.tree_util.tree_map(np.asarray, out)
    mi, ri = out["enc_topk_indices"], ev["enc_topk_indices"]
    assert mi.shape == ri.shape
    for b in range(ri.shape[0]):
        assert set(mi[b].tolist()) == set(ri[b].tolist())
    # descending order of the encoder scores
    sc = np.take_along_axis(out["debug"]["enc_scores"], mi, 1)
    assert (np.diff(sc, axis=1) <= 0).all()
    np.testing.assert_allclose(out["debug"]["enc_scores"], ev["enc_scores"], atol=1e-4)
    np.testing.assert_allclose(align(out["pred_logits"], mi), align(ev["pred_logits"], ri), atol=1e-4, rtol=0)
    np.testing.assert_allclose(align(out["pred_boxes"], mi), align(ev["pred_boxes"], ri), atol=1e-5, rtol=0)
    np.testing.assert_allclose(align(out["debug"]["dec_init_content"], mi), align(ev["dec_init_content"], ri),
                               atol=1e-4, rtol=0)
    np.testing.assert_allclose(align(out["debug"]["dec_init_ref_unact"], mi), align(ev["dec_init_ref_unact"], ri),
                               atol=1e-4, rtol=0)


# ---------------------------------------------------------------- train-mode structure (tiny config)

TINY = dict(num_classes=5, feat_channels=(16, 16), feat_strides=(16, 32), hidden_dim=16, num_levels=2,
            num_points=(2, 1), num_layers=2, nhead=2, dim_feedforward=32, num_queries=10, num_denoising=8)


def _tiny_inputs():
    rng = np.random.default_rng(0)
    return [jnp.asarray(rng.normal(size=(2, 4, 4, 16)), jnp.float32),
            jnp.asarray(rng.normal(size=(2, 2, 2, 16)), jnp.float32)]


def _tiny_group(q):
    labels = jnp.array([[1, 2, 0], [3, 0, 0]], jnp.int32)
    boxes = jnp.array([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2], [0, 0, 0, 0]],
                       [[0.6, 0.4, 0.3, 0.3], [0, 0, 0, 0], [0, 0, 0, 0]]], jnp.float32)
    mask = jnp.array([[True, True, False], [True, False, False]])
    return jax.jit(lambda k: denoising.make_contrastive_group(k, labels, boxes, mask, num_classes=5,
                                                            num_denoising=8, num_queries=q))(jax.random.PRNGKey(3))


@jax.jit
def _perturb(params, seed=0):
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [l + 0.1 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


def test_variable_names_and_init():
    feats = _tiny_inputs()
    feats = [feats[0], jnp.zeros((2, 2, 2, 24))]
    model = DFINETransformer(**dict(TINY, feat_channels=(16, 24)))
    variables = jax.eval_shape(lambda f: model.init(jax.random.PRNGKey(0), f, train=False), feats)
    p = variables["params"]
    assert {"up", "reg_scale", "decoder", "query_pos_head", "enc_output", "enc_score_head", "enc_bbox_head",
            "pre_bbox_head", "denoising_class_embed", "input_proj_1"} <= set(p)
    assert "input_proj_0" not in p  # 16 == hidden_dim: identity
    assert set(p["input_proj_1"]) == {"conv", "norm"} and p["input_proj_1"]["conv"]["kernel"].shape == (1, 1, 24, 16)
    assert set(variables["batch_stats"]["input_proj_1"]["norm"]) == {"mean", "var", "num_batches_tracked"}
    assert set(p["decoder"]) == {f"layers_{i}" for i in range(2)} | {f"lqe_layers_{i}" for i in range(2)}
    assert set(p["decoder"]["layers_0"]) == {"self_attn", "norm1", "cross_attn", "gateway", "linear1", "linear2",
                                             "norm3"}
    assert set(p["decoder"]["layers_0"]["gateway"]) == {"gate", "norm"}
    assert set(p["decoder"]["layers_0"]["cross_attn"]) == {"sampling_offsets", "attention_weights"}
    assert p["decoder"]["lqe_layers_0"]["reg_conf"]["layers_0"]["kernel"].shape == (20, 64)
    assert p["dec_bbox_head_1"]["layers_2"]["kernel"].shape == (16, 132)
    assert p["query_pos_head"]["layers_0"]["kernel"].shape == (4, 32)
    assert {f"dec_score_head_{i}" for i in range(2)} <= set(p) and "dec_score_head_2" not in set(p)


def test_train_structure_and_semantics():
    model = DFINETransformer(**TINY)
    feats = _tiny_inputs()
    variables = jax.jit(lambda f: model.init(jax.random.PRNGKey(0), f, train=False))(feats)
    p = variables["params"]
    assert "batch_stats" not in variables
    # init values
    assert p["denoising_class_embed"]["embedding"].shape == (6, 16)
    np.testing.assert_array_equal(p["denoising_class_embed"]["embedding"][5], 0)
    np.testing.assert_allclose(p["enc_score_head"]["bias"], -4.59512, atol=1e-5)
    np.testing.assert_allclose(p["dec_score_head_1"]["bias"], -4.59512, atol=1e-5)
    for k in ("enc_bbox_head", "pre_bbox_head", "dec_bbox_head_1"):
        np.testing.assert_array_equal(p[k]["layers_2"]["kernel"], 0)
    np.testing.assert_array_equal(p["decoder"]["lqe_layers_0"]["reg_conf"]["layers_1"]["kernel"], 0)
    np.testing.assert_array_equal(p["decoder"]["layers_1"]["gateway"]["gate"]["kernel"], 0)
    assert float(p["up"][0]) == 0.5 and float(p["reg_scale"][0]) == 4.0

    train_fwd = jax.jit(lambda v, f, g: model.apply(v, f, train=True, dn_group=g))
    # at init LQE adds 0: layer-0 logits equal the pre (head-0) logits
    out0 = train_fwd(variables, feats, None)
    assert_f32_close(out0["aux_outputs"][0]["pred_logits"], out0["pre_outputs"]["pred_logits"])

    variables = {"params": _perturb(p)}
    q, c, r = 10, 5, 33 * 4
    for group in (None, _tiny_group(q)):
        out = train_fwd(variables, feats, group)
        assert out["pred_logits"].shape == (2, q, c)
        assert out["pred_boxes"].shape == (2, q, 4)
        assert out["pred_corners"].shape == (2, q, r)
        assert out["ref_points"].shape == (2, q, 4)
        assert out["up"].shape == (1,) and out["reg_scale"].shape == (1,)
        assert out["enc_topk_indices"].shape == (2, q)
        assert len(out["aux_outputs"]) == 1
        keys6 = {"pred_logits", "pred_boxes", "pred_corners", "ref_points", "teacher_corners", "teacher_logits"}
        for a in out["aux_outputs"]:
            assert set(a) == keys6
            np.testing.assert_array_equal(a["teacher_corners"], out["pred_corners"])
            np.testing.assert_array_equal(a["teacher_logits"], out["pred_logits"])
            np.testing.assert_array_equal(a["ref_points"], out["ref_points"])  # every layer decodes from ref0
        np.testing.assert_array_equal(out["ref_points"], out["pre_outputs"]["pred_boxes"])
        assert out["pre_outputs"]["pred_logits"].shape == (2, q, c)
        assert len(out["enc_aux_outputs"]) == 1
        assert out["enc_aux_outputs"][0]["pred_logits"].shape == (2, q, c)
        assert out["enc_aux_outputs"][0]["pred_boxes"].shape == (2, q, 4)
        # pre logits come from score head 0 without LQE: aux_0 logits - pre logits is constant over classes
        diff = np.asarray(out["aux_outputs"][0]["pred_logits"]) - np.asarray(out["pre_outputs"]["pred_logits"])
        np.testing.assert_allclose(diff, np.broadcast_to(diff[..., :1], diff.shape), atol=1e-5)
        assert np.abs(diff).max() > 0
        for leaf in jax.tree_util.tree_leaves(out):
            assert np.isfinite(np.asarray(leaf, np.float32)).all()
        if group is None:
            assert "dn_outputs" not in out and "dn_meta" not in out
            nodn = out
        else:
            dmax = group["query_class"].shape[1]
            assert dmax == 16
            assert len(out["dn_outputs"]) == 2
            for a in out["dn_outputs"]:
                assert set(a) == keys6
                assert a["pred_logits"].shape == (2, dmax, c) and a["pred_corners"].shape == (2, dmax, r)
                np.testing.assert_array_equal(a["teacher_corners"], out["dn_outputs"][-1]["pred_corners"])
                np.testing.assert_array_equal(a["teacher_logits"], out["dn_outputs"][-1]["pred_logits"])
            assert out["dn_pre_outputs"]["pred_boxes"].shape == (2, dmax, 4)
            assert int(out["dn_meta"]["num_group"]) == 4 and int(out["dn_meta"]["max_gt"]) == 2
            assert out["dn_meta"]["valid"].shape == (dmax,)
            # matching queries cannot see the denoising ones: their outputs are unchanged (up to the
            # float32 noise of a program with more queries)
            assert_f32_close(out["pred_logits"], nodn["pred_logits"])
            assert_f32_close(out["pred_boxes"], nodn["pred_boxes"])

    # eval: only the output layer; equals train mode's last layer (no BatchNorm in this config)
    ev = jax.jit(lambda v, f: model.apply(v, f, train=False))(variables, feats)
    assert set(ev) == {"pred_logits", "pred_boxes", "enc_topk_indices"}
    # separately compiled programs: float32 noise
    assert_f32_close(ev["pred_logits"], nodn["pred_logits"])
    assert_f32_close(ev["pred_boxes"], nodn["pred_boxes"])
    # eval_idx = 0 stops after the first layer
    m0 = DFINETransformer(**dict(TINY, eval_idx=0))
    ev0 = jax.jit(lambda v, f: m0.apply(v, f, train=False))(variables, feats)
    assert_f32_close(ev0["pred_logits"], nodn["aux_outputs"][0]["pred_logits"])
    assert_f32_close(ev0["pred_boxes"], nodn["aux_outputs"][0]["pred_boxes"])


def test_train_gradients_finite_with_invalid_slots():
    model = DFINETransformer(**TINY)
    feats = _tiny_inputs()
    variables = jax.jit(lambda f: model.init(jax.random.PRNGKey(0), f, train=False))(feats)
    # max_gt = 1 -> G = 8, 16 valid slots out of 20: four invalid slots
    group = jax.jit(lambda k: denoising.make_contrastive_group(
        k, jnp.array([[1, 2], [3, 0]]), jnp.array([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]],
                                                   [[0.6, 0.4, 0.3, 0.3], [0, 0, 0, 0]]]),
        jnp.array([[True, False], [True, False]]), num_classes=5, num_denoising=8, max_slots=20,
        num_queries=10))(jax.random.PRNGKey(3))
    assert int(jnp.sum(group["valid"])) == 16

    def loss(p):
        out = model.apply({"params": p}, feats, train=True, dn_group=group)
        t = sum(jnp.sum(o["pred_logits"] ** 2) + jnp.sum(o["pred_boxes"]) for o in out["dn_outputs"])
        return t + jnp.sum(out["pred_logits"] ** 2) + jnp.sum(out["enc_aux_outputs"][0]["pred_boxes"])

    g = jax.jit(jax.grad(loss))(variables["params"])
    for leaf in jax.tree_util.tree_leaves(g):
        assert np.isfinite(np.asarray(leaf)).all()
    np.testing.assert_array_equal(g["up"], 0)
    np.testing.assert_array_equal(g["reg_scale"], 0)
    np.testing.assert_array_equal(g["denoising_class_embed"]["embedding"][5], 0)  # padding row


# ---------------------------------------------------------------- train-mode parity through the full model

_KEYS6 = ("pred_logits", "pred_boxes", "pred_corners", "ref_points", "teacher_corners", "teacher_logits")
# parity/README.md train tolerances for n: logits / corners atol 3e-2, boxes 1e-3
_TRAIN_TOL = {"pred_logits": 3e-2, "teacher_logits": 3e-2, "pred_corners": 3e-2, "teacher_corners": 3e-2,
              "pred_boxes": 1e-3, "ref_points": 1e-3}


def test_train_parity_n_full_model():
    """Train-mode outputs of the whole n model (backbone + encoder in train mode) vs train.npz,
    variant (a) without denoising and (b) fed the fixture's denoising group."""
    for mod in ("deim_jax.models.hgnetv2", "deim_jax.models.hybrid_encoder"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} not available yet")
    from deim_jax import configs, models

    d = pu.fixture_dir("n")
    ev, t = np.load(d + "/eval.npz"), np.load(d + "/train.npz")
    cfg = configs.get_config("dfine_n")
    variables = convert.from_torch_state_dict(pu.synth_state_dict("n"), cfg)
    model = models.build(cfg)
    images = jnp.asarray(np.transpose(ev["images"], (0, 2, 3, 1)))
    group = fixture_dn_group(t)
    fwd = jax.jit(lambda v, x, g: model.apply(v, x, train=True, dn_group=g, mutable=["batch_stats"])[0])

    for var, grp in (("nodn", None), ("dn", group)):
        out = fwd(variables, images, grp)
        mi, ri = np.asarray(out["enc_topk_indices"]), t[f"{var}/enc_topk_indices"]
        for b in range(2):
            assert set(mi[b].tolist()) == set(ri[b].tolist()), f"{var}: top-k sets differ"
        idx = (mi, ri)
        for k in ("pred_logits", "pred_boxes", "pred_corners", "ref_points"):
            check_max_abs(f"{var}/{k}", out[k], t[f"{var}/out/{k}"], _TRAIN_TOL[k], idx)
        for i in range(2):
            for k in _KEYS6:
                check_max_abs(f"{var}/aux{i}/{k}", out["aux_outputs"][i][k], t[f"{var}/out/aux_outputs/{i}/{k}"],
                              _TRAIN_TOL[k], idx)
        for k in ("pred_logits", "pred_boxes"):
            check_max_abs(f"{var}/pre/{k}", out["pre_outputs"][k], t[f"{var}/out/pre_outputs/{k}"], _TRAIN_TOL[k], idx)
            check_max_abs(f"{var}/enc/{k}", out["enc_aux_outputs"][0][k], t[f"{var}/out/enc_aux_outputs/0/{k}"],
                          _TRAIN_TOL[k], idx)
        np.testing.assert_array_equal(np.asarray(out["up"]), t[f"{var}/out/up"])
        np.testing.assert_array_equal(np.asarray(out["reg_scale"]), t[f"{var}/out/reg_scale"])
        if grp is None:
            assert "dn_outputs" not in out
            continue
        assert len(out["dn_outputs"]) == 3
        for i in range(3):  # denoising queries have a fixed order
            for k in _KEYS6:
                check_max_abs(f"dn/dn{i}/{k}", out["dn_outputs"][i][k], t[f"dn/out/dn_outputs/{i}/{k}"], _TRAIN_TOL[k])
        for k in ("pred_logits", "pred_boxes"):
            check_max_abs(f"dn/dn_pre/{k}", out["dn_pre_outputs"][k], t[f"dn/out/dn_pre_outputs/{k}"], _TRAIN_TOL[k])
        assert int(out["dn_meta"]["num_group"]) == 33
