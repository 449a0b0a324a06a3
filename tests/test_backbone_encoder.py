"""HGNetv2 backbone and HybridEncoder: parity with the official PyTorch model, parameter counts, train mode.

Fixtures: ``$DEIM_PARITY_DIR`` (default ``../shared/parity`` beside the repo); the
parity tests skip when it is missing.
"""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import parity_utils as pu  # noqa: E402
from model_checks import RTOL_DEEP, assert_f32_close  # noqa: E402

from deim_jax import convert  # noqa: E402
from deim_jax.models.hgnetv2 import HGNetv2  # noqa: E402
from deim_jax.models.hybrid_encoder import HybridEncoder, build_2d_sincos_position_embedding  # noqa: E402

# deim_dfine.md §1.3 / parity README "Model configurations".
BACKBONE = {
    "n": dict(variant="B0", use_lab=True, return_idx=(2, 3)),
    "s": dict(variant="B0", use_lab=True, return_idx=(1, 2, 3)),
    "m": dict(variant="B2", use_lab=True, return_idx=(1, 2, 3)),
    "l": dict(variant="B4", use_lab=False, return_idx=(1, 2, 3)),
    "x": dict(variant="B5", use_lab=False, return_idx=(1, 2, 3)),
}
_S3 = dict(feat_strides=(8, 16, 32), use_encoder_idx=(2,))
ENCODER = {
    "n": dict(in_channels=(512, 1024), feat_strides=(16, 32), use_encoder_idx=(1,), hidden_dim=128,
              dim_feedforward=512, expansion=0.34, depth_mult=0.5),
    "s": dict(in_channels=(256, 512, 1024), hidden_dim=256, dim_feedforward=1024, expansion=0.5, depth_mult=0.34, **_S3),
    "m": dict(in_channels=(384, 768, 1536), hidden_dim=256, dim_feedforward=1024, expansion=1.0, depth_mult=0.67, **_S3),
    "l": dict(in_channels=(512, 1024, 2048), hidden_dim=256, dim_feedforward=1024, expansion=1.0, depth_mult=1.0, **_S3),
    "x": dict(in_channels=(512, 1024, 2048), hidden_dim=384, dim_feedforward=2048, expansion=1.0, depth_mult=1.0, **_S3),
}
# "params backbone / encoder" of deim_dfine.md §1.3.
PARAM_COUNTS = {
    "n": (1_850_396, 703_824),
    "s": (1_850_396, 4_021_504),
    "m": (6_026_626, 7_799_040),
    "l": (13_553_376, 9_343_232),
    "x": (33_325_760, 20_700_032),
}
# rtdetrv2.md: DEIM-RT-DETRv2 encoders (PResNet R18 / R50 inputs).
RT_ENCODER = {
    "r18": dict(in_channels=(128, 256, 512), hidden_dim=256, dim_feedforward=1024, expansion=0.5, depth_mult=1.0, **_S3),
    "r50": dict(in_channels=(512, 1024, 2048), hidden_dim=256, dim_feedforward=1024, expansion=1.0, depth_mult=1.0, **_S3),
}
RT_ENCODER_PARAMS = {"r18": 4_965_120, "r50": 11_950_848}

ATOL = 1e-4


def _nhwc(x):
    return np.transpose(np.asarray(x), (0, 2, 3, 1))


def _count(tree):
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def _sub(raw, name):
    return {"params": raw["params"][name], "batch_stats": raw["batch_stats"][name]}


def _models(size):
    return HGNetv2(**BACKBONE[size]), HybridEncoder(**ENCODER[size])


@functools.lru_cache(maxsize=None)
def _eval_forward():
    """One jitted eval forward (backbone -> encoder) for each 640 model config used here."""

    def make(size):
        bb, enc = _models(size)

        def f(raw, x):
            feats = bb.apply(_sub(raw, "backbone"), x, train=False)
            return feats, enc.apply(_sub(raw, "encoder"), feats, train=False)

        return jax.jit(f)

    return {s: make(s) for s in ("n", "s")}


def _numpy_variables(abstract, seed=0):
    """Concrete variables for the shapes of ``abstract`` (from ``jax.eval_shape(init)``), built with numpy.

    Much cheaper than compiling ``init`` (thousands of random ops) on CPU. Kernels ~ N(0, 1/fan_in),
    norm/LAB scales ~ U(0.8, 1.2), biases ~ N(0, 0.02), running mean 0, var 1, counters 0.
    """
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        shape, dtype = leaf.shape, leaf.dtype
        if name.endswith("['num_batches_tracked']"):
            return np.zeros(shape, dtype)
        if name.endswith("['mean']"):
            return np.zeros(shape, dtype)
        if name.endswith("['var']"):
            return np.ones(shape, dtype)
        if name.endswith("['scale']"):
            return rng.uniform(0.8, 1.2, shape).astype(dtype)
        if name.endswith("bias']"):
            return (0.02 * rng.standard_normal(shape)).astype(dtype)
        fan_in = int(np.prod(shape[:-1]))
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def _report(tag, errs):
    print(f"{tag}: " + ", ".join(f"{k}={v:.2e}" for k, v in errs.items()))


# ------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("size", ["n", "s"])
def test_eval_parity(size):
    """Backbone (n) and encoder (n, s) maps vs the official float32 model, eval mode, atol 1e-4."""
    pu.fixture_dir(size)
    raw = convert.raw_variables(pu.synth_state_dict(size))
    ev = pu.load_npz(size, "eval.npz")
    x = _nhwc(ev["images"])
    feats, outs = _eval_forward()[size](raw, x)
    errs = {}
    if size == "n":  # s keeps only encoder maps (its backbone is the same B0)
        assert len(feats) == 2
        for i, f in enumerate(feats):
            ref = _nhwc(ev[f"backbone/{i}"])
            assert f.shape == ref.shape
            errs[f"backbone/{i}"] = float(np.abs(np.asarray(f) - ref).max())
    n_enc = len([k for k in ev.files if k.startswith("encoder/")])
    assert len(outs) == n_enc == len(ENCODER[size]["in_channels"])
    for i, o in enumerate(outs):
        ref = _nhwc(ev[f"encoder/{i}"])
        assert o.shape == ref.shape
        errs[f"encoder/{i}"] = float(np.abs(np.asarray(o) - ref).max())
    _report(f"eval parity {size}", errs)
    for k, e in errs.items():
        assert e < ATOL, (k, e)


def test_rtdetrv2_encoder_parity():
    """version='rtdetrv2' encoder on the r18 fixture's backbone maps vs its encoder maps."""
    name = "rtdetrv2_r18"
    pu.fixture_dir(name)
    raw = convert.raw_variables(pu.synth_state_dict(name))
    ev = pu.load_npz(name, "eval.npz")
    feats = [_nhwc(ev[f"backbone/{i}"]) for i in range(3)]
    enc = HybridEncoder(**RT_ENCODER["r18"], version="rtdetrv2")
    outs = jax.jit(lambda v, f: enc.apply(v, f, train=False))(_sub(raw, "encoder"), feats)
    errs = {}
    for i, o in enumerate(outs):
        ref = _nhwc(ev[f"encoder/{i}"])
        assert o.shape == ref.shape
        errs[f"encoder/{i}"] = float(np.abs(np.asarray(o) - ref).max())
    _report("eval parity rtdetrv2_r18 encoder", errs)
    for k, e in errs.items():
        assert e < ATOL, (k, e)


def test_variables_match_state_dict_exactly():
    """Every backbone/encoder variable the modules create exists in the n and s state dicts with the same shape, and vice versa."""
    for size in ("n", "s"):
        pu.fixture_dir(size)
        raw = convert.raw_variables(pu.synth_state_dict(size))
        bb, enc = _models(size)
        x = jax.ShapeDtypeStruct((1, 640, 640, 3), jnp.float32)
        vb = jax.eval_shape(lambda x: bb.init(jax.random.PRNGKey(0), x, train=False), x)
        feats = jax.eval_shape(lambda v, x: bb.apply(v, x, train=False), vb, x)
        ve = jax.eval_shape(lambda f: enc.init(jax.random.PRNGKey(0), f, train=False), feats)
        for name, v in (("backbone", vb), ("encoder", ve)):
            for coll in ("params", "batch_stats"):
                mine = {jax.tree_util.keystr(p): l.shape for p, l in jax.tree_util.tree_leaves_with_path(v[coll])}
                ref = {jax.tree_util.keystr(p): np.shape(l) for p, l in jax.tree_util.tree_leaves_with_path(raw[coll][name])}
                assert mine == ref, (size, name, coll, sorted(set(mine) ^ set(ref))[:10])


# ---------------------------------------------------------------------------------------- param counts


@pytest.mark.parametrize("size", ["n", "s", "m", "l", "x"])
def test_param_counts(size):
    """Backbone / encoder parameter counts equal the official ones (deim_dfine.md §1.3), via eval_shape."""
    bb, enc = _models(size)
    x = jax.ShapeDtypeStruct((1, 640, 640, 3), jnp.float32)
    vb = jax.eval_shape(lambda x: bb.init(jax.random.PRNGKey(0), x, train=False), x)
    feats = jax.eval_shape(lambda v, x: bb.apply(v, x, train=False), vb, x)
    assert tuple(f.shape[-1] for f in feats) == ENCODER[size]["in_channels"] == bb.out_channels
    assert [f.shape[1] for f in feats] == [640 // s for s in ENCODER[size]["feat_strides"]]
    ve = jax.eval_shape(lambda f: enc.init(jax.random.PRNGKey(0), f, train=False), feats)
    outs = jax.eval_shape(lambda v, f: enc.apply(v, f, train=False), ve, feats)
    hd = ENCODER[size]["hidden_dim"]
    assert [o.shape for o in outs] == [(1, f.shape[1], f.shape[2], hd) for f in feats]
    assert (_count(vb["params"]), _count(ve["params"])) == PARAM_COUNTS[size]


@pytest.mark.parametrize("variant", ["r18", "r50"])
def test_rtdetrv2_encoder_param_counts(variant):
    enc = HybridEncoder(**RT_ENCODER[variant], version="rtdetrv2")
    feats = [jax.ShapeDtypeStruct((1, 640 // s, 640 // s, c), jnp.float32)
             for s, c in zip(RT_ENCODER[variant]["feat_strides"], RT_ENCODER[variant]["in_channels"])]
    ve = jax.eval_shape(lambda f: enc.init(jax.random.PRNGKey(0), f, train=False), feats)
    assert _count(ve["params"]) == RT_ENCODER_PARAMS[variant]


# ------------------------------------------------------------------------------------------ train mode


def test_train_mode_updates_batch_stats_under_jit():
    """Tiny train forward (64x64, batch 2): jitted, running stats move with momentum 0.1 / unbiased var."""
    bb, enc = _models("n")
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 64, 64, 3), jnp.float32)

    vb = _numpy_variables(jax.eval_shape(lambda x: bb.init(jax.random.PRNGKey(0), x, train=False), x))
    feats = jax.eval_shape(lambda v, x: bb.apply(v, x, train=False), vb, x)
    # (train=True for init: eval mode would need the 640-size maps for the position table)
    ve = _numpy_variables(jax.eval_shape(lambda f: enc.init(jax.random.PRNGKey(0), f, train=True), feats), seed=1)

    @jax.jit
    def step(vb, ve, x):
        feats, mb = bb.apply(vb, x, train=True, mutable=["batch_stats"])
        outs, me = enc.apply(ve, feats, train=True, mutable=["batch_stats"])
        eval_last = bb.apply(vb, x, train=False)[-1]
        return feats, outs, mb["batch_stats"], me["batch_stats"], eval_last

    feats, outs, bs_b, bs_e, eval_last = step(vb, ve, x)
    assert [o.shape for o in outs] == [(2, 4, 4, 128), (2, 2, 2, 128)]
    assert all(bool(jnp.all(jnp.isfinite(o))) for o in outs)
    for old, new in ((vb["batch_stats"], bs_b), (ve["batch_stats"], bs_e)):
        counts = [l for p, l in jax.tree_util.tree_leaves_with_path(new) if "num_batches_tracked" in jax.tree_util.keystr(p)]
        assert counts and all(int(c) == 1 for c in counts)
        def stat(tree, leaf):
            return [l for p, l in jax.tree_util.tree_leaves_with_path(tree) if jax.tree_util.keystr(p).endswith(f"['{leaf}']")]

        # Every running variance moves; running means move too except where the BN input has an exactly
        # zero batch mean (a 1x1 conv right after a train-mode BN, e.g. the first light layer of stage 2).
        assert len(stat(old, "var")) == len(stat(new, "var")) > 0
        assert all(not np.allclose(a, b) for a, b in zip(stat(old, "var"), stat(new, "var")))
        moved = [not np.allclose(a, b) for a, b in zip(stat(old, "mean"), stat(new, "mean"))]
        assert sum(moved) >= len(moved) - 3, (sum(moved), len(moved))

    # Exact update rule on the first BN (stem1): batch stats of its conv output.
    k = vb["params"]["stem"]["stem1"]["conv"]["kernel"]
    y = jax.lax.conv_general_dilated(x, k, (2, 2), [(1, 1), (1, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = np.asarray(y, np.float64).reshape(-1, y.shape[-1])
    new = bs_b["stem"]["stem1"]["bn"]
    # y comes from another compiled conv: float32 noise ~RTOL_DEEP of |y| (|y|^2 for the variance),
    # times the momentum 0.1
    noise = 0.1 * RTOL_DEEP * np.abs(y).max()
    np.testing.assert_allclose(new["mean"], 0.9 * 0.0 + 0.1 * y.mean(0), rtol=0, atol=noise)
    np.testing.assert_allclose(new["var"], 0.9 * 1.0 + 0.1 * y.var(0, ddof=1), rtol=0, atol=2 * noise * np.abs(y).max())

    # Same variables, eval mode (running stats): the output differs from the train-mode one.
    assert not np.allclose(np.asarray(eval_last), np.asarray(feats[-1]))


def test_train_mode_running_stats_parity_n():
    """One 640 train forward of the n backbone+encoder updates every BN like the official model."""
    size = "n"
    pu.fixture_dir(size)
    sd = pu.synth_state_dict(size)
    raw = convert.raw_variables(sd)
    ev = pu.load_npz(size, "eval.npz")
    tr = pu.load_npz(size, "train.npz")
    x = _nhwc(ev["images"])
    bb, enc = _models(size)

    @jax.jit
    def f(raw, x):
        feats, mb = bb.apply(_sub(raw, "backbone"), x, train=True, mutable=["batch_stats"])
        _, me = enc.apply(_sub(raw, "encoder"), feats, train=True, mutable=["batch_stats"])
        return {"backbone": mb["batch_stats"], "encoder": me["batch_stats"]}

    stats = f(raw, x)
    prefix = "nodn/bn_running_after/"
    keys = [k[len(prefix):] for k in tr.files if k.startswith(prefix) and k[len(prefix):].split(".")[0] in ("backbone", "encoder")]
    assert len(keys) > 100
    worst = {"running_mean": 0.0, "running_var": 0.0}
    for key in keys:
        coll, path = convert.torch_key_to_flax(key, 1)
        assert coll == "batch_stats"
        node = stats
        for p in path:
            node = node[p]
        ref = tr[prefix + key]
        leaf = key.rsplit(".", 1)[1]
        err = float(np.max(np.abs(np.asarray(node) - ref) / (1.0 + np.abs(ref))))
        worst[leaf] = max(worst[leaf], err)
    _report("train running stats n (max abs/(1+|ref|))", worst)
    assert worst["running_mean"] < 1e-4 and worst["running_var"] < 1e-4, worst


# ----------------------------------------------------------------------------------- smaller behaviours


def test_position_embedding_layout():
    """First half encodes the row (k // h), second half the column (k % h); sin block before cos block."""
    h = w = 5
    d = 16
    pe = build_2d_sincos_position_embedding(w, h, d)[0]
    assert pe.shape == (25, 16)
    omega = 1.0 / 10000.0 ** (np.arange(4) / 4.0)
    for y in range(h):
        for xx in range(w):
            k = y * w + xx
            np.testing.assert_allclose(pe[k, 0:4], np.sin(y * omega), atol=1e-6)
            np.testing.assert_allclose(pe[k, 4:8], np.cos(y * omega), atol=1e-6)
            np.testing.assert_allclose(pe[k, 8:12], np.sin(xx * omega), atol=1e-6)
            np.testing.assert_allclose(pe[k, 12:16], np.cos(xx * omega), atol=1e-6)


def test_encoder_eval_size_checks():
    """Eval mode with the precomputed table rejects other sizes; eval_spatial_size=None accepts any square size."""
    cfg = dict(ENCODER["n"], hidden_dim=32, dim_feedforward=64)
    feats = [jnp.zeros((1, 4, 4, 512)), jnp.zeros((1, 2, 2, 1024))]
    enc = HybridEncoder(**cfg)
    with pytest.raises(ValueError, match="eval_spatial_size"):
        enc.init(jax.random.PRNGKey(0), feats, train=False)
    v = _numpy_variables(jax.eval_shape(
        lambda f: HybridEncoder(**cfg, eval_spatial_size=None).init(jax.random.PRNGKey(0), f, train=False), feats))
    outs = jax.jit(lambda v, f: HybridEncoder(**cfg).apply(v, f, train=True, mutable=["batch_stats"])[0])(v, feats)
    assert [o.shape for o in outs] == [(1, 4, 4, 32), (1, 2, 2, 32)]
    with pytest.raises(NotImplementedError):
        jax.eval_shape(lambda f: HybridEncoder(**cfg, dropout=0.1, eval_spatial_size=None).init(
            jax.random.PRNGKey(0), f, train=False), feats)


def test_freeze_norm_and_filter():
    """freeze_norm -> frozen BN (no num_batches_tracked, train == eval); frozen_param_filter follows the official rules."""
    bb = HGNetv2("B0", use_lab=True, return_idx=(3,), freeze_at=0, freeze_norm=True)
    x = jax.random.uniform(jax.random.PRNGKey(0), (1, 32, 32, 3))
    v = _numpy_variables(jax.eval_shape(lambda x: bb.init(jax.random.PRNGKey(1), x, train=False), x))
    names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(v["batch_stats"])}
    assert names and not any("num_batches_tracked" in n for n in names)

    @jax.jit
    def both(v, x):
        y_tr, new = bb.apply(v, x, train=True, mutable=["batch_stats"])
        return y_tr[0], bb.apply(v, x, train=False)[0], new["batch_stats"]

    y_tr, y_ev, new_stats = both(v, x)
    assert_f32_close(y_tr, y_ev)  # the train and eval branches compile differently: float32 noise
    jax.tree_util.tree_map(np.testing.assert_array_equal, new_stats, v["batch_stats"])

    f = bb.frozen_param_filter()
    assert f(("stem", "stem1", "conv", "kernel"))
    assert f(("stem", "stem4", "lab", "scale"))
    assert f(("stages_2", "blocks_0", "layers_0", "conv1", "bn", "scale"))
    assert not f(("stages_0", "blocks_0", "layers_0", "conv", "kernel"))
    assert not f(("stages_0", "blocks_0", "layers_0", "lab", "bias"))
    g = HGNetv2("B0", freeze_at=1, freeze_norm=False, freeze_stem_only=False).frozen_param_filter()
    assert g(("stages_1", "blocks_0", "aggregation_0", "conv", "kernel"))
    assert not g(("stages_2", "blocks_0", "aggregation_0", "conv", "kernel"))
    assert not g(("stages_2", "blocks_0", "aggregation_0", "bn", "scale"))
    assert HGNetv2("B0", freeze_at=-1, freeze_norm=False).frozen_param_filter() is None
    paths = [tuple(k.key for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(v["params"])[0]]
    assert any(f(p) for p in paths) and not all(f(p) for p in paths)


def test_architecture_table_is_consistent():
    """Each stage's input width is the previous stage's (or the stem's) output width, for every variant."""
    from deim_jax.models.hgnetv2 import ARCH_CONFIGS

    assert {"B0", "B2", "B4", "B5"} <= set(ARCH_CONFIGS)
    for name, arch in ARCH_CONFIGS.items():
        prev = arch["stem"][2]
        assert arch["stem"][0] == 3
        for i, (cin, _, cout, nb, down, light, k, nl) in enumerate(arch["stages"]):
            assert cin == prev, (name, i)
            assert down == (i > 0) and light == (i >= 2) and k == (5 if i >= 2 else 3), (name, i)
            prev = cout
    with pytest.raises(ValueError, match="unknown HGNetv2 variant"):
        HGNetv2("B9").out_channels


def test_hgnetv2_frozen_stages_get_no_gradient():
    """freeze_at stops the gradient at the frozen stem / stages (as PResNet does)."""
    x = jax.random.uniform(jax.random.PRNGKey(1), (1, 32, 32, 3))
    m = HGNetv2("B0", use_lab=True, return_idx=(1, 2), freeze_at=0, freeze_stem_only=False)
    assert m.frozen_tops() == ("stem", "stages_0")
    v = _numpy_variables(jax.eval_shape(lambda x: m.init(jax.random.PRNGKey(0), x, train=False), x))

    def loss(p):
        return sum(jnp.sum(o) for o in m.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=False))

    g = jax.jit(jax.grad(loss))(v["params"])
    assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree_util.tree_leaves(g["stem"]))
    assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree_util.tree_leaves(g["stages_0"]))
    assert float(jnp.abs(g["stages_1"]["blocks_0"]["aggregation_1"]["conv"]["kernel"]).max()) > 0


# (frozen leaves, frozen parameters) of every frozen recipe, as counted by the train loop's filter
# before models.frozen_filter existed (stem + every backbone BN scale/bias)
FROZEN_COUNTS = {"dfine_l_baseline": (165, 70_624), "dfine_x_baseline": (265, 119_360),
                 "rtdetrv2_r50_baseline": (113, 81_760), "rtdetrv2_r50m_baseline": (113, 81_760)}


@pytest.mark.parametrize("name", list(FROZEN_COUNTS) + ["dfine_n", "rtdetrv2_r18"])
def test_models_frozen_filter(name):
    """models.frozen_filter(cfg): a predicate over full params paths, None when nothing is frozen."""
    from deim_jax import configs, models

    cfg = configs.get_config(name)
    pred = models.frozen_filter(cfg)
    if name not in FROZEN_COUNTS:
        assert pred is None
        return
    shapes = models.init_shapes(models.build(cfg), cfg)["params"]
    leaves = jax.tree_util.tree_flatten_with_path(shapes)[0]
    frozen = [(p, x) for p, x in leaves if pred(p)]  # DictKey paths
    assert (len(frozen), sum(int(np.prod(x.shape)) for _, x in frozen)) == FROZEN_COUNTS[name]
    assert all(pred(tuple(k.key for k in p)) for p, _ in frozen)  # string paths
    assert all(p[0].key == "backbone" for p, _ in frozen)
    stem = ("backbone", "stem" if cfg.model.family == "dfine" else "conv1")
    assert all(pred(tuple(k.key for k in p)) for p, _ in leaves if tuple(k.key for k in p[:2]) == stem)
    assert not pred(("encoder", "input_proj_0", "norm", "scale"))
    assert not pred(("decoder", "enc_output", "norm", "scale"))
    assert not pred(("backbone",))


def test_build_reads_every_field_strictly():
    """models.build: every config builds; a misspelled field, a wrong backbone name or encoder
    in_channels that differ from the backbone's out_channels are errors."""
    from deim_jax import configs, models

    for name in configs.available():
        cfg = configs.get_config(name)
        if cfg.num_classes == 0:  # from the data set (finetune_*): resolved before the model is built
            with pytest.raises(ValueError, match="num_classes"):
                models.build(cfg)
            cfg.num_classes = 7
        models.build(cfg)
    cfg = configs.get_config("dfine_n")
    bad = cfg.copy_and_resolve_references()
    with pytest.raises(AttributeError, match="num_queries"):  # a locked config names the field it has
        bad.model.decoder.num_querys = 10
    with bad.unlocked():  # built by hand without the lock: build itself rejects the field
        bad.model.decoder.num_querys = 10
    with pytest.raises(ValueError, match="num_querys"):
        models.build(bad)
    bad = cfg.copy_and_resolve_references()
    bad.model.backbone.name = "PResNet"
    with pytest.raises(ValueError, match="backbone.name"):
        models.build(bad)
    bad = cfg.copy_and_resolve_references()
    bad.model.encoder.in_channels = (256, 512)
    with pytest.raises(ValueError, match="in_channels"):
        models.build(bad)
