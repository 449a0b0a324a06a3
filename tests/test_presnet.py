"""PResNet-vd backbone: R18 eval parity on the rtdetrv2_r18 fixture, variable names/shapes and
parameter counts of R18/R34/R50/R101 against the official state-dict key lists, pooling semantics
against PyTorch, freezing (FrozenBN, frozen stem) and train-mode BatchNorm updates."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deim_jax import convert
from deim_jax.models.presnet import PResNet, avg_pool_2x2_ceil, max_pool_3x3_s2
from tests import parity_utils as pu
from tests.model_checks import RTOL_OP, assert_f32_close

STATE_DICTS = os.path.join(pu.PARITY_DIR, "..", "reference", "state_dicts")

# rtdetrv2.md §3.4 / §1.3 (DEIM: every BatchNorm trainable)
BACKBONE_PARAMS = {18: 11_199_968, 34: 21_308_128, 50: 23_527_264, 101: 42_519_392}


def _flat(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            yield from _flat(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def tsv_variables(model_file: str, prefix: str):
    """Flax (collection, path) -> shape of every ``prefix`` entry of an official key list."""
    path = os.path.join(STATE_DICTS, model_file)
    if not os.path.isfile(path):
        pytest.skip(f"state-dict key list not found at {path}")
    out = {}
    for line in open(path):
        key, shape, _ = line.rstrip("\n").split("\t")
        if not key.startswith(prefix + ".") or convert._DERIVED.match(key):
            continue
        shape = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        coll, fpath = convert.torch_key_to_flax(key, len(shape))
        arr = convert._to_flax_layout(key, np.broadcast_to(np.zeros((), np.float32), shape), fpath)
        out[(coll, fpath[1:])] = tuple(arr.shape)
    return out


def abstract_backbone(depth, size=640, **kw):
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda im: PResNet(depth=depth, **kw).init(jax.random.PRNGKey(0), im, train=False), x)


def _count(tree):
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def test_r18_eval_parity():
    sd = pu.synth_state_dict("rtdetrv2_r18")
    ev = pu.load_npz("rtdetrv2_r18", "eval.npz")
    raw = convert.raw_variables(sd)
    variables = {"params": raw["params"]["backbone"], "batch_stats": raw["batch_stats"]["backbone"]}
    images = np.transpose(ev["images"], (0, 2, 3, 1))
    outs = jax.jit(lambda v, x: PResNet(depth=18).apply(v, x, train=False))(variables, images)
    assert len(outs) == 3
    for i, o in enumerate(outs):
        ref = np.transpose(ev[f"backbone/{i}"], (0, 2, 3, 1))
        assert o.shape == ref.shape
        np.testing.assert_allclose(np.asarray(o), ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("depth,file", [(18, "rtdetrv2_r18.tsv"), (34, "rtdetrv2_r34.tsv"),
                                        (50, "rtdetrv2_r50.tsv"), (101, "rtdetrv2_r101.tsv")])
def test_variables_match_official_keys_and_counts(depth, file):
    expected = tsv_variables(file, "backbone")
    v = abstract_backbone(depth, size=64)
    mine = {(c, p): tuple(x.shape) for c in v for p, x in _flat(v[c])}
    assert set(mine) == set(expected), (sorted(set(expected) - set(mine))[:5], sorted(set(mine) - set(expected))[:5])
    assert mine == expected
    assert _count(v["params"]) == BACKBONE_PARAMS[depth]
    # torch names round-trip (the stem names conv1_1.. are literal)
    for p, _ in _flat(v["params"]):
        assert convert.torch_key_to_flax("backbone." + convert.torch_param_name(p), 2)[1][1:][:-1] == p[:-1]


@pytest.mark.parametrize("depth", [18, 50])
def test_output_shapes(depth):
    v = abstract_backbone(depth, size=640)
    outs = jax.eval_shape(lambda vv: PResNet(depth=depth).apply(vv, jnp.zeros((1, 640, 640, 3)), train=False), v)
    ch = PResNet(depth=depth).out_channels
    assert [o.shape for o in outs] == [(1, 80, 80, ch[0]), (1, 40, 40, ch[1]), (1, 20, 20, ch[2])]


def test_pools_match_torch_on_odd_sizes():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 5, 3)).astype(np.float32)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    ref = F.avg_pool2d(xt, 2, 2, 0, ceil_mode=True).permute(0, 2, 3, 1).numpy()
    assert_f32_close(avg_pool_2x2_ceil(jnp.asarray(x)), ref, rtol=RTOL_OP)  # mean of <= 4 values
    ref = F.max_pool2d(xt, 3, 2, 1).permute(0, 2, 3, 1).numpy()  # negative values: padding must act as -inf
    np.testing.assert_allclose(np.asarray(max_pool_3x3_s2(jnp.asarray(x))), ref, atol=0)


def test_odd_input_size_shapes():
    m = PResNet(depth=18)
    x = jax.ShapeDtypeStruct((1, 97, 65, 3), jnp.float32)
    v = jax.eval_shape(lambda im: m.init(jax.random.PRNGKey(0), im, train=False), x)
    outs = jax.eval_shape(lambda vv, im: m.apply(vv, im, train=False), v, x)
    # conv s2 (49x33) -> maxpool (25x17) -> stages /2 with ceil
    assert [o.shape[1:3] for o in outs] == [(13, 9), (7, 5), (4, 3)]


def _r18_variables(frozen_norm=False):
    raw = convert.raw_variables(pu.synth_state_dict("rtdetrv2_r18"))
    bs = raw["batch_stats"]["backbone"]
    if frozen_norm:
        bs = jax.tree_util.tree_map(lambda a: a, bs)
        bs = _drop(bs, "num_batches_tracked")
    return {"params": raw["params"]["backbone"], "batch_stats": bs}


def _drop(tree, name):
    return {k: _drop(v, name) for k, v in tree.items() if k != name} if isinstance(tree, dict) else tree


def test_train_mode_updates_batch_stats_and_frozen_norm_does_not():
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 3))
    v = _r18_variables()
    _, upd = jax.jit(lambda vv: PResNet(depth=18).apply(vv, x, train=True, mutable=["batch_stats"]))(v)
    bs = upd["batch_stats"]["conv1"]["conv1_1"]["norm"]
    assert int(bs["num_batches_tracked"]) == 1
    assert not np.allclose(bs["mean"], v["batch_stats"]["conv1"]["conv1_1"]["norm"]["mean"])

    # FrozenBN: no num_batches_tracked, running statistics in train mode (train output == eval output)
    mf = PResNet(depth=18, freeze_norm=True, freeze_at=0)
    shapes = jax.eval_shape(lambda: mf.init(jax.random.PRNGKey(0), x, train=False))
    assert not any("num_batches_tracked" in p for p, _ in _flat(shapes["batch_stats"]))
    vf = _r18_variables(frozen_norm=True)
    o_train, upd = jax.jit(lambda vv: mf.apply(vv, x, train=True, mutable=["batch_stats"]))(vf)
    np.testing.assert_array_equal(upd["batch_stats"]["conv1"]["conv1_1"]["norm"]["mean"],
                                  vf["batch_stats"]["conv1"]["conv1_1"]["norm"]["mean"])
    o_eval = jax.jit(lambda vv: PResNet(depth=18).apply(vv, x, train=False))(_r18_variables())
    for a, b in zip(o_train, o_eval):
        assert_f32_close(a, b)  # another compiled program: float32 noise


def test_frozen_param_filter_counts_match_official_baseline():
    # Baseline R50 / R50-M / R101: freeze_at 0 (stem), FrozenBN everywhere (rtdetrv2.md §1.6):
    # torch counts R50 backbone params = 23,474,016 (BN affine are buffers), trainable = that - 28,512 (stem).
    v = abstract_backbone(50, size=64, freeze_at=0, freeze_norm=True)
    pred = PResNet(depth=50, freeze_at=0, freeze_norm=True).frozen_param_filter()
    leaves = dict(_flat(v["params"]))
    total = _count(v["params"])
    norm = sum(int(np.prod(x.shape)) for p, x in leaves.items() if p[-2] == "norm")
    frozen = sum(int(np.prod(x.shape)) for p, x in leaves.items() if pred(p))
    assert total - norm == 23_474_016
    assert total - frozen == 23_474_016 - 28_512
    # DEIM: nothing frozen
    assert PResNet(depth=50, freeze_at=-1, freeze_norm=False).frozen_param_filter() is None
    # freeze_at=2: stem + res_layers_0 + res_layers_1
    pred = PResNet(depth=50, freeze_at=2).frozen_param_filter()
    assert pred(("conv1", "conv1_2", "conv", "kernel"))
    assert pred(("res_layers_1", "blocks_0", "short", "conv", "conv", "kernel"))
    assert not pred(("res_layers_2", "blocks_0", "branch2a", "conv", "kernel"))
    assert not pred(("res_layers_2", "blocks_0", "branch2a", "norm", "scale"))
    nf = PResNet(depth=50, freeze_norm=True).frozen_param_filter()
    assert nf(("res_layers_2", "blocks_0", "branch2a", "norm", "scale"))
    assert not nf(("res_layers_2", "blocks_0", "branch2a", "conv", "kernel"))


def test_frozen_stem_gets_no_gradient():
    x = jax.random.uniform(jax.random.PRNGKey(1), (1, 32, 32, 3))
    m = PResNet(depth=18, freeze_at=1)
    v = _r18_variables()

    def loss(p):
        outs = m.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=False)
        return sum(jnp.sum(o) for o in outs)

    g = jax.jit(jax.grad(loss))(v["params"])
    assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree_util.tree_leaves(g["conv1"]))
    assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree_util.tree_leaves(g["res_layers_0"]))
    assert float(jnp.abs(g["res_layers_1"]["blocks_0"]["branch2a"]["conv"]["kernel"]).max()) > 0


def test_r50_eval_parity_through_encoder():
    """The r50 fixture keeps no backbone maps: run PResNet-50 (bottleneck blocks) + the RT-DETRv2
    encoder on image 0 and compare the stored encoder maps."""
    import importlib.util

    if importlib.util.find_spec("deim_jax.models.hybrid_encoder") is None:
        pytest.skip("deim_jax.models.hybrid_encoder not available yet")
    from deim_jax.models.hybrid_encoder import HybridEncoder

    name = "rtdetrv2_r50"
    ev = pu.load_npz(name, "eval.npz")
    raw = convert.raw_variables(pu.synth_state_dict(name))
    sub = lambda k: {"params": raw["params"][k], "batch_stats": raw["batch_stats"][k]}  # noqa: E731
    bb = PResNet(depth=50)
    enc = HybridEncoder(in_channels=bb.out_channels, feat_strides=(8, 16, 32), hidden_dim=256, dim_feedforward=1024,
                        use_encoder_idx=(2,), expansion=1.0, depth_mult=1.0, version="rtdetrv2")
    img = np.transpose(ev["images"][:1], (0, 2, 3, 1))
    outs = jax.jit(lambda vb, ve, x: enc.apply(ve, bb.apply(vb, x, train=False), train=False))(
        sub("backbone"), sub("encoder"), img)
    for i, o in enumerate(outs):
        ref = np.transpose(ev[f"encoder/{i}"][:1], (0, 2, 3, 1))
        np.testing.assert_allclose(np.asarray(o), ref, rtol=0, atol=1e-4)
