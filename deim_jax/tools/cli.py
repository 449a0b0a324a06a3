"""What ``deim_jax.main`` runs for the non-training modes (summary, predict)."""

from __future__ import annotations

import os
import time

import numpy as np

SAMPLE_IMAGE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "sample.png")


def param_table(variables, depth: int = 2):
    """[(module path, parameter count)] for the params tree down to ``depth`` levels, plus the total."""
    from deim_jax import models

    rows = []

    def walk(tree, prefix, level):
        for k, v in tree.items():
            path = prefix + (k,)
            if isinstance(v, dict) or hasattr(v, "items"):
                rows.append(("/".join(path), models.count_params(v), level))
                if level + 1 < depth:
                    walk(v, path, level + 1)

    walk(variables["params"], (), 0)
    return rows, models.count_params(variables["params"])


def summary(cfg):
    from deim_jax import models

    model = models.build(cfg)
    shapes = models.init_shapes(model, cfg)
    rows, total = param_table(shapes)
    print(f"config {cfg.name}: {cfg.model.family} detector, {cfg.num_classes} classes, eval size {tuple(cfg.eval_spatial_size)}")
    for path, n, level in rows:
        print(f"  {'  ' * level}{path:<40} {n:>12,}")
    print(f"  {'total parameters':<40} {total:>12,}")
    n_stats = models.count_params(shapes.get("batch_stats", {}))
    print(f"  {'batch statistics (not parameters)':<40} {n_stats:>12,}")
    return total


def load_image(path: str, size) -> np.ndarray:
    """RGB image -> [H, W, 3] float32 in [0, 1], resized like the official eval (PIL bilinear, antialiased)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        orig = im.size
        im = im.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(im, np.float32) / 255.0, orig


def predict(cfg, image_path=None, weights=None, score_threshold: float = 0.4, top: int = 20):
    import jax

    from deim_jax import convert, models
    from deim_jax.evaluate import postprocess as pp

    model = models.build(cfg)
    if weights:
        variables = convert.from_torch_state_dict(convert.load_pth(weights), cfg)
        print(f"loaded {weights}")
    else:
        variables = models.init(model, cfg, jax.random.PRNGKey(cfg.seed))
        print("no --weights given: random initialization (detections are meaningless)")
    path = image_path or SAMPLE_IMAGE
    image, orig = load_image(path, cfg.eval_spatial_size)
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
    out = fwd(variables, image[None])
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    out = jax.block_until_ready(fwd(variables, image[None]))
    dt = time.perf_counter() - t0
    res = pp.postprocess(out["pred_logits"], out["pred_boxes"], np.array([orig]), num_top_queries=cfg.num_top_queries,
                         remap_mscoco_category=cfg.remap_mscoco_category)
    scores, labels, boxes = (np.asarray(res[k])[0] for k in ("scores", "labels", "boxes"))
    print(f"{path}: {orig[0]}x{orig[1]}, forward {dt * 1000:.1f} ms (jit, batch 1)")
    shown = 0
    for s, l, b in zip(scores, labels, boxes):
        if s < score_threshold and shown >= 5:
            break
        print(f"  label {int(l):3d}  score {s:.3f}  box xyxy [{b[0]:.1f}, {b[1]:.1f}, {b[2]:.1f}, {b[3]:.1f}]")
        shown += 1
        if shown >= top:
            break
    return res
