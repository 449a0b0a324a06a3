"""The official stage-2 rule (deim_dfine.md §9.6) in the training loop: the last stage-1 epoch is
evaluated, the best stage-1 checkpoint is reloaded at ``stop_epoch`` and after every stage-2 epoch
that does not improve; decisions survive a resume; every epoch-policy change is logged."""

import logging
import os

import jax
import numpy as np
import optax
import pytest

from deim_jax.train import checkpoints, loop
from deim_jax.train.stage2 import Stage2Rule
from tests.train_helpers import tiny_config, tiny_dataset

SPE = 2  # 8 train images, batch 4
# AP scripted per evaluated epoch count: the best stage-1 checkpoint is after epoch 2 (AP 0.30); the first
# stage-2 epoch (AP 0.25) does not beat it; the next one counts as better after the reset (and is the best of
# the run, 0.40); the last one (0.05) does not improve, but the run ends.
SCRIPTED_AP = {2: 0.30, 3: 0.20, 4: 0.25, 5: 0.40, 6: 0.05}


def test_rule_resets_after_a_non_improving_epoch():
    rule = Stage2Rule()
    rule.start(0.3)
    assert [rule.after_eval(ap) for ap in (0.25, 0.1, 0.2, 0.2, 0.4)] == [True, False, False, True, False]
    assert rule == Stage2Rule(started=True, running_best=0.4, reload_pending=True)  # the pending reload of the 4th
    assert Stage2Rule.from_json(rule.to_json()) == rule and Stage2Rule.from_json(None) == Stage2Rule()
    rule.start(None)  # no evaluated stage-1 checkpoint: the first stage-2 AP is the running best
    assert not rule.after_eval(0.0)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    jax.config.update("jax_disable_most_optimizations", True)
    yield tiny_dataset(str(tmp_path_factory.mktemp("tiny_data")))
    jax.config.update("jax_disable_most_optimizations", False)


def _config(root):
    cfg = tiny_config(root, epochs=6)
    cfg.eval_every_epochs = 2
    cfg.data.policy_epochs, cfg.data.mixup_epochs, cfg.data.stop_epoch = (0, 1, 3), (0, 2), 3
    return cfg


@pytest.fixture()
def scripted(monkeypatch):
    """Replace COCO evaluation by SCRIPTED_AP; record every evaluation and every reload."""
    seen = {"evals": [], "reloads": []}

    def fake_eval(cfg, s, state, records, classes, workdir, step, writer):
        seen["evals"].append(step // SPE)
        return {"AP": SCRIPTED_AP[step // SPE]}

    real_reload = loop._reload_best_stage1

    def spy_reload(mngr, state, why):
        new, ap = real_reload(mngr, state, why)
        best = mngr.restore(mngr.best_step(loop.STAGE1_AP), target=state)["train"]
        # host copies: the train step donates the state's buffers
        seen["reloads"].append((int(state.step), ap, *jax.device_get((new, best, state))))
        return new, ap

    monkeypatch.setattr(loop, "_evaluate_ema", fake_eval)
    monkeypatch.setattr(loop, "_reload_best_stage1", spy_reload)
    return seen


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _schedule_counts(opt_state):
    nodes = jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
    return [int(n.count) for n in nodes if isinstance(n, optax.ScaleByScheduleState)]


def test_stage2_reloads_and_resumes_identically(data_root, tmp_path, scripted, caplog):
    cfg = _config(data_root)
    straight = str(tmp_path / "straight")
    with caplog.at_level(logging.INFO, logger="deim_jax.train.loop"):
        loop.train_and_evaluate(cfg, straight)
    # epochs 2 (eval_every), 3 (the last stage-1 epoch), then every stage-2 epoch
    assert scripted["evals"] == [2, 3, 4, 5, 6]
    # reloads at the start of stage 2 (step 6) and after the non-improving epoch 4 (step 8), both of step 4
    assert [(step, ap) for step, ap, *_ in scripted["reloads"]] == [(3 * SPE, 0.30), (4 * SPE, 0.30)]
    for step, _, new, best, old in scripted["reloads"]:
        assert int(best.step) == 2 * SPE and int(new.step) == step
        for name in ("params", "batch_stats", "ema_params", "ema_batch_stats"):
            for x, y in zip(_leaves(getattr(new, name)), _leaves(getattr(best, name))):
                np.testing.assert_array_equal(x, y, err_msg=name)
        mu_new = [x for x in _leaves(new.opt_state) if x.ndim > 0]
        mu_best = [x for x in _leaves(best.opt_state) if x.ndim > 0]
        assert all(np.array_equal(x, y) for x, y in zip(mu_new, mu_best))  # Adam moments of the best
        assert _schedule_counts(new.opt_state) == _schedule_counts(old.opt_state) != _schedule_counts(best.opt_state)
        assert set(_schedule_counts(new.opt_state)) == {step}  # the lr goes on from the global step

    log_text = caplog.text
    assert "epoch 0 (start of the run): photometric distortion, zoom-out and IoU crop on; Mosaic (p=0.5) on; " \
           "MixUp (p=0.5) on; multi-scale sizes off" in log_text
    assert "epoch 1: Mosaic (p=0.5) off" in log_text and "epoch 2: MixUp (p=0.5) off" in log_text
    assert "epoch 3: photometric distortion, zoom-out and IoU crop off" in log_text
    assert "stage 2 starts at epoch 3 (no augmentation): reloaded the best stage-1 checkpoint (step 4, AP 0.3000)" \
        in log_text
    assert "AP 0.2500 after epoch 4 does not improve" in log_text
    assert "epoch 4, stage 2: the last evaluation did not improve: reloaded" in log_text
    assert "best AP 0.4000: checkpoint step 10" in log_text

    # Kept: the last keep_checkpoints=2, the best by AP (a stage-2 one) and the best stage-1 one.
    with checkpoints.CheckpointManager(os.path.join(straight, "checkpoints")) as m:
        assert m.all_steps() == [2 * SPE, 5 * SPE, 6 * SPE]
        assert m.best_step(loop.STAGE1_AP) == 2 * SPE and m.best_step() == 5 * SPE
        assert loop.STAGE1_AP not in m.metrics(5 * SPE)
        assert m.restore(6 * SPE)["loop"] == {"stage2": {"started": True, "running_best": None, "reload_pending": True}}
        want = m.restore(6 * SPE)["train"]

    # Killed in the middle of the first stage-2 epoch, then right after the non-improving epoch 4 (its
    # reload pending): the resumed runs still find the best stage-1 checkpoint, take the same decisions
    # and end bit-identical.
    split = str(tmp_path / "split")
    for stop in (3 * SPE + 1, 4 * SPE, 0):
        loop.train_and_evaluate(cfg, split, stop_at_step=stop)
    with checkpoints.CheckpointManager(os.path.join(split, "checkpoints")) as m:
        got = m.restore(6 * SPE)["train"]
    for x, y in zip(_leaves(got), _leaves(want)):
        np.testing.assert_array_equal(x, y)
