"""End-to-end training: one epoch of a tiny config, bit-exact resume, non-finite detection, eval mode,
class names taken from the data and stored with the checkpoints (shown by --mode=predict)."""

import json
import os

import jax
import numpy as np
import pytest

from deim_jax import cli
from deim_jax.data.classes import Classes
from deim_jax.evaluate import evaluator
from deim_jax.train import checkpoints, init_from, loop
from deim_jax.train import setup as setup_lib
from tests.train_helpers import tiny_config, tiny_dataset

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    # Compile time dominates these tiny runs; restore the global setting afterwards.
    jax.config.update("jax_disable_most_optimizations", True)
    yield tiny_dataset(str(tmp_path_factory.mktemp("tiny_data")))
    jax.config.update("jax_disable_most_optimizations", False)


def _state(workdir, step=None):
    mngr = checkpoints.CheckpointManager(os.path.join(workdir, "checkpoints"))
    out = mngr.restore(step)["train"]
    mngr.close()
    return out


def test_train_evaluate_resume_bit_exact_and_eval_mode(data_root, tmp_path, capsys):
    """Two epochs straight == one epoch, stop, resume, one more (identical parameters, EMA, optimizer
    state); every evaluation writes one eval.jsonl row; --mode=eval reproduces the last AP;
    num_classes=0 takes the data's 4 classes, whose names every checkpoint stores."""
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    cfg = tiny_config(data_root, epochs=2)
    cfg.num_classes = 0  # from the data set
    metrics = loop.train_and_evaluate(cfg, straight)
    assert cfg.num_classes == 4 and json.load(open(os.path.join(straight, "config.json")))["num_classes"] == 4
    loop.train_and_evaluate(cfg, split, stop_at_step=2)
    assert int(_state(split)["step"]) == 2
    loop.train_and_evaluate(cfg, split)  # resumes from step 2

    rows = [json.loads(line) for line in open(os.path.join(straight, "eval.jsonl"))]
    assert [(r["step"], r["epoch"]) for r in rows] == [(2, 1), (4, 2)]
    for k in STAT_NAMES:
        assert -1.0 <= rows[-1][k] <= 1.0, k
    assert sorted(rows[-1]["per_class"]) == ["circle", "cross", "square", "triangle"]
    assert metrics["AP"] == rows[-1]["AP"]
    assert os.path.isfile(os.path.join(straight, "config.json"))
    assert os.path.isfile(os.path.join(straight, "per_class_ap.txt"))

    a, b = _state(straight), _state(split)
    assert int(a["step"]) == int(b["step"]) == 4
    leaves_a = jax.tree_util.tree_leaves_with_path(a)
    leaves_b = dict(jax.tree_util.tree_leaves_with_path(b))
    assert len(leaves_a) == len(leaves_b)
    for path, x in leaves_a:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(leaves_b[path]), err_msg=jax.tree_util.keystr(path))

    # --mode=eval runs the setup's predict step (the same program) on the bit-identical restored EMA
    # weights, so its detections equal the loop's; the tolerance only covers the JSON round trip.
    assert loop.evaluate_checkpoint(cfg, straight)["AP"] == pytest.approx(rows[-1]["AP"], abs=1e-6)

    found = checkpoints.latest_weights(os.path.join(straight, "checkpoints"))
    names = {0: "square", 1: "circle", 2: "triangle", 3: "cross"}
    assert Classes.from_json(found["classes"]) == Classes(names, {0: 1, 1: 2, 2: 3, 3: 5})
    assert found["variables"]["params"]["decoder"]["enc_score_head"]["kernel"].shape[-1] == 4
    capsys.readouterr()
    cli.predict(cfg, weights=os.path.join(straight, "checkpoints"))
    shown = [line.split()[2] for line in capsys.readouterr().out.splitlines() if line.startswith("  label")]
    assert len(shown) >= 5 and set(shown) <= set(names.values()), shown


def test_missing_data_is_a_clear_error(tmp_path):
    from deim_jax.data import prepare

    cfg = tiny_config(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="config.data.train.annotations"):
        prepare.check_or_generate(cfg.data)


@pytest.mark.parametrize("num_classes", [4, 6])
def test_evaluation_chain_gives_ap_one_for_perfect_predictions(data_root, num_classes):
    """Eval pipeline -> post-processing -> category mapping -> COCO eval, fed the ground truth itself;
    also for a model with more classes than the data (labels 4, 5 have no category)."""
    from deim_jax import data as data_lib
    from deim_jax.train import sharding

    cfg = tiny_config(data_root)
    cfg.num_classes = num_classes
    records = data_lib.load_split(cfg.data, "val")
    truth = list(data_lib.build_eval_iterator(cfg.data, records=records))
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

    picture = []
    metrics = evaluator.evaluate(cfg, oracle, sharding.make_mesh(), records, picture)
    assert metrics["AP50"] > 0.99 and metrics["AP"] > 0.9, metrics
    assert len(picture) == 1 and picture[0].dtype == np.uint8 and picture[0].shape[-1] == 3


def test_init_from_pth_with_other_class_count(data_root, tmp_path):
    """Fine-tuning from an official-format .pth: class heads of another size are re-initialized, the rest loads."""
    torch = pytest.importorskip("torch")
    from deim_jax import convert, models

    src_cfg = tiny_config(data_root)
    src_cfg.num_classes = 7
    src = jax.device_get(models.init(models.build(src_cfg), src_cfg, jax.random.PRNGKey(3)))
    sd = convert.to_torch_state_dict(src, src_cfg)
    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}}, tmp_path / "src.pth")

    cfg = tiny_config(data_root)  # 4 classes
    cfg.init_from = str(tmp_path / "src.pth")
    fresh = jax.device_get(models.init(models.build(cfg), cfg, jax.random.PRNGKey(0)))
    got = init_from.initial_variables(cfg, models.build(cfg), jax.random.PRNGKey(0))
    p_src, p_got, p_fresh = src["params"], got["params"], fresh["params"]
    np.testing.assert_array_equal(p_got["backbone"]["stem"]["stem1"]["conv"]["kernel"],
                                  p_src["backbone"]["stem"]["stem1"]["conv"]["kernel"])
    np.testing.assert_array_equal(p_got["decoder"]["enc_bbox_head"]["layers_0"]["kernel"],
                                  p_src["decoder"]["enc_bbox_head"]["layers_0"]["kernel"])
    assert p_got["decoder"]["enc_score_head"]["kernel"].shape[-1] == 4
    np.testing.assert_array_equal(p_got["decoder"]["enc_score_head"]["kernel"],
                                  p_fresh["decoder"]["enc_score_head"]["kernel"])
    np.testing.assert_array_equal(p_got["decoder"]["denoising_class_embed"]["embedding"],
                                  p_fresh["decoder"]["denoising_class_embed"]["embedding"])


def test_non_finite_step_is_detected_and_can_be_skipped(data_root):
    """A NaN input gives finite=False; with skip_nonfinite_steps the state (step counter too) is unchanged."""
    from deim_jax import models

    cfg = tiny_config(data_root)
    cfg.skip_nonfinite_steps = True
    s = setup_lib.setup(cfg, steps_per_epoch=2)
    variables = models.init(s.model, cfg, jax.random.PRNGKey(0))
    state = setup_lib.init_state(s, variables, jax.random.PRNGKey(1))
    step = s.train_step  # donates its state argument: keep host copies of what is compared
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((2, 96, 96, 3), np.float32),
             "boxes": np.tile(np.array([[[0.5, 0.5, 0.3, 0.3]]], np.float32), (2, 16, 1)),
             "labels": np.zeros((2, 16), np.int32), "mask": np.arange(16)[None].repeat(2, 0) < 2}
    good, m = step(state, batch)
    assert bool(m["finite"]) and int(good.step) == 1
    good_params = jax.device_get(good.params)
    batch["image"][0, 0, 0, 0] = np.nan
    bad, m = step(good, batch)
    assert not bool(m["finite"])
    assert int(bad.step) == 1
    for a, b in zip(jax.tree_util.tree_leaves(bad.params), jax.tree_util.tree_leaves(good_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
