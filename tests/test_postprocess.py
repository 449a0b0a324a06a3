"""Post-processor: parity with the official PostProcessor outputs in eval.npz (post/...)."""

import jax
import numpy as np
import pytest

from deim_jax.evaluate import postprocess as pp
from deim_jax.ops import coco_categories as cats
from tests.parity_utils import load_npz


def test_coco_category_maps():
    ids = cats.MSCOCO_CATEGORY_IDS
    assert len(ids) == 80 and list(ids) == sorted(ids) and ids[0] == 1 and ids[-1] == 90
    assert set(range(1, 91)) - set(ids) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    for lab, cat in cats.MSCOCO_LABEL2CATEGORY.items():
        assert cats.MSCOCO_CATEGORY2LABEL[cat] == lab
    np.testing.assert_array_equal(np.asarray(cats.label_to_category(np.arange(80))), ids)
    np.testing.assert_array_equal(cats.category_to_label(np.asarray(ids)), np.arange(80))
    assert cats.category_to_label(np.asarray([12]))[0] == -1


def test_small_example_by_hand():
    # one image, 2 queries, 3 classes
    logits = np.array([[[0.0, 2.0, -1.0], [3.0, -5.0, 1.0]]], np.float32)
    boxes = np.array([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]], np.float32)
    out = pp.postprocess(logits, boxes, np.array([[100, 200]]), num_top_queries=3,
                         remap_mscoco_category=False)
    s = 1 / (1 + np.exp(-np.array([3.0, 2.0, 1.0])))
    np.testing.assert_allclose(np.asarray(out["scores"][0]), s, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["labels"][0]), [0, 1, 2])
    np.testing.assert_allclose(np.asarray(out["boxes"][0]),
                               [[0, 100, 50, 200], [40, 60, 60, 140], [0, 100, 50, 200]], atol=1e-4)


def _sorted_rows(labels, boxes, scores):
    # sort by (score desc, label, box) so equal-score rows have a defined order
    order = np.lexsort((boxes[:, 1], boxes[:, 0], labels, -scores))
    return labels[order], boxes[order], scores[order]


@pytest.mark.parametrize("name", ["n", "s"])
def test_parity_with_eval_fixture(name):
    z = load_npz(name, "eval.npz")
    fn = jax.jit(pp.postprocess, static_argnames=("num_top_queries", "remap_mscoco_category"))
    out = fn(z["pred_logits"], z["pred_boxes"], z["post/orig_target_sizes"])
    out_c = fn(z["pred_logits"], z["pred_boxes"], z["post/orig_target_sizes"], remap_mscoco_category=False)
    scores = np.asarray(out["scores"])
    np.testing.assert_allclose(scores, z["post/scores"], atol=1e-5, rtol=0)
    for b in range(scores.shape[0]):
        for key_lab, mine_lab in (("post/labels", out["labels"]), ("post/labels_contiguous", out_c["labels"])):
            ml, mb, ms = _sorted_rows(np.asarray(mine_lab[b]), np.asarray(out["boxes"][b]), scores[b])
            rl, rb, rs = _sorted_rows(z[key_lab][b], z["post/boxes"][b], z["post/scores"][b])
            # same (label, box) rows: match each reference row to a row of mine with the same label
            # and box within 1e-2 px and a score within 1e-5
            used = np.zeros(len(ml), bool)
            for lab, box, sc in zip(rl, rb, rs):
                cand = np.where(~used & (ml == lab) & (np.abs(ms - sc) <= 1e-5)
                                & np.all(np.abs(mb - box) <= 1e-2, axis=1))[0]
                assert len(cand) > 0, (b, lab, box, sc)
                used[cand[0]] = True
