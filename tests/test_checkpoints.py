"""Orbax checkpoints: bit-exact round trip, keep-last-N plus best, atomicity, restore on another device count."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deim_jax.train import optimizer as opt_lib
from deim_jax.data.classes import Classes, display_names
from deim_jax.train.checkpoints import CheckpointError, CheckpointManager, abstract_like, latest_weights
from deim_jax.train.train_step import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(seed=0, n=16):
    rng = np.random.default_rng(seed)
    params = {
        "backbone": {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 4, n)), jnp.float32)}},
        "decoder": {"proj": {"kernel": jnp.asarray(rng.normal(size=(n, 8)), jnp.float32),
                             "bias": jnp.asarray(rng.normal(size=(8,)), jnp.float32)}},
    }
    bstats = {"backbone": {"bn": {"mean": jnp.asarray(rng.normal(size=(n,)), jnp.float32),
                                  "var": jnp.asarray(rng.uniform(size=(n,)), jnp.float32),
                                  "num_batches_tracked": jnp.asarray(seed + 3, jnp.int32)}}}
    cfg = dict(epochs=2, optimizer=dict(lr=1e-3, weight_decay=1e-4, betas=(0.9, 0.999), eps=1e-8, clip_norm=0.1,
                                        groups=[dict(regex=r"^(?=.*backbone)(?!.*norm|bn).*$", lr=1e-4, weight_decay=1e-4)]),
               schedule=dict(name="flatcosine", warmup_iter=2, flat_epoch=1, no_aug_epoch=0, lr_gamma=0.5,
                             first_step_divisor=500, iters_per_epoch=4, epochs=2))
    tx = opt_lib.build_optimizer(cfg, params, 4)
    opt_state = tx.init(params)
    grads = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    for _ in range(2):  # non-trivial moments and counts
        upd, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, upd)
    state = TrainState(step=jnp.asarray(seed + 2, jnp.int32), params=params, batch_stats=bstats, opt_state=opt_state,
                       ema_params=jax.tree_util.tree_map(lambda x: x * 0.5, params), ema_batch_stats=bstats,
                       rng=jax.random.PRNGKey(seed))
    return state, cfg


def _assert_identical(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_round_trip_bit_identical(tmp_path):
    state, cfg = _state(0)
    data = {"epoch": np.int32(3), "iter_in_epoch": np.int64(17), "perm": np.arange(10, dtype=np.int32)}
    with CheckpointManager(str(tmp_path / "ck"), max_to_keep=2) as m:
        assert m.latest_step() is None
        m.save(2, state, data_state=data, config=cfg, metrics={"AP": 0.25})
        r = m.restore(target=state)
        _assert_identical(r["train"], state)
        assert isinstance(r["train"], TrainState)
        _assert_identical(r["data"], data)
        assert r["config"] == json.loads(json.dumps(cfg))
        assert r["metrics"] == {"AP": 0.25} and r["step"] == 2
        # abstract target (shapes/dtypes/shardings only) and no target at all
        r2 = m.restore(2, target=abstract_like(state))
        _assert_identical(r2["train"], state)
        r3 = m.restore()  # no target: plain nested dicts of arrays
        for name in ("params", "batch_stats", "ema_params", "ema_batch_stats", "step"):
            _assert_identical(jax.tree_util.tree_map(np.asarray, r3["train"][name]), getattr(state, name))
    # a fresh manager on the same directory sees it
    with CheckpointManager(str(tmp_path / "ck")) as m:
        assert m.latest_step() == 2
        _assert_identical(m.restore(target=state)["train"], state)


def test_either_array_format_restores_with_either_manager(tmp_path):
    """Runs saved in orbax's OCDBT format (the default before ``checkpoint_ocdbt=False``) resume
    under the zarr-per-array default, and the other way round, bit-identically."""
    state, cfg = _state(0)
    for written, reader in ((True, False), (False, True)):
        root = str(tmp_path / f"ck_{written}")
        with CheckpointManager(root, ocdbt=written) as m:
            m.save(1, state, config=cfg)
        assert os.path.exists(os.path.join(root, "1", "state", "manifest.ocdbt")) == written
        with CheckpointManager(root, ocdbt=reader) as m:
            _assert_identical(m.restore(target=state)["train"], state)
            m.save(2, state)  # and goes on saving in its own format
            _assert_identical(m.restore(2, target=state)["train"], state)


def test_class_names_are_stored_with_every_checkpoint(tmp_path):
    state, _ = _state(0, n=4)
    classes = Classes({0: "square", 1: "circle", 3: "cross"}, {0: 1, 1: 2, 2: 3, 3: 5})  # label 2: no name
    root = str(tmp_path / "ck")
    with CheckpointManager(root, classes=classes.to_json()) as m:
        m.save(1, state, metrics={"AP": 0.3})
        m.save(2, state)
    assert json.load(open(os.path.join(root, "2", "meta", "metadata")))["classes"] == {
        "class_names": ["square", "circle", None, "cross"], "label_to_category": {"0": 1, "1": 2, "2": 3, "3": 5}}
    with CheckpointManager(root) as m:  # a reader needs no names to read them back
        assert Classes.from_json(m.restore(1)["classes"]) == classes
        assert Classes.from_json(m.restore_best()["classes"]) == classes
    found = latest_weights(root)
    assert found["step"] == 2 and Classes.from_json(found["classes"]) == classes
    _assert_identical(found["variables"], {"params": state.ema_params, "batch_stats": state.ema_batch_stats})
    assert display_names(Classes.from_json(found["classes"]), 4, False) == {0: "square", 1: "circle", 3: "cross"}


def test_checkpoint_without_class_names_still_restores(tmp_path):
    """A checkpoint of the format before names were stored (meta ``{step, metrics}``) restores with
    classes None; shown names fall back to COCO's for an 80-class COCO model, else to label numbers."""
    state, _ = _state(0, n=4)
    root = str(tmp_path / "ck")
    with CheckpointManager(root) as m:
        m.save(1, state)
    assert json.load(open(os.path.join(root, "1", "meta", "metadata"))) == {"step": 1, "metrics": {}}
    with CheckpointManager(root) as m:
        r = m.restore(target=state)
    _assert_identical(r["train"], state)
    assert r["classes"] is None and Classes.from_json(r["classes"]) is None
    assert latest_weights(root)["classes"] is None and latest_weights(str(tmp_path / "none")) is None
    coco = display_names(None, 80, True)
    assert (coco[0], coco[62], coco[79]) == ("person", "tv", "toothbrush")
    assert display_names(None, 4, False) == {} and display_names(None, 80, False) == {}


def test_keep_last_n_plus_best(tmp_path):
    states = {s: _state(s, n=4)[0] for s in range(1, 7)}
    aps = {1: 0.10, 2: 0.50, 3: 0.20, 4: None, 5: 0.30, 6: 0.40}
    with CheckpointManager(str(tmp_path / "ck"), max_to_keep=2) as m:
        for s in range(1, 7):
            m.save(s, states[s], data_state={"epoch": np.int32(s)},
                   metrics=None if aps[s] is None else {"AP": aps[s]})
        assert m.all_steps() == [2, 5, 6]
        assert m.latest_step() == 6 and m.best_step() == 2
        best = m.restore_best(target=states[2])
        assert best["step"] == 2 and best["metrics"] == {"AP": 0.5}
        _assert_identical(best["train"], states[2])
        assert int(best["data"]["epoch"]) == 2
    with CheckpointManager(str(tmp_path / "ck"), max_to_keep=2) as m:
        m.save(7, states[6], metrics={"AP": 0.6})  # new best: the old best goes, last two stay
        assert m.all_steps() == [6, 7] and m.best_step() == 7


def test_best_checkpoints_survive_a_reopened_manager(tmp_path):
    """A resumed run opens a new manager: the best checkpoints of the earlier process (by AP and by a
    ``keep_best_of`` metric) are still ranked and kept when it saves worse or unevaluated ones."""
    state = _state(0, n=4)[0]
    saved = {1: {"AP": 0.5, "stage1_AP": 0.5}, 2: {"AP": 0.2, "stage1_AP": 0.2}, 3: None}
    with CheckpointManager(str(tmp_path / "ck"), max_to_keep=2, keep_best_of=("stage1_AP",)) as m:
        for step, metrics in saved.items():
            m.save(step, state, metrics=metrics)
    with CheckpointManager(str(tmp_path / "ck"), max_to_keep=2, keep_best_of=("stage1_AP",)) as m:
        m.save(4, state, metrics={"AP": 0.3})
        m.save(5, state)
        assert m.all_steps() == [1, 4, 5]
        assert m.best_step() == m.best_step("stage1_AP") == 1


def test_leftover_tmp_dir_does_not_hide_last_good_checkpoint(tmp_path):
    state, _ = _state(1, n=4)
    root = tmp_path / "ck"
    with CheckpointManager(str(root)) as m:
        m.save(1, state)
    # what a save killed mid-way leaves behind: a partial temporary directory for step 2
    tmp = root / "2.orbax-checkpoint-tmp-1234567890"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "partial").write_bytes(b"\x00" * 100)
    with CheckpointManager(str(root)) as m:
        assert m.latest_step() == 1 and m.all_steps() == [1]
        _assert_identical(m.restore(target=state)["train"], state)
        assert tmp.exists()  # a manager that only reads deletes nothing
        m.save(2, state)
        assert m.all_steps() == [1, 2]
    assert not tmp.exists()  # the first save of the next writer removed the leftover


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {repo!r})
    from deim_jax.train.checkpoints import CheckpointManager
    m = CheckpointManager({root!r}, async_save=True)
    m.save(1, {{"w": np.full((1000,), 1.0, np.float32)}})
    m.wait_until_finished()
    big = {{"w": np.full((1000,), 2.0, np.float32), "big": np.random.default_rng(0).normal(size=(16, 1024, 1024)).astype(np.float32)}}
    m.save(2, big)            # asynchronous: returns while the background write is under way
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_save_killed_midway_keeps_previous_checkpoint(tmp_path):
    root = str(tmp_path / "ck")
    script = _KILL_SCRIPT.format(repo=REPO, root=root)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    with CheckpointManager(root) as m:
        assert 1 in m.all_steps()
        target = {"w": np.zeros((1000,), np.float32)}
        r = m.restore(1, target=target)
        np.testing.assert_array_equal(r["train"]["w"], np.full((1000,), 1.0, np.float32))
        latest = m.latest_step()
        if latest == 2:  # the write happened to finish before the kill: it must then be complete
            r = m.restore(2)
            assert float(np.asarray(r["train"]["w"])[0]) == 2.0 and r["train"]["big"].shape == (16, 1024, 1024)
        else:
            assert latest == 1
            r = m.restore()  # latest (no target) is the previous good checkpoint
            np.testing.assert_array_equal(r["train"]["w"], np.full((1000,), 1.0, np.float32))
        m.save(3, {"w": np.full((1000,), 3.0, np.float32)})  # the next writer works and cleans up
        assert m.latest_step() == 3
    assert not [p for p in os.listdir(root) if "tmp" in p]


_SHARDED_RESTORE = textwrap.dedent("""
    import sys
    import jax, numpy as np
    sys.path.insert(0, {repo!r})
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from deim_jax.train.checkpoints import CheckpointManager
    assert jax.device_count() == 2
    mesh = Mesh(np.array(jax.devices()), ("data",))
    target = {{"w": jax.ShapeDtypeStruct((8, 6), np.float32, sharding=NamedSharding(mesh, P("data"))),
               "b": jax.ShapeDtypeStruct((6,), np.float32, sharding=NamedSharding(mesh, P()))}}
    r = CheckpointManager({root!r}).restore(target=target)
    w, b = r["train"]["w"], r["train"]["b"]
    assert w.sharding == target["w"].sharding and len(w.addressable_shards) == 2, w.sharding
    assert w.addressable_shards[0].data.shape == (4, 6)
    np.testing.assert_array_equal(np.asarray(w), np.arange(48, dtype=np.float32).reshape(8, 6))
    np.testing.assert_array_equal(np.asarray(b), np.ones(6, np.float32))
    m = CheckpointManager({root!r})
    m.save(4, {{"w": w * 2, "b": b}})  # saved sharded over 2 devices
    m.close()
    print("OK")
""")


def test_restore_on_different_device_count(tmp_path):
    root = str(tmp_path / "ck")
    with CheckpointManager(root) as m:  # saved from this (single-device) process
        m.save(3, {"w": jnp.arange(48, dtype=jnp.float32).reshape(8, 6), "b": jnp.ones(6, jnp.float32)})
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run([sys.executable, "-c", _SHARDED_RESTORE.format(repo=REPO, root=root)],
                          capture_output=True, timeout=120, env=env)
    assert proc.returncode == 0 and b"OK" in proc.stdout, proc.stderr.decode()[-3000:]
    # and back: a checkpoint written sharded over 2 devices, restored here on 1
    want = np.arange(48, dtype=np.float32).reshape(8, 6) * 2
    with CheckpointManager(root) as m:
        assert m.latest_step() == 4
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = {"w": jax.ShapeDtypeStruct((8, 6), jnp.float32, sharding=dev),
                  "b": jax.ShapeDtypeStruct((6,), jnp.float32, sharding=dev)}
        r = m.restore(target=target)
        assert r["train"]["w"].sharding == dev
        np.testing.assert_array_equal(np.asarray(r["train"]["w"]), want)
        np.testing.assert_array_equal(np.asarray(m.restore()["train"]["w"]), want)  # no target: host arrays


def _largest_file(folder):
    files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
    return max(files, key=os.path.getsize)


def _truncate_data(step_dir):
    path = _largest_file(os.path.join(step_dir, "state"))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _delete_metadata(step_dir):
    os.remove(os.path.join(step_dir, "state", "_METADATA"))


def _delete_state(step_dir):
    import shutil

    shutil.rmtree(os.path.join(step_dir, "state"))


def _garble_meta_json(step_dir):
    with open(os.path.join(step_dir, "meta", "metadata"), "w") as f:
        f.write('{"step": 3, "metr')


@pytest.mark.parametrize("damage", [_truncate_data, _delete_metadata, _delete_state, _garble_meta_json])
def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage):
    root = str(tmp_path / "ck")
    states = {s: _state(s, n=64)[0] for s in (1, 2, 3)}
    with CheckpointManager(root) as m:
        for s, st in states.items():
            m.save(s, st, metrics={"AP": 0.1 * s})
    damage(os.path.join(root, "3"))
    with CheckpointManager(root) as m, caplog.at_level("WARNING", logger="deim_jax.train.checkpoints"):
        r = m.restore(target=states[2])
        assert r["step"] == 2
        _assert_identical(r["train"], states[2])
        assert any("checkpoint step 3" in rec.getMessage() and "unreadable" in rec.getMessage()
                   for rec in caplog.records)
        assert m.latest_step() == 2
        assert m.best_step() == 2  # the unreadable step 3 had the best AP; it no longer counts
        m.save(3, states[3])  # the run goes on and saves step 3 again; the bad one was moved aside
        _assert_identical(m.restore(target=states[3])["train"], states[3])
    assert os.path.isdir(os.path.join(root, "3.unreadable"))
    with CheckpointManager(root) as m:
        assert m.all_steps() == [1, 2, 3]


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    root = str(tmp_path / "ck")
    state = _state(0)[0]
    with CheckpointManager(root) as m:
        m.save(1, state)
        m.save(2, state)
    _truncate_data(os.path.join(root, "1"))
    _delete_metadata(os.path.join(root, "2"))
    with CheckpointManager(root) as m:
        with pytest.raises(CheckpointError, match=r"no readable checkpoint in .*step 1: .*step 2: "):
            m.restore(target=state)


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   PermissionError(errno.EACCES, "Permission denied")])
def test_failed_save_keeps_the_previous_checkpoint_and_says_what_failed(tmp_path, monkeypatch, error):
    import orbax.checkpoint as ocp

    root = str(tmp_path / "ck")
    good, newer = _state(0)[0], _state(1)[0]
    with CheckpointManager(root) as m:
        m.save(1, good)

    def failing_write(self, *args, **kwargs):  # fails once some files of the new checkpoint exist
        raise error

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", failing_write)
    with CheckpointManager(root) as m:
        with pytest.raises(CheckpointError, match=rf"saving checkpoint step 2 into {root} failed: .*"
                                                  rf"{error.strerror}.*previous checkpoint \(step 1\) is intact"):
            m.save(2, newer)
    monkeypatch.undo()
    with CheckpointManager(root) as m:
        assert m.all_steps() == [1]
        _assert_identical(m.restore(target=good)["train"], good)
        m.save(2, newer)  # once the disk is fine again, saving works (the partial save is cleaned up)
        _assert_identical(m.restore(target=newer)["train"], newer)
    assert not [p for p in os.listdir(root) if "tmp" in p]
