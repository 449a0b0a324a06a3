"""Faults a long run survives: SIGKILL at any moment, SIGTERM to one of several processes, a process
that dies, a non-finite loss. Runs the real command line (``python -m deim_jax.main``) on the tiny
config; a shared persistent compilation cache keeps restarts to a few seconds of compilation."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache as cache

from benchmarks.kill_resume import LIGHT, command, environment, kill_and_resume
from tests.train_helpers import free_port, tiny_config, tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("faults"))


def test_sigkill_in_a_save_and_a_step_and_sigterm_then_same_command_ends_bit_identical(root):
    """Kill 1 lands while the first checkpoint is written (its evaluation row already logged): the
    restart begins afresh and must drop that row. Kill 2 lands after step 3: the restart resumes
    from step 2. SIGTERM after the next step line: a checkpoint mid-epoch and exit 0. The finished
    run equals the uninterrupted one in every array (train state, data position) and eval row."""
    r = kill_and_resume(root, ["save:1", "step:3", "term:1"], epochs=2, seed=1, verbose=False, extra=LIGHT)
    assert [k["returncode"] for k in r["kills"]] == [-signal.SIGKILL, -signal.SIGKILL, 0], r["kills"]
    assert r["runs"] == 1 and r["differences"] == []


def _two_processes(root, workdir, epochs, **env):
    port, data = free_port(), tiny_dataset(os.path.join(root, "data"))
    base = environment(os.path.join(root, "xla_cache"))
    # evaluation only at the end (never reached): the test is about stopping, not AP
    cmd = command(data, workdir, epochs, (*LIGHT, "--config.eval_every_epochs=100"))
    return [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             env=dict(base, DEIM_COORDINATOR=f"127.0.0.1:{port}", DEIM_NUM_PROCESSES="2",
                                      DEIM_PROCESS_ID=str(i), **env)) for i in range(2)]


def _wait_for_line(proc, pattern, timeout_s=600):
    seen, start = [], time.monotonic()
    for line in proc.stdout:
        seen.append(line)
        if re.match(pattern, line):
            return seen
        assert time.monotonic() - start < timeout_s, "".join(seen[-30:])
    raise AssertionError(f"no line matching {pattern!r}:\n" + "".join(seen[-30:]))


def _finish(proc, timeout_s):
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out


def test_two_processes_sigterm_to_one_stops_both_then_a_killed_one_ends_the_other(root):
    """SIGTERM to process 1 only: both save the same step and exit 0. Restarted, the run resumes;
    SIGKILL to process 1: process 0 exits non-zero with a message, within the heartbeat timeout."""
    from deim_jax.train.checkpoints import CheckpointManager

    workdir, heartbeat = os.path.join(root, "two"), 10
    procs = _two_processes(root, workdir, epochs=5)
    try:
        head = _wait_for_line(procs[0], r"^step 3/")
        procs[1].send_signal(signal.SIGTERM)
        outs = ["".join(head) + _finish(procs[0], 300), _finish(procs[1], 300)]
    finally:
        _kill_all(procs)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    stopped = [re.findall(r"stopped at step (\d+)", o) for o in outs]
    assert stopped[0] and stopped[0] == stopped[1], stopped
    step = int(stopped[0][0])
    assert 3 <= step <= 7  # two logged steps before the end of the 5 epochs of 2 steps
    with CheckpointManager(os.path.join(workdir, "checkpoints")) as m:
        assert m.latest_step() == step

    procs = _two_processes(root, workdir, epochs=5, DEIM_HEARTBEAT_TIMEOUT_S=str(heartbeat),
                           DEIM_SHUTDOWN_TIMEOUT_S=str(heartbeat))
    try:
        head = _wait_for_line(procs[0], r"^step \d+/")  # the first logged step after a start is the second
        assert any(f"resumed from checkpoint step {step}" in line for line in head)
        procs[1].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        out = _finish(procs[0], 4 * heartbeat + 60)
        elapsed = time.monotonic() - t0
    finally:
        _kill_all(procs)
    assert procs[0].returncode != 0
    assert elapsed < 3 * heartbeat + 30, elapsed
    assert "process 0 of 2 failed" in out or "another task died" in out, out[-3000:]


def _kill_all(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


class _NanAtStep:
    """The train iterator with one NaN pixel in the batch of global step ``bad_step``."""

    def __init__(self, it, start_step, bad_step):
        self.it, self.step, self.bad_step = it, start_step, bad_step

    def __next__(self):
        batch = next(self.it)
        self.step += 1
        if self.step == self.bad_step:
            batch = dict(batch, image=batch["image"].copy())
            batch["image"][0, 0, 0, 0] = np.nan
        return batch

    def get_state(self):
        return self.it.get_state()


def test_non_finite_loss_stops_with_the_last_good_checkpoint_which_trains_on(root, monkeypatch):
    """NaN in the input at step 3: the run stops naming step 3 and checkpoint step 2; restarted (data
    fine again) it resumes from step 2 and reaches the end with finite losses."""
    from deim_jax import data as data_lib
    from deim_jax.train import checkpoints, loop

    # the train step compiled by the command-line runs above, from their persistent cache
    cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", os.path.join(root, "xla_cache"))
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        cfg = tiny_config(tiny_dataset(os.path.join(root, "data")), epochs=2)
        cfg.loss.matcher.method = "device"  # as in the command-line runs above (LIGHT): a cache hit
        cfg.model.decoder.num_layers, cfg.model.decoder.num_denoising = 1, 0
        workdir = os.path.join(root, "nan")
        real = data_lib.build_train_iterator
        monkeypatch.setattr(data_lib, "build_train_iterator",
                            lambda *a, **k: _NanAtStep(real(*a, **k), k["start_step"], bad_step=3))
        with pytest.raises(loop.NonFiniteLoss, match=r"at step 3 .*last good checkpoint: step 2 in "):
            loop.train_and_evaluate(cfg, workdir)
        monkeypatch.setattr(data_lib, "build_train_iterator", real)
        metrics = loop.train_and_evaluate(cfg, workdir)
        assert np.isfinite(metrics["AP"])
        with checkpoints.CheckpointManager(os.path.join(workdir, "checkpoints")) as m:
            assert m.latest_step() == 4
    finally:
        jax.config.update("jax_disable_most_optimizations", False)
        jax.config.update("jax_compilation_cache_dir", None)
        cache.reset_cache()
