"""Official state dict <-> deim_jax variables: exact round trip, clear errors, .pth reading, parameter counts."""

import numpy as np
import pytest

from deim_jax import configs, convert, models
from tests.parity_utils import assert_same_state_dict, synth_state_dict

OFFICIAL_PARAMS = {
    "rtdetrv2_r18": 20_183_440,
    "rtdetrv2_r34": 31_440_644,
    "rtdetrv2_r50m": 33_198_864,
    "rtdetrv2_r50": 42_943_596,
    "rtdetrv2_r101": 76_660_716,
    "dfine_n": 3_782_693,
    "dfine_s": 10_321_877,
    "dfine_m": 19_590_064,
    "dfine_l": 31_289_848,
    "dfine_x": 62_715_480,
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_parameter_counts_equal_official(name):
    cfg = configs.get_config(name)
    shapes = models.init_shapes(models.build(cfg), cfg)
    assert models.count_params(shapes["params"]) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("fixture,name", [("n", "dfine_n"), ("s", "dfine_s"), ("rtdetrv2_r18", "rtdetrv2_r18")])
def test_round_trip_is_exact(fixture, name):
    sd = synth_state_dict(fixture)
    cfg = configs.get_config(name)
    variables = convert.from_torch_state_dict(sd, cfg)
    assert_same_state_dict(convert.to_torch_state_dict(variables, cfg), sd)


def test_wrong_state_dict_lists_every_problem():
    sd = dict(synth_state_dict("n"))
    cfg = configs.get_config("dfine_n")
    del sd["backbone.stem.stem1.conv.weight"]
    sd["decoder.extra_head.weight"] = np.zeros((3, 3), np.float32)
    sd["decoder.enc_score_head.weight"] = np.zeros((81, 128), np.float32)
    with pytest.raises(convert.StateDictMismatch) as e:
        convert.from_torch_state_dict(sd, cfg)
    msg = str(e.value)
    assert "missing keys (1)" in msg and "backbone.stem.stem1.conv.weight" in msg
    assert "unexpected keys (1)" in msg and "decoder.extra_head.weight" in msg
    assert "shape mismatches (1)" in msg and "decoder.enc_score_head.weight" in msg


def test_checkpoint_of_another_size_is_rejected():
    with pytest.raises(convert.StateDictMismatch, match="shape mismatches"):
        convert.from_torch_state_dict(synth_state_dict("n"), configs.get_config("dfine_s"))


def test_load_pth_prefers_ema_and_never_unpickles_code(tmp_path):
    torch = pytest.importorskip("torch")
    sd = synth_state_dict("n")
    small = {k: sd[k] for k in list(sd)[:5]}
    as_torch = {k: torch.from_numpy(np.array(v)) for k, v in small.items()}
    other = {k: torch.zeros_like(v) for k, v in as_torch.items()}
    torch.save({"model": other, "ema": {"module": {"module." + k: v for k, v in as_torch.items()}, "updates": 3}},
               tmp_path / "train.pth")
    loaded = convert.load_pth(str(tmp_path / "train.pth"))
    assert sorted(loaded) == sorted(small)
    for k in small:
        np.testing.assert_array_equal(loaded[k], small[k])
    torch.save(as_torch, tmp_path / "plain.pth")
    assert sorted(convert.load_pth(str(tmp_path / "plain.pth"))) == sorted(small)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    import pickle

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": Evil()}, f, protocol=2)
    with pytest.raises(ValueError, match="weights-only"):
        convert.load_pth(str(tmp_path / "evil.pth"))
    with pytest.raises(FileNotFoundError):
        convert.load_pth(str(tmp_path / "missing.pth"))


def test_frozen_batchnorm_checkpoints_have_no_batch_counter():
    """RT-DETRv2 R50 baseline: FrozenBatchNorm2d in the backbone (no num_batches_tracked); round trip exact."""
    cfg = configs.get_config("rtdetrv2_r50_baseline")
    rng = np.random.default_rng(0)
    shapes = models.init_shapes(models.build(cfg), cfg)
    import jax

    variables = jax.tree_util.tree_map(lambda x: rng.standard_normal(x.shape).astype(x.dtype)
                                       if np.issubdtype(x.dtype, np.floating) else np.zeros(x.shape, x.dtype), shapes)
    sd = convert.to_torch_state_dict(variables, cfg)
    backbone_counts = [k for k in sd if k.startswith("backbone.") and k.endswith("num_batches_tracked")]
    assert not backbone_counts
    assert any(k.startswith("encoder.") and k.endswith("num_batches_tracked") for k in sd)
    back = convert.from_torch_state_dict(sd, cfg)
    for (pa, a), (pb, b) in zip(jax.tree_util.tree_leaves_with_path(variables), jax.tree_util.tree_leaves_with_path(back)):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
