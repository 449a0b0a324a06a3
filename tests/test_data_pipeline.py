"""Train/eval pipelines on a tiny generated demo set: determinism, exact resume, epoch policy,
multi-process sharding, bad files, eval padding."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from deim_jax import configs, data
from deim_jax.data import demo, pipeline
from deim_jax.errors import DataError


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = str(tmp_path_factory.mktemp("demo"))
    demo.generate(r, num_train=24, num_val=10, seed=1)
    return r


def make_config(root, **kw):
    """The data block is the demo set at ``root`` (batch 4, 64 px); ``kw`` set data fields."""
    defaults = configs.module("defaults")
    c = defaults.run("test", "deim", epochs=3, batch_size=4, num_classes=4, eval_size=64)
    c.data = defaults.demo_data(c, root, epochs=(1, 2, 3))
    c.remap_mscoco_category = False
    c.data.base_size_repeat = 2
    c.data.num_parallel_calls = 2
    for k, v in kw.items():
        c.data[k] = v
    return c.data


def take(it, n):
    return [next(it) for _ in range(n)]


def same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


def test_determinism_and_exact_resume(root):
    c = make_config(root)
    # 24 images / batch 4 = 6 steps per epoch; 9 batches cross epochs 1 -> 2 (mosaic, mixup, multi-scale on)
    start = dict(epoch=1, pos=0, step_in_epoch=0)
    a = data.build_train_iterator(c, seed=0, state=start)
    ref = take(a, 9)
    assert ref[0]["image"].dtype == np.float32 and ref[0]["boxes"].shape == (4, 32, 4)
    assert {b["image"].shape[1] for b in ref} <= {48, 56, 64, 72, 80}
    assert [int(b["epoch"][0]) for b in ref] == [1] * 6 + [2] * 3
    b = data.build_train_iterator(c, seed=0, state=start)
    resumed_first = take(b, 3)
    assert all(same(x, y) for x, y in zip(ref[:3], resumed_first))
    state = b.get_state()
    assert state == dict(epoch=1, pos=12, step_in_epoch=3)
    a.restore(state)
    assert all(same(x, y) for x, y in zip(ref[3:], take(a, 6)))
    # start_step is the same position when nothing failed to decode
    a.restore(a.state_for_step(6 + 4))
    assert same(ref[4], next(a))
    other = next(data.build_train_iterator(c, seed=1, state=start))
    assert not np.array_equal(other["image"], ref[0]["image"])
    for bt in ref:
        m = bt["mask"]
        assert np.all(bt["boxes"][~m] == 0)
        bx = bt["boxes"][m]
        assert np.all(bx[:, 2:] > 0) and np.all(bx[:, :2] >= 0) and np.all(bx[:, :2] <= 1)
        assert np.all(bt["labels"][m] < 4) and 0 <= bt["image"].min() and bt["image"].max() <= 1


def test_no_aug_epoch_keeps_geometry(root):
    """Epoch < e0: only flip + resize, so boxes are the annotations scaled to 64x64 (maybe mirrored)."""
    c = make_config(root, max_boxes=32)
    rec = data.load_split(c, "train")
    it = data.build_train_iterator(c, seed=0, state=dict(epoch=0, pos=0, step_in_epoch=0), records=rec)
    b = next(it)
    idx = pipeline.epoch_shard(len(rec), 0, 0, 0, 1, 4, 6, 8)[:4]
    for i in range(4):
        gt, gl = rec.boxes_of(idx[i])
        s = np.array([rec.widths[idx[i]], rec.heights[idx[i]]] * 2, np.float32)
        g = gt / s
        cxcywh = np.stack([(g[:, 0] + g[:, 2]) / 2, (g[:, 1] + g[:, 3]) / 2, g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]], 1)
        got = b["boxes"][i][b["mask"][i]]
        ok = g[:, 2:] * 64 - g[:, :2] * 64 >= 1
        exp = cxcywh[ok.all(1)]
        flipped = exp.copy()
        flipped[:, 0] = 1 - flipped[:, 0]
        assert np.allclose(got, exp, atol=1e-5) or np.allclose(got, flipped, atol=1e-5)
        np.testing.assert_array_equal(b["labels"][i][b["mask"][i]], gl[ok.all(1)])
    # final no-aug stage (epoch >= e2 = stop_epoch): fixed size, no mosaic, no mixup
    it.restore(dict(epoch=3, pos=0, step_in_epoch=0))
    for _ in range(3):
        b = next(it)
        assert b["image"].shape == (4, 64, 64, 3) and not b["mixup"].any()


def test_max_boxes_overflow_counted(root):
    c = make_config(root, max_boxes=2)
    it = data.build_train_iterator(c, seed=0)
    b = next(it)
    assert b["mask"].sum(1).max() <= 2 and b["num_dropped_boxes"].sum() > 0
    assert it.num_dropped_boxes == b["num_dropped_boxes"].sum()
    rec = it.records
    # dropped deterministically: the kept boxes are the first ones (epoch 0: no mosaic/crop)
    idx = pipeline.epoch_shard(len(rec), 0, 0, 0, 1, 4, 6, 8)[:4]
    for i in range(4):
        n = len(rec.boxes_of(idx[i])[0])
        assert b["mask"][i].sum() + b["num_dropped_boxes"][i] <= n


def test_multiscale_buckets():
    pc = dict(image_size=640, base_size_repeat=4, multiscale_buckets=None)
    assert pipeline._scales(pc) == [480, 512, 544, 576, 608] + [640] * 4 + [800, 768, 736, 704, 672]
    pc["multiscale_buckets"] = (512, 640, 768)
    s = pipeline._scales(pc)
    assert sorted(set(s)) == [512, 640, 768] and len(s) == 14 and s.count(640) == 7  # 608, 640 x4, 672, 704 (tie -> smaller)


def test_multi_process_shards():
    n, gb, steps = 50, 8, 50 // 8
    shards = [pipeline.epoch_shard(n, 3, 5, p, 2, gb // 2, steps, 4)[: steps * gb // 2] for p in range(2)]
    assert len(set(shards[0]) & set(shards[1])) == 0
    assert len(set(shards[0]) | set(shards[1])) == steps * gb
    np.testing.assert_array_equal(shards[0], pipeline.epoch_shard(n, 3, 5, 0, 2, 4, steps, 4)[: steps * 4])


def test_multi_process_local_batches(root):
    c = make_config(root)
    its = [data.build_train_iterator(c, seed=0, process_index=p, process_count=2) for p in range(2)]
    b0, b1 = next(its[0]), next(its[1])
    assert b0["image"].shape[0] == 2 and b1["image"].shape[0] == 2
    assert its[0].steps_per_epoch == its[1].steps_per_epoch == 6
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    g = data.global_batch({"labels": b0["labels"]}, NamedSharding(mesh, P("data")))
    np.testing.assert_array_equal(np.asarray(g["labels"]), b0["labels"])


def test_bad_files_do_not_stop_training(root, tmp_path):
    r2 = str(tmp_path / "bad")
    shutil.copytree(root, r2)
    files = sorted(os.listdir(os.path.join(r2, "train")))
    with open(os.path.join(r2, "train", files[0]), "wb") as f:
        f.write(b"garbage, not a jpeg")
    path = os.path.join(r2, "train", files[1])
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[: len(blob) // 3])             # truncated JPEG
    os.remove(os.path.join(r2, "train", files[2]))               # missing file
    c = make_config(r2)
    it = data.build_train_iterator(c, seed=0)
    assert it.steps_per_epoch == 23 // 4 and it.records.stats["missing_files"] == 1
    batches = take(it, it.steps_per_epoch + 1)
    assert [int(b["epoch"][0]) for b in batches] == [0] * it.steps_per_epoch + [1]
    # 20 of 22 readable; each epoch reads 20 + 8 spare shard entries: 2 bad ones are skipped per
    # pass over them, counted
    assert it.num_skipped_examples >= 2


def test_eval_every_image_once_with_padding(root, tmp_path):
    c = make_config(root)
    rec = data.load_split(c, "val")
    seen = []
    for p in range(2):
        for b in data.build_eval_iterator(c, process_index=p, process_count=2, records=rec):
            assert b["image"].shape == (2, 64, 64, 3)
            seen += b["image_id"][b["valid"]].tolist()
            assert np.all(b["image_id"][~b["valid"]] == -1)
            assert np.all(b["orig_size"][b["valid"]] > 0)
    assert sorted(seen) == sorted(rec.image_ids.tolist())
    # a corrupt val image is kept in place with valid=False
    r2 = str(tmp_path / "badval")
    shutil.copytree(root, r2)
    first = sorted(os.listdir(os.path.join(r2, "val")))[0]
    open(os.path.join(r2, "val", first), "wb").write(b"\x89PNG broken")
    c2 = make_config(r2)
    out = list(data.build_eval_iterator(c2))
    valid = np.concatenate([b["valid"] for b in out])
    assert valid.tolist() == [False] + [True] * 9 + [False] * 2
    with pytest.raises(FileNotFoundError):
        os.remove(os.path.join(r2, "val", sorted(os.listdir(os.path.join(r2, "val")))[1]))
        data.load_split(c2, "val")


def test_all_files_unreadable_raises(root, tmp_path):
    r2 = str(tmp_path / "allbad")
    shutil.copytree(root, r2)
    for f in os.listdir(os.path.join(r2, "train")):
        open(os.path.join(r2, "train", f), "wb").write(b"junk")
    it = data.build_train_iterator(make_config(r2), seed=0)
    with pytest.raises(RuntimeError, match="no training example could be loaded"):
        next(it)


def test_strict_files_lists_missing_and_unreadable_files_at_load(root, tmp_path):
    r2 = str(tmp_path / "strict")
    shutil.copytree(root, r2)
    train = os.path.join(r2, "train")
    files = sorted(os.listdir(train))
    open(os.path.join(train, files[0]), "wb").write(b"garbage, not a jpeg")
    blob = open(os.path.join(train, files[1]), "rb").read()
    open(os.path.join(train, files[1]), "wb").write(blob[:-10])  # truncated JPEG
    os.remove(os.path.join(train, files[2]))
    strict = make_config(r2, strict_files=True)
    with pytest.raises(DataError) as e:
        data.load_split(strict, "train")
    msg = str(e.value)
    assert msg.startswith(f"{strict.train.annotations}: 3 of 24 train image files under {train} are missing or "
                          "unreadable (config.data.strict_files=True): "), msg
    assert msg.endswith(f"{files[0]} (unreadable), {files[1]} (unreadable), {files[2]} (missing)"), msg
    assert len(data.load_split(strict, "val")) == 10  # the val files are fine
    # default: the missing file is dropped, the unreadable ones are left to the pipeline
    assert len(data.load_split(make_config(r2), "train")) == 23
    for f in files[3:]:
        open(os.path.join(train, f), "wb").write(b"junk")
    with pytest.raises(DataError, match=r"24 of 24 train image files .*, \.\.\. \(4 more\)$") as e:
        data.load_split(strict, "train")
    assert str(e.value).count("(unreadable)") + str(e.value).count("(missing)") == 20
    val = os.path.join(r2, "val")
    open(os.path.join(val, sorted(os.listdir(val))[0]), "wb").write(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"1 of 10 val image files"):
        data.load_split(strict, "val")


def test_trainer_order_sets_tensorflow_up_for_the_pipeline(root):
    """In a fresh process, as the trainer calls them (records, then the iterator), TensorFlow ends up
    with one thread per op and no GPUs, whatever the machine."""
    code = f"""
import sys; sys.path.insert(0, {os.getcwd()!r})
from tests.test_data_pipeline import make_config
from deim_jax import data
d = make_config({root!r})
it = data.build_train_iterator(d, records=data.load_split(d, "train"))
next(it)
import tensorflow as tf
print("intra", tf.config.threading.get_intra_op_parallelism_threads(), "gpus", len(tf.config.get_visible_devices("GPU")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[-4:] == ["intra", "1", "gpus", "0"], out
