"""Dense O2O training and evaluation input pipelines in ``tf.data`` (deim_dfine.md §8).

Entry points::

    it = build_train_iterator(config.data, seed=0, start_step=0, state=None,
                              process_index=0, process_count=1)
    batch = next(it)          # dict of numpy arrays, the local (per-process) batch
    state = it.get_state()    # small dict of ints: save it with the checkpoint
    it = build_train_iterator(config.data, seed=0, state=state, ...)   # exact resume

    for batch in build_eval_iterator(config.data, process_index=0, process_count=1): ...

Every function takes the data block ``config.data`` (fields documented in ``configs/defaults.py``)
and reads its fields directly: a missing field is an error. The records come from
``sources.load_split`` unless given.

Batches are dicts of read-only numpy arrays (views of the pipeline's buffers).
Train batch: ``image`` [B,H,W,3] float32 in [0,1]; ``boxes`` [B,max_boxes,4] normalized
cxcywh; ``labels`` [B,max_boxes] int32; ``mask`` [B,max_boxes] bool; plus bookkeeping
``num_dropped_boxes`` [B] int32 (boxes beyond max_boxes, log it), ``mixup`` [B] bool,
``epoch`` [B], ``pos`` [B].
Eval batch: ``image``, ``boxes``/``labels``/``mask`` (eval size, unaugmented), ``image_id`` [B]
int64, ``orig_size`` [B,2] (w, h) int32, ``valid`` [B] bool (False on padding).

Determinism and resume. Epoch e uses the permutation ``default_rng([seed, e])`` of the
images; process p reads entries p, p+P, ... of it (its shard only), followed by a few spare
entries (the epoch always yields exactly ``steps_per_epoch`` batches even if some files fail
to decode). Every random draw is stateless, seeded from (seed, process, epoch, position in the shard)
for an example and (seed, process, epoch, position of the batch's first example) for batch ops
(mixup, multi-scale), so parallel decoding order does not matter and a run restarted from
``get_state()`` (epoch, next position, step in epoch) sees exactly the batches it would have
seen. ``start_step`` alone is exact as long as no file failed to decode before it.

Multi-host: the global batch is ``config.data.batch_size``; every process yields its
``batch_size // process_count`` slice; ``global_batch(local, sharding)`` assembles the global
``jax.Array`` with ``jax.make_array_from_process_local_data``.

Multi-scale (``base_size_repeat`` not None, epoch < ``stop_epoch``): one size per batch from
the official list [480..608] + [640]*r + [800..672] (nearest resize, boxes unchanged).
``config.data.multiscale_buckets`` (optional) restricts the sizes to a smaller fixed set
(sizes are snapped to the nearest bucket, keeping the official probabilities). Every distinct
size is one compile of the train step: the official list costs 11 train-step compiles
(480..608, 640, 672..800; after stop_epoch only 640, already compiled); ``multiscale_buckets``
of k sizes costs k; a run without multi-scale (N, demo) costs 1.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import numpy as np
import tensorflow as tf

from deim_jax.data import coco as coco_lib
from deim_jax.data import batch_ops, epoch_policy
from deim_jax.data import photometric
from deim_jax.data import transforms as T
from deim_jax.data.sources import configure_tf, load_split
from deim_jax.errors import ConfigError, DataError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- records as tensors

class _Tables:
    """Records as TF constants, for gathers inside tf.data functions."""

    def __init__(self, rec: coco_lib.CocoRecords):
        self.paths = tf.constant([str(p) for p in rec.file_names], tf.string)
        self.wh = tf.constant(np.stack([rec.widths, rec.heights], 1), tf.int32)
        self.ids = tf.constant(rec.image_ids, tf.int64)
        self.offsets = tf.constant(rec.box_offsets, tf.int64)
        self.boxes = tf.constant(rec.boxes.reshape(-1, 4), tf.float32)
        self.labels = tf.constant(rec.labels, tf.int32)
        self.n = len(rec)

    def load(self, idx):
        """Decoded image uint8 [H,W,3], boxes xyxy [N,4] (decoded pixels), labels [N]."""
        img = T.decode_image(tf.io.read_file(self.paths[idx]), tf.uint8)
        a, b = self.offsets[idx], self.offsets[idx + 1]
        boxes = self.boxes[a:b]
        wh = tf.cast(self.wh[idx], tf.float32)
        h, w = T.image_hw(img)
        sx, sy = tf.cast(w, tf.float32) / wh[0], tf.cast(h, tf.float32) / wh[1]
        boxes = boxes * tf.stack([sx, sy, sx, sy])
        return img, boxes, self.labels[a:b]


def as_numpy(batch: dict) -> dict:
    """A batch of tensors as read-only numpy views of their buffers (``Tensor.numpy()`` would copy:
    ~15 ms for a float32 batch of 8 images at 640x640, 15-20% of a one-core pipeline's time)."""
    return {k: np.asarray(v) for k, v in batch.items()}


# ----------------------------------------------------------------------------- train

def policy_config(d) -> dict:
    """The augmentation-policy fields of the data block ``d`` as plain Python values."""
    return dict(
        windows=epoch_policy.windows(d),
        mosaic_prob=float(d.mosaic_prob),
        mixup_prob=float(d.mixup_prob),
        base_size_repeat=d.base_size_repeat,
        multiscale_buckets=d.multiscale_buckets,
        image_size=int(d.image_size),
        mosaic_size=int(d.mosaic_size),
        max_boxes=int(d.max_boxes),
    )


def train_example_fn(tables: _Tables, pc: dict, seed: int, process_index: int = 0):
    """(idx, pos, epoch) -> one augmented, padded example (dict of tensors)."""
    windows = pc["windows"]
    size = pc["image_size"]

    def fn(idx, pos, epoch):
        s = tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(
                tf.constant([seed, 2 * process_index], tf.int64), epoch), pos)
        s = T.split_seed(s, 8)
        in_policy = epoch_policy.within(windows["augment"], epoch)
        with_mosaic = epoch_policy.within(windows["mosaic"], epoch) & (T.uniform(s[0]) <= pc["mosaic_prob"])
        flip = T.uniform(s[6]) < 0.5   # RandomHorizontalFlip's draw; the image is mirrored early (hflip_boxes)
        img, boxes, labels = tables.load(idx)

        def do_mosaic():
            others = tf.random.stateless_uniform([3], s[1], 0, tables.n, tf.int32)
            items = [(img, boxes, labels)] + [tables.load(others[k]) for k in range(3)]
            return T.mosaic([x[0] for x in items], [x[1] for x in items], [x[2] for x in items],
                            s[2], size=pc["mosaic_size"], mirror=flip)

        img, boxes, labels = tf.cond(with_mosaic, do_mosaic, lambda: (T.mirror_if(img, flip), boxes, labels))
        img = tf.cast(img, tf.float32)   # uint8 through the gathers and pads, float from the first arithmetic
        img = tf.cond(in_policy, lambda: photometric.photometric_distort(img, s[3]), lambda: img)

        img, boxes, labels = tf.cond(in_policy & ~with_mosaic,
                                     lambda: T.zoom_out_iou_crop(img, boxes, labels, s[4], s[5], mirrored=flip),
                                     lambda: (img, boxes, labels))
        h, w = T.image_hw(img)
        boxes, labels = T.sanitize(boxes, labels, h, w)
        boxes = T.hflip_boxes(boxes, w, flip)
        img, boxes = T.resize(img, boxes, size, size)
        boxes, labels = T.sanitize(boxes, labels, size, size)
        b, l, m, dropped = T.to_padded_cxcywh(boxes, labels, size, size, pc["max_boxes"])
        img = tf.cast(img, tf.uint8)   # exact: whole values 0..255 (the resize rounds); /255 per batch
        img.set_shape([size, size, 3])
        return {"image": img, "boxes": b, "labels": l, "mask": m,
                "num_dropped_boxes": tf.cast(dropped, tf.int32),
                "epoch": tf.cast(epoch, tf.int32), "pos": tf.cast(pos, tf.int32)}

    return fn


def _scales(pc):
    scales = batch_ops.multiscale_scales(pc["image_size"], pc["base_size_repeat"])
    buckets = pc["multiscale_buckets"]
    if buckets:
        buckets = np.asarray(sorted(buckets))
        scales = [int(buckets[np.argmin(np.abs(buckets - s))]) for s in scales]
    return scales


def train_batch_fn(pc: dict, seed: int, process_index: int = 0):
    scales = tf.constant(_scales(pc), tf.int32)
    windows = pc["windows"]
    multiscale = pc["base_size_repeat"] is not None

    def fn(batch):
        """uint8 examples -> float32 batch in [0, 1]: official order MixUp, then multi-scale; the nearest
        resize is a gather, so it runs first, on uint8, with the same result."""
        epoch, first = batch["epoch"][0], batch["pos"][0]
        s = tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(
                tf.constant([seed, 2 * process_index + 1], tf.int64), epoch), first)
        s = T.split_seed(s, 2)
        img = batch["image"]
        if multiscale:
            k = tf.random.stateless_uniform([], s[1], 0, tf.shape(scales)[0], tf.int32)
            sz = tf.where(epoch_policy.within(windows["multiscale"], epoch), scales[k], pc["image_size"])
            img = tf.cond(sz == pc["image_size"], lambda: img, lambda: batch_ops.nearest_resize_batch(img, sz))
        batch = dict(batch, image=tf.cast(img, tf.float32) / 255.0)
        return batch_ops.mixup(batch, s[0], pc["mixup_prob"], epoch_policy.within(windows["mixup"], epoch))

    return fn


def epoch_shard(n: int, seed: int, epoch: int, process_index: int, process_count: int,
                local_batch: int, steps: int, spare: int):
    """Indices read by this process in this epoch (its shard of the epoch permutation + spares)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    shard = perm[process_index::process_count]
    need = steps * local_batch + spare
    reps = int(math.ceil(need / max(len(shard), 1)))
    return np.tile(shard, reps)[:need]


class TrainIterator:
    """Infinite iterator over local train batches (numpy); ``get_state()`` for resume.

    Counters for the logs: ``num_skipped_examples`` (unreadable files) and
    ``num_dropped_boxes`` (beyond max_boxes), cumulative since construction."""

    def __init__(self, d, records, seed, state, process_index, process_count):
        configure_tf()
        self.pc = policy_config(d)
        gb = int(d.batch_size)
        if gb % process_count:
            raise ConfigError(f"config.data.batch_size {gb} not divisible by process_count {process_count}")
        self.local_batch = gb // process_count
        self.steps_per_epoch = len(records) // gb
        if self.steps_per_epoch == 0:
            raise DataError(f"{records.annotations_file}: {len(records)} images < batch_size {gb}")
        self.records, self.seed = records, int(seed)
        self.pi, self.pcount = process_index, process_count
        self.spare = int(d.spare_examples if d.spare_examples is not None else max(self.local_batch, 8))
        self.workers = d.num_parallel_calls if d.num_parallel_calls is not None else tf.data.AUTOTUNE
        self.prefetch = int(d.prefetch)
        self.tables = _Tables(records)
        self.state = dict(state)
        # traced once per iterator, reused by the per-epoch datasets
        spec = tf.TensorSpec([], tf.int32)
        self._ex_fn = tf.function(train_example_fn(self.tables, self.pc, self.seed, self.pi),
                                  input_signature=[spec, spec, spec])
        self._b_fn = tf.function(train_batch_fn(self.pc, self.seed, self.pi))
        self._it = None
        self.num_skipped_examples = 0   # unreadable files skipped so far (this process)
        self.num_dropped_boxes = 0      # boxes beyond max_boxes dropped so far (this process)

    def _build(self):
        st = self.state
        self._built_at = dict(st)
        idx = epoch_shard(len(self.records), self.seed, st["epoch"], self.pi, self.pcount,
                          self.local_batch, self.steps_per_epoch, self.spare)
        pos = np.arange(len(idx))
        ds = tf.data.Dataset.from_tensor_slices(
            (idx[st["pos"]:].astype(np.int32), pos[st["pos"]:].astype(np.int32),
             np.full(len(idx) - st["pos"], st["epoch"], np.int32)))
        ds = ds.map(self._ex_fn, num_parallel_calls=self.workers, deterministic=True)
        ds = ds.ignore_errors(log_warning=True)
        ds = ds.batch(self.local_batch, drop_remainder=True)
        ds = ds.map(self._b_fn, num_parallel_calls=self.workers, deterministic=True)
        ds = ds.take(self.steps_per_epoch - st["step_in_epoch"])
        ds = ds.prefetch(self.prefetch)
        opts = tf.data.Options()
        opts.deterministic = True
        opts.experimental_optimization.map_parallelization = True
        self._it = iter(ds.with_options(opts))

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self._it is None:
                self._build()
            try:
                batch = next(self._it)
            except StopIteration:
                if self._built_at == self.state:
                    raise RuntimeError(
                        f"no training example could be loaded in epoch {self.state['epoch']} "
                        f"({self.records.annotations_file}); see the warnings above")
                if self.state["step_in_epoch"] < self.steps_per_epoch:
                    log.warning("epoch %d ended after %d of %d batches (too many unreadable files)",
                                self.state["epoch"], self.state["step_in_epoch"], self.steps_per_epoch)
                self.state = dict(epoch=self.state["epoch"] + 1, pos=0, step_in_epoch=0)
                self._it = None
                continue
            batch = as_numpy(batch)
            skipped = int(batch["pos"].max()) + 1 - self.state["pos"] - self.local_batch
            if skipped:
                self.num_skipped_examples += skipped
                log.warning("skipped %d unreadable example(s) in epoch %d (total %d)", skipped,
                            self.state["epoch"], self.num_skipped_examples)
            self.num_dropped_boxes += int(batch["num_dropped_boxes"].sum())
            self.state = dict(epoch=self.state["epoch"], pos=int(batch["pos"].max()) + 1,
                              step_in_epoch=self.state["step_in_epoch"] + 1)
            if self.state["step_in_epoch"] == self.steps_per_epoch:
                self.state = dict(epoch=self.state["epoch"] + 1, pos=0, step_in_epoch=0)
                self._it = None
            return batch

    def restore(self, state: dict):
        """Continue from a ``get_state()`` dict (reuses the traced functions)."""
        self.state = {k: int(v) for k, v in dict(state).items()}
        self._it = None

    def state_for_step(self, step: int) -> dict:
        """The state of global step ``step`` (exact if no file failed to decode before it)."""
        e, k = divmod(int(step), self.steps_per_epoch)
        return dict(epoch=e, pos=k * self.local_batch, step_in_epoch=k)

    def get_state(self) -> dict:
        """Position of the next batch: {'epoch', 'pos', 'step_in_epoch'} (ints)."""
        return dict(self.state)


def build_train_iterator(d, seed: int = 0, start_step: int = 0, state: Optional[dict] = None,
                         process_index: int = 0, process_count: int = 1, records=None) -> TrainIterator:
    """Train iterator of the data block ``d``, starting at ``state`` (exact) or at global step ``start_step``."""
    records = records if records is not None else load_split(d, "train")
    it = TrainIterator(d, records, seed, dict(epoch=0, pos=0, step_in_epoch=0),
                       process_index, process_count)
    it.restore(state if state is not None else it.state_for_step(start_step))
    return it


def steps_per_epoch(d, records=None) -> int:
    """Full global batches per epoch of the data block ``d``."""
    records = records if records is not None else load_split(d, "train")
    return len(records) // int(d.batch_size)


# ----------------------------------------------------------------------------- eval

def build_eval_dataset(d, process_index: int = 0, process_count: int = 1, records=None):
    """tf.data.Dataset of local eval batches; every image appears exactly once over all
    processes (``valid`` False on padding and on unreadable files)."""
    configure_tf()
    records = records if records is not None else load_split(d, "val")
    size, max_boxes, gb = int(d.eval_size), int(d.max_boxes), int(d.eval_batch_size)
    if gb % process_count:
        raise ConfigError(f"config.data.eval_batch_size {gb} not divisible by process_count {process_count}")
    lb = gb // process_count
    n = len(records)
    nb = int(math.ceil(n / gb))
    idx = np.full(nb * gb, -1, np.int64)
    idx[:n] = np.arange(n)
    idx = idx.reshape(nb, process_count, lb)[:, process_index].reshape(-1)
    tables = _Tables(records)

    def load_one(i):
        def real():
            img, boxes, labels = tables.load(tf.maximum(i, 0))
            return img, boxes, labels, tf.constant(True)
        return real()

    def fallback(i):
        return (tf.zeros([size, size, 3], tf.uint8), tf.zeros([0, 4], tf.float32),
                tf.zeros([0], tf.int32), tf.constant(False))

    def safe_load(i):
        good = tf.data.Dataset.from_tensors(i).filter(lambda j: j >= 0).map(load_one).ignore_errors(
            log_warning=True)
        return good.concatenate(tf.data.Dataset.from_tensors(i).map(fallback)).take(1).map(
            lambda im, b, l, ok: (i, im, b, l, ok))

    def finish(i, img, boxes, labels, ok):
        img, boxes = T.resize(tf.cast(img, tf.float32), boxes, size, size)
        boxes, labels = T.sanitize(boxes, labels, size, size)
        b, l, m, dropped = T.to_padded_cxcywh(boxes, labels, size, size, max_boxes)
        j = tf.maximum(i, 0)
        img = img / 255.0
        img.set_shape([size, size, 3])
        return {"image": img, "boxes": b, "labels": l, "mask": m,
                "num_dropped_boxes": tf.cast(dropped, tf.int32),
                "image_id": tf.where(i >= 0, tables.ids[j], -1),
                "orig_size": tables.wh[j], "valid": ok & (i >= 0)}

    ds = tf.data.Dataset.from_tensor_slices(idx)
    ds = ds.interleave(safe_load, cycle_length=4, block_length=1,
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(lb, drop_remainder=True).prefetch(2)
    return ds


def build_eval_iterator(d, process_index: int = 0, process_count: int = 1, records=None):
    """Iterator of local eval batches of the data block ``d`` as numpy dicts (one pass)."""
    for batch in build_eval_dataset(d, process_index, process_count, records):
        yield as_numpy(batch)


# ----------------------------------------------------------------------------- multi-host

def global_batch(local: dict, sharding):
    """Assemble per-process local batches into global ``jax.Array`` s sharded on axis 0."""
    import jax
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
