"""Deploy-mode fusion (``deim_jax.models.fusion``): folded BatchNorms and re-parameterized RepVGG
blocks give the unfolded model's outputs on the parity fixtures' images, with fewer parameters."""

import jax
import numpy as np
import pytest

from deim_jax import configs, convert, models
from deim_jax.models import fusion
from tests.model_checks import check_max_abs
from tests.parity_utils import load_npz, synth_state_dict

# official deploy() parameter counts (RepVGG blocks re-parameterized, the encoder's ConvNormLayer
# BatchNorms folded), counted with the official code (DEIM configs deim_r18vd_120e_coco,
# deim_r101vd_60e_coco). D-FINE's deploy() also drops decoder heads unused in evaluation, which
# deim_jax keeps, so its counts are not comparable.
OFFICIAL_DEPLOY_PARAMS = {"rtdetrv2_r18": 19_979_152, "rtdetrv2_r101": 74_872_812}


def _count(variables):
    return sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(variables["params"]))


@pytest.mark.parametrize("fixture,name", [("n", "dfine_n"), ("rtdetrv2_r18", "rtdetrv2_r18")])
@pytest.mark.parametrize("norms_in", [None, fusion.OFFICIAL_DEPLOY])
def test_folded_model_computes_the_same_outputs(fixture, name, norms_in):
    cfg = configs.get_config(name)
    model = models.build(cfg)
    variables = convert.from_torch_state_dict(synth_state_dict(fixture), cfg)
    folded = fusion.fold(variables, norms_in=norms_in)
    assert _count(folded) < _count(variables)
    images = np.transpose(load_npz(fixture, "eval.npz")["images"], (0, 2, 3, 1))  # top-k margins chosen wide
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    want, got = forward(variables, images), forward(folded, images)
    idx = (np.asarray(got["enc_topk_indices"]), np.asarray(want["enc_topk_indices"]))
    np.testing.assert_array_equal(np.sort(idx[0], axis=1), np.sort(idx[1], axis=1))  # the same queries, in any order
    check_max_abs("pred_logits", got["pred_logits"], np.asarray(want["pred_logits"]), 1e-4, idx)
    check_max_abs("pred_boxes", got["pred_boxes"], np.asarray(want["pred_boxes"]), 1e-5, idx)


def test_folding_removes_every_batchnorm_and_repvgg_branch():
    cfg = configs.get_config("rtdetrv2_r18")
    folded = fusion.fold(convert.from_torch_state_dict(synth_state_dict("rtdetrv2_r18"), cfg))
    assert folded["batch_stats"] == {}  # no BatchNorm is left anywhere
    bottleneck = folded["params"]["encoder"]["fpn_blocks_0"]["bottlenecks_0"]
    assert set(bottleneck) == {"conv"} and bottleneck["conv"]["kernel"].shape[:2] == (3, 3)


@pytest.mark.parametrize("name", sorted(OFFICIAL_DEPLOY_PARAMS))
def test_official_deploy_parameter_count(name):
    cfg = configs.get_config(name)
    shapes = models.init_shapes(models.build(cfg), cfg)
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    zeros["batch_stats"] = jax.tree_util.tree_map(lambda a: a + 1 if a.dtype == np.float32 else a, zeros["batch_stats"])
    assert _count(fusion.fold(zeros, norms_in=fusion.OFFICIAL_DEPLOY)) == OFFICIAL_DEPLOY_PARAMS[name]
