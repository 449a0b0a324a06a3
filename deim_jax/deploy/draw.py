"""Detections drawn on an image: one colour per class, a label with the score above each box, line
width and text size scaled with the image so that both stay readable from thumbnails to 4K."""

from __future__ import annotations

import colorsys
from typing import Dict, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def class_colour(label: int):
    """A bright colour per label, neighbouring labels far apart on the hue circle (golden ratio)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(rgb: np.ndarray, boxes: Sequence, labels: Sequence, scores: Sequence,
                    names: Dict[int, str]) -> Image.Image:
    """``rgb`` [H, W, 3] uint8 with ``boxes`` [N, 4] (xyxy pixels of this image), ``labels`` [N],
    ``scores`` [N] drawn; ``names``: label -> class name (the label number where missing)."""
    im = Image.fromarray(rgb)
    side = min(im.size)
    width = max(1, round(side / 300))
    font = ImageFont.load_default(size=max(10, round(side / 40)))
    d = ImageDraw.Draw(im)
    for box, label, score in zip(np.asarray(boxes, float), np.asarray(labels), np.asarray(scores)):
        colour = class_colour(int(label))
        x0, y0, x1, y1 = box.tolist()
        d.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        text = f"{names.get(int(label), str(int(label)))} {float(score):.2f}"
        tx0, ty0, tx1, ty1 = d.textbbox((0, 0), text, font=font)
        tw, th = tx1 - tx0, ty1 - ty0 + 2 * width
        top = y0 - th if y0 - th >= 0 else y0  # inside the box at the top edge of the image
        left = min(max(x0, 0), max(im.size[0] - tw - 2 * width, 0))
        d.rectangle([left, top, left + tw + 2 * width, top + th], fill=colour)
        d.text((left + width - tx0, top + width - ty0), text, fill=(0, 0, 0), font=font)
    return im
