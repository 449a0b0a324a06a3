"""Pictures of images with boxes (training samples, predictions) as PIL grids."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

COLORS = [(255, 0, 0), (0, 255, 0), (0, 128, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]


def draw_batch(batch, names=None, cols: int = 4, cell: int = 256):
    """Grid image (PIL) of a train batch; boxes in normalized cxcywh."""
    imgs = batch["image"]
    n = imgs.shape[0]
    rows = int(np.ceil(n / cols))
    grid = Image.new("RGB", (cols * cell, rows * cell), (32, 32, 32))
    for i in range(n):
        im = Image.fromarray(np.clip(imgs[i] * 255 + 0.5, 0, 255).astype(np.uint8)).resize((cell, cell), Image.NEAREST)
        d = ImageDraw.Draw(im)
        for b, l, m in zip(batch["boxes"][i], batch["labels"][i], batch["mask"][i]):
            if not m:
                continue
            cx, cy, w, h = (b * cell).tolist()
            c = COLORS[int(l) % len(COLORS)]
            d.rectangle([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], outline=c, width=2)
            d.text((cx - w / 2 + 2, cy - h / 2 + 1), names.get(int(l), str(int(l))) if names else str(int(l)), fill=c)
        grid.paste(im, ((i % cols) * cell, (i // cols) * cell))
    return grid


def predictions_grid(images, pred_logits, pred_boxes, names=None, threshold: float = 0.3, max_images: int = 4):
    """Grid of the first images with their predictions above ``threshold`` (boxes normalized cxcywh)."""
    logits = np.asarray(pred_logits[:max_images], np.float32)
    scores = 1.0 / (1.0 + np.exp(-logits.max(-1)))
    batch = {"image": np.asarray(images[:max_images]), "boxes": np.asarray(pred_boxes[:max_images]),
             "labels": logits.argmax(-1), "mask": scores > threshold}
    return draw_batch(batch, names)
