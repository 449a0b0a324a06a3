"""End-to-end training: one epoch of a tiny config, bit-exact resume, non-finite detection, eval mode."""

import json
import os

import jax
import numpy as np
import pytest

from deim_jax.train import checkpoints, loop
from tests.train_helpers import enable_compile_cache, tiny_config, tiny_dataset

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    enable_compile_cache(str(tmp_path_factory.mktemp("xla_cache")))
    return tiny_dataset(str(tmp_path_factory.mktemp("tiny_data")))


def _params(workdir, step=None):
    mngr = checkpoints.CheckpointManager(os.path.join(workdir, "checkpoints"))
    out = mngr.restore(step)["train"]
    mngr.close()
    return out


def test_one_epoch_trains_evaluates_and_checkpoints(data_root, tmp_path):
    cfg = tiny_config(data_root)
    metrics = loop.train_and_evaluate(cfg, str(tmp_path))
    rows = [json.loads(l) for l in open(tmp_path / "eval.jsonl")]
    assert len(rows) == 1 and rows[0]["step"] == 2 and rows[0]["epoch"] == 1
    for k in STAT_NAMES:
        assert -1.0 <= rows[0][k] <= 1.0, k
    assert set(rows[0]["per_class"]) == {"circle", "square", "triangle", "cross"} or len(rows[0]["per_class"]) == 4
    assert metrics["AP"] == rows[0]["AP"]
    assert os.path.isfile(tmp_path / "config.json") and os.path.isfile(tmp_path / "per_class_ap.txt")
    state = _params(str(tmp_path))
    assert int(state["step"]) == 2


def test_resume_is_bit_exact(data_root, tmp_path):
    """2 epochs straight == 1 epoch, stop, resume, 1 more epoch (identical parameters, EMA, optimizer)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    loop.train_and_evaluate(tiny_config(data_root, epochs=2), str(straight))
    loop.train_and_evaluate(tiny_config(data_root, epochs=1), str(split))
    loop.train_and_evaluate(tiny_config(data_root, epochs=2), str(split))  # resumes from step 2
    a, b = _params(str(straight)), _params(str(split))
    leaves_a = jax.tree_util.tree_leaves_with_path(a)
    leaves_b = dict(jax.tree_util.tree_leaves_with_path(b))
    assert len(leaves_a) == len(leaves_b)
    for path, x in leaves_a:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(leaves_b[path]), err_msg=jax.tree_util.keystr(path))


def test_eval_mode_restores_latest_checkpoint(data_root, tmp_path):
    from deim_jax.train import loop as loop_lib

    cfg = tiny_config(data_root)
    loop_lib.train_and_evaluate(cfg, str(tmp_path))
    before = [json.loads(l) for l in open(tmp_path / "eval.jsonl")][-1]
    metrics = loop_lib.evaluate_checkpoint(cfg, str(tmp_path))
    assert metrics["AP"] == pytest.approx(before["AP"])


def test_missing_data_is_a_clear_error(tmp_path):
    from deim_jax.data import prepare

    cfg = tiny_config(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="config.data.train.annotations"):
        prepare.check_or_generate(cfg)


def test_evaluation_chain_gives_ap_one_for_perfect_predictions(data_root):
    """Eval pipeline -> post-processing -> category mapping -> COCO eval, fed the ground truth itself."""
    from deim_jax import data as data_lib
    from deim_jax.train import sharding

    cfg = tiny_config(data_root)
    records = data_lib.load_split(cfg, "val")
    truth = list(data_lib.build_eval_iterator(cfg, records=records))
    q, c = cfg.model.decoder.num_queries, cfg.num_classes

    def oracle(images):
        batch = truth.pop(0)
        b, m = batch["mask"].shape
        logits = np.full((b, q, c), -20.0, np.float32)
        boxes = np.full((b, q, 4), 0.5, np.float32)
        logits[:, :m][batch["mask"]] = -20.0
        for i in range(b):
            n = int(batch["mask"][i].sum())
            logits[i, np.arange(n), batch["labels"][i, :n]] = 20.0
            boxes[i, :n] = batch["boxes"][i, :n]
        return {"pred_logits": logits, "pred_boxes": boxes}

    metrics = loop.evaluate(cfg, oracle, sharding.make_mesh(), records)
    assert metrics["AP50"] > 0.99 and metrics["AP"] > 0.9, metrics
