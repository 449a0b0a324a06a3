"""RandomPhotometricDistort as TensorFlow ops on one image (deim_dfine.md §8.2).

``image`` [H, W, 3] uint8 (or float32 holding 0..255); the output has the input's dtype.
Brightness / contrast / saturation reproduce PIL ImageEnhance (blend, clip, truncate to
uint8): max |diff| 1 level on < 8% of pixels. Hue uses continuous HSV (``tf.image.adjust_hue``)
where PIL round-trips through 8-bit HSV: mean ~1.2, max ~9 levels.
"""

from __future__ import annotations

import tensorflow as tf

from deim_jax.data.transforms import quantize_trunc, split_seed, uniform

_f32 = tf.float32


def _gray(img):
    # PIL "L" conversion: L = R*299/1000 + G*587/1000 + B*114/1000
    return tf.linalg.matvec(img, tf.constant([0.299, 0.587, 0.114], _f32))[..., None]


def adjust_brightness(img, f):
    """PIL ImageEnhance.Brightness: blend with black."""
    return quantize_trunc(img * f)


def adjust_contrast(img, f):
    """PIL ImageEnhance.Contrast: blend with the rounded mean of the (8-bit, rounded) grey image."""
    mean = tf.round(tf.reduce_mean(tf.round(_gray(img))))
    return quantize_trunc(f * img + (1.0 - f) * mean)


def adjust_saturation(img, f):
    """PIL ImageEnhance.Color: blend with the grey image."""
    return quantize_trunc(f * img + (1.0 - f) * tf.round(_gray(img)))


def adjust_hue(img, delta):
    """Hue shift by delta (fraction of a turn), rounded; continuous HSV (PIL quantizes H, S, V to
    8 bits). The HSV round trip is scale-free and keeps every pixel within its channels' min and
    max, so it runs on 0..255 directly and needs no clip."""
    return tf.round(tf.image.adjust_hue(img, delta))


def photometric_distort(img, seed, p: float = 0.5, brightness=(0.875, 1.125),
                        contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=(-0.05, 0.05)):
    """RandomPhotometricDistort: each jitter with prob p, contrast before/after saturation+hue
    with prob 0.5, random channel permutation with prob p."""
    s = split_seed(seed, 11)
    on = [uniform(s[i]) < p for i in range(4)]
    fb = uniform(s[4], (), *brightness)
    fc = uniform(s[5], (), *contrast)
    fs = uniform(s[6], (), *saturation)
    fh = uniform(s[7], (), *hue)
    contrast_before = uniform(s[8]) < 0.5
    permute = uniform(s[9]) < p
    perm = tf.argsort(uniform(s[10], (3,)))

    dtype, img = img.dtype, tf.cast(img, _f32)
    img = tf.cond(on[0], lambda: adjust_brightness(img, fb), lambda: img)
    img = tf.cond(on[1] & contrast_before, lambda: adjust_contrast(img, fc), lambda: img)
    img = tf.cond(on[2], lambda: adjust_saturation(img, fs), lambda: img)
    img = tf.cond(on[3], lambda: adjust_hue(img, fh), lambda: img)
    img = tf.cond(on[1] & ~contrast_before, lambda: adjust_contrast(img, fc), lambda: img)
    img = tf.cast(img, dtype)
    return tf.cond(permute, lambda: tf.gather(img, perm, axis=-1), lambda: img)
