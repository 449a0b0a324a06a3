"""The convergence study's data set: the demo's four shape classes made hard to detect.

    python experiments/convergence/clutter.py --out data/clutter [--num_train 256] [--num_val 128] [--seed 0]

What makes it harder than the demo set (``deim_jax.data.demo``), image by image:

* photographic backgrounds: a random crop (30-100% of the short side) of one of scikit-image's
  bundled photos (``skimage.data``, offline), flipped at random, its brightness and contrast jittered;
* 3-12 objects (the demo's 1-6), sizes log-uniform from 8 px to half the short side (strong scale
  variation, many small objects);
* occlusion: objects may overlap, later ones cover earlier ones; a box is the tight extent of the
  pixels left visible, and an object with less than 40% of its pixels visible is not labelled
  (it is covered, not hidden: at most a sliver of it shows);
* noisier colour cues: each class keeps a base hue (jittered by +-40 per channel, the demo's +-35), and
  every object is shaded by the background's texture;
* clutter: 1-5 unlabelled distractors per image (rings, bars, ellipses in random colours), which
  occlude like objects do.

Image sizes 160-256 px per side. COCO layout as the demo set (``instances_{train,val}.json``,
category ids 1, 2, 3, 5). Same seed -> byte-identical files. Needs scikit-image (the
``experiments`` extra).
"""

from __future__ import annotations

import argparse
import os
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw

from deim_jax.data.demo import CATEGORIES, draw_shape, write_coco

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry",
          "stereo_motorcycle", "brick", "grass", "gravel", "camera", "moon", "coins", "clock")
_CLASS_COLORS = {1: (220, 50, 50), 2: (50, 200, 60), 3: (60, 90, 230), 5: (235, 210, 40)}
MIN_VISIBLE = 0.4  # fraction of an object's pixels that must stay visible for it to be labelled


def load_photos() -> List[np.ndarray]:
    """scikit-image's bundled photos as uint8 RGB arrays."""
    try:
        from skimage import data
    except ImportError as e:
        raise SystemExit("the clutter set needs scikit-image: pip install -e '.[experiments]'") from e
    out = []
    for name in PHOTOS:
        a = getattr(data, name)()
        a = np.asarray(a[0] if isinstance(a, tuple) else a)  # stereo_motorcycle: (left, right, disparity)
        a = a[..., :3] if a.ndim == 3 else np.repeat(a[..., None], 3, axis=-1)
        out.append(a.astype(np.uint8))
    return out


def _background(rng, photos, w: int, h: int) -> np.ndarray:
    """[h, w, 3] float32: a jittered random crop of a random photo."""
    photo = photos[int(rng.integers(len(photos)))]
    ph, pw = photo.shape[:2]
    side = int(min(ph, pw) * rng.uniform(0.3, 1.0))
    cw, ch = (side, max(1, side * h // w)) if w >= h else (max(1, side * w // h), side)
    cw, ch = min(cw, pw), min(ch, ph)
    x0, y0 = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
    crop = Image.fromarray(photo[y0:y0 + ch, x0:x0 + cw]).resize((w, h), Image.BILINEAR)
    img = np.asarray(crop, np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return (img - img.mean()) * rng.uniform(0.6, 1.3) + img.mean() + rng.uniform(-40, 40)


def _distractor(draw, rng, w: int, h: int, color) -> None:
    s = int(np.exp(rng.uniform(np.log(6), np.log(max(7, min(w, h) // 2)))))
    x0, y0 = int(rng.integers(-s // 4, w - s // 2)), int(rng.integers(-s // 4, h - s // 2))
    kind = rng.integers(3)
    if kind == 0:  # ring
        draw.ellipse([x0, y0, x0 + s, y0 + s], outline=color, width=max(1, s // 6))
    elif kind == 1:  # bar
        t = max(2, s // 5)
        draw.rectangle([x0, y0, x0 + s, y0 + t] if rng.random() < 0.5 else [x0, y0, x0 + t, y0 + s], fill=color)
    else:  # ellipse: not a circle
        draw.ellipse([x0, y0, x0 + s, y0 + int(s * rng.uniform(0.3, 0.6))], fill=color)


def make_image(rng, photos) -> Tuple[Image.Image, List[Tuple[int, List[int]]]]:
    """One image (PIL RGB) and its annotations [(category_id, [x, y, w, h])] (visible extents)."""
    w, h = int(rng.integers(160, 257)), int(rng.integers(160, 257))
    bg = _background(rng, photos, w, h)
    texture = bg.mean(-1, keepdims=True) / 255.0
    img = bg.copy()
    owner = np.full((h, w), -1, np.int32)  # which object a pixel shows (-1 background, -2 distractor)
    full_area = []
    cats = [c["id"] for c in CATEGORIES]
    kinds = ["object"] * int(rng.integers(3, 13)) + ["distractor"] * int(rng.integers(1, 6))
    for kind in rng.permutation(kinds):
        layer = Image.new("L", (w, h), 0)
        if kind == "object":
            cat = int(rng.choice(cats))
            s = int(np.exp(rng.uniform(np.log(8), np.log(min(w, h) // 2))))
            x0, y0 = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            draw_shape(ImageDraw.Draw(layer), cat, x0, y0, s, 255)
            color = np.clip(np.array(_CLASS_COLORS[cat]) + rng.integers(-40, 41, size=3), 0, 255)
        else:
            color = rng.integers(0, 256, size=3)
            _distractor(ImageDraw.Draw(layer), rng, w, h, 255)
        m = np.asarray(layer) > 0
        if not m.any():
            continue
        shade = 0.7 + 0.6 * texture[m]  # the background's texture shows through
        img[m] = color * shade
        if kind == "object":
            owner[m] = len(full_area)
            full_area.append((cat, int(m.sum())))
        else:
            owner[m] = -2
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), visible_boxes(owner, full_area)


def visible_boxes(owner: np.ndarray, objects) -> List[Tuple[int, List[int]]]:
    """[(category_id, [x, y, w, h])]: the tight extent of the pixels of ``owner`` ([H, W], object index per
    pixel) showing each object of ``objects`` ([(category_id, full area in pixels)]), for those with at
    least ``MIN_VISIBLE`` of their area visible."""
    anns = []
    for k, (cat, area) in enumerate(objects):
        ys, xs = np.nonzero(owner == k)
        if len(xs) < MIN_VISIBLE * area:
            continue
        bx, by = int(xs.min()), int(ys.min())
        anns.append((cat, [bx, by, int(xs.max()) + 1 - bx, int(ys.max()) + 1 - by]))
    return anns


def generate(out: str, num_train: int = 256, num_val: int = 128, seed: int = 0) -> dict:
    """Write the set under ``out`` (COCO layout); returns the annotation files."""
    photos = load_photos()
    paths = {}
    for split, num, first_id in (("train", num_train, 1), ("val", num_val, 100001)):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        samples = ((first_id + k, *make_image(rng, photos)) for k in range(num))
        paths[split] = write_coco(out, split, samples)
    return paths


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--num_train", type=int, default=256)
    p.add_argument("--num_val", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(generate(a.out, a.num_train, a.num_val, a.seed))


if __name__ == "__main__":
    main()
