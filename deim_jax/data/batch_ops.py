"""Batch ops of the Dense O2O pipeline as TensorFlow ops (deim_dfine.md §8.5): MixUp of a whole batch
``image`` [B, H, W, 3] float32 and its multi-scale (nearest) resize."""

from __future__ import annotations

import tensorflow as tf

from deim_jax.data.transforms import split_seed, uniform


def mixup(batch, seed, prob: float = 0.5, active=True):
    """Batch MixUp: with prob, image i <- beta img[i] + (1-beta) img[i-1] (cyclic), beta =
    round(U(0.45, 0.55), 6); example i keeps its boxes followed by those of i-1, truncated to
    max_boxes (overflow added to ``num_dropped_boxes``)."""
    s = split_seed(seed, 2)
    do = tf.logical_and(tf.convert_to_tensor(active), uniform(s[0]) < prob)

    def apply():
        beta = tf.round(uniform(s[1], (), 0.45, 0.55) * 1e6) / 1e6
        out = dict(batch)
        img = batch["image"]
        out["image"] = beta * img + (1.0 - beta) * tf.roll(img, 1, axis=0)
        mb = batch["mask"].shape[1]
        boxes = tf.concat([batch["boxes"], tf.roll(batch["boxes"], 1, 0)], 1)
        labels = tf.concat([batch["labels"], tf.roll(batch["labels"], 1, 0)], 1)
        mask = tf.concat([batch["mask"], tf.roll(batch["mask"], 1, 0)], 1)
        order = tf.argsort(tf.cast(~mask, tf.int32), axis=1, stable=True)
        boxes = tf.gather(boxes, order, batch_dims=1)
        labels = tf.gather(labels, order, batch_dims=1)
        mask = tf.gather(mask, order, batch_dims=1)
        out["boxes"], out["labels"], out["mask"] = boxes[:, :mb], labels[:, :mb], mask[:, :mb]
        out["num_dropped_boxes"] = batch["num_dropped_boxes"] + tf.reduce_sum(
            tf.cast(mask[:, mb:], tf.int32), axis=1)
        out["boxes"] = tf.where(out["mask"][..., None], out["boxes"], 0.0)
        out["labels"] = tf.where(out["mask"], out["labels"], 0)
        out["mixup"] = tf.fill(tf.shape(mask)[:1], True)
        return out

    def skip():
        out = dict(batch)
        out["mixup"] = tf.fill(tf.shape(batch["mask"])[:1], False)
        return out

    return tf.cond(do, apply, skip)


def multiscale_scales(base_size: int = 640, base_size_repeat=None):
    """Official ``scales`` list (duplicates kept: they set the probabilities). Bases below 320
    (demo runs) use the same relative range rounded to multiples of 8."""
    if base_size_repeat is None:
        return [base_size]
    if base_size >= 320:     # official formula (exact for 640: 480..608, 800..672)
        lo = [int(base_size * 0.75 / 32) * 32 + i * 32 for i in range(5)]
        hi = [int(base_size * 1.25 / 32) * 32 - i * 32 for i in range(5)]
    else:                    # small demo sizes: same relative range, multiples of 8
        lo = [int(round(base_size * (0.75 + 0.05 * i) / 8)) * 8 for i in range(5)]
        hi = [int(round(base_size * (1.25 - 0.05 * i) / 8)) * 8 for i in range(5)]
    return lo + [base_size] * int(base_size_repeat) + hi


def nearest_resize_batch(images, size):
    """PyTorch legacy 'nearest' F.interpolate on a batch [B,H,W,C] of any dtype -> [B,size,size,C]:
    source index min(floor(dst * s), n - 1) with s = in / out and the product in float32, as torch
    computes them; as two gathers (rows, then columns: 20% faster than TensorFlow's kernel)."""
    def source(n):
        s = tf.cast(n, tf.float32) / tf.cast(size, tf.float32)
        return tf.minimum(tf.cast(tf.floor(tf.cast(tf.range(size), tf.float32) * s), tf.int32), n - 1)

    shape = tf.shape(images)
    return tf.gather(tf.gather(images, source(shape[1]), axis=1), source(shape[2]), axis=2)
