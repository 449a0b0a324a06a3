"""Batched detection over images and videos, written out: boxes drawn, an annotated video, COCO
results (``deim_jax.predict`` is its command line, whose docstring says what is written).

``predict(cfg, sources, out, loaded, ...)`` -> counts ``{'images', 'frames', 'detections',
'skipped'}``; ``Predictor`` runs a batch of RGB images at a fixed input size.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Dict, Iterator, List, Optional, Tuple

import jax
import numpy as np
from tqdm import tqdm

from deim_jax.data.classes import display_names
from deim_jax.data.image_files import image_ids
from deim_jax.deploy import media
from deim_jax.deploy.detector import make_detect
from deim_jax.deploy.draw import draw_detections
from deim_jax.errors import UserError
from deim_jax.ops.coco_categories import MSCOCO_CATEGORY_IDS

log = logging.getLogger("deim_jax.predict")


class Predictor:
    """Batched detection at a fixed input size: ``__call__(rgbs)`` -> per image (labels, boxes,
    scores) at or above ``threshold``, boxes xyxy pixels of each original image."""

    def __init__(self, cfg, variables, size: Tuple[int, int], batch: int, threshold: float):
        self.size, self.batch, self.threshold = size, batch, threshold
        self._variables = jax.device_put(variables)
        self._detect = jax.jit(make_detect(cfg, remap_mscoco_category=False, size=size))

    def __call__(self, rgbs: List[np.ndarray]):
        n = len(rgbs)
        images = np.zeros((self.batch, *self.size, 3), np.float32)  # padded to one shape: one compile
        sizes = np.ones((self.batch, 2), np.float32)
        for i, rgb in enumerate(rgbs):
            images[i] = media.to_model_input(rgb, self.size)
            sizes[i] = (rgb.shape[1], rgb.shape[0])
        out = {k: np.asarray(v)[:n] for k, v in self._detect(self._variables, images, sizes).items()}
        keep = out["scores"] >= self.threshold
        return [(out["labels"][i][keep[i]], out["boxes"][i][keep[i]], out["scores"][i][keep[i]]) for i in range(n)]


def _batches(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _coco_rows(file_name: str, image_id: int, detections, label_to_category: Dict[int, int],
               frame: Optional[int] = None) -> List[dict]:
    labels, boxes, scores = detections
    rows = []
    for label, (x0, y0, x1, y1), score in zip(labels.tolist(), boxes.tolist(), scores.tolist()):
        row = {"image_id": image_id, "category_id": int(label_to_category.get(label, label)),
               "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
               "score": round(score, 5), "file_name": file_name}
        if frame is not None:
            row["frame"] = frame
        rows.append(row)
    return rows


def _out_path(out: str, root: Optional[str], path: str, ext: str, taken: set) -> str:
    """Where the drawn ``path`` goes: its path under ``root`` with ``ext``; ``name_png.jpg`` when
    another input of this run (``name.jpg``) already took ``name.jpg``."""
    rel = os.path.relpath(path, root) if root else os.path.basename(path)
    stem, own_ext = os.path.splitext(rel)
    target = os.path.join(out, stem + ext)
    if target in taken:
        target = os.path.join(out, f"{stem}_{own_ext.lstrip('.')}{ext}")
    taken.add(target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    return target


def predict(cfg, sources, out: str, loaded, threshold: float = 0.4, batch: int = 8,
            size: Optional[Tuple[int, int]] = None, root: Optional[str] = None) -> Dict[str, int]:
    """Run the detector on ``sources`` (``deim_jax.deploy.media.Source``) and write ``out`` (module
    docstring); returns counts: ``images``, ``frames``, ``detections``, ``skipped``."""
    size = tuple(size or cfg.eval_spatial_size)
    names = display_names(loaded.classes, int(cfg.num_classes), bool(cfg.remap_mscoco_category))
    if loaded.classes is not None:
        to_category = dict(loaded.classes.label_to_category)
    elif cfg.remap_mscoco_category:
        to_category = dict(enumerate(MSCOCO_CATEGORY_IDS))
    else:
        to_category = {}
    predictor = Predictor(cfg, loaded.variables, size, batch, threshold)
    ids = image_ids([os.path.splitext(os.path.basename(s.path))[0] for s in sources])
    counts = {"images": 0, "frames": 0, "detections": 0, "skipped": 0}
    rows: List[dict] = []
    taken: set = set()
    t0 = time.perf_counter()

    def readable_images():
        for source, image_id in zip(sources, ids):
            if source.kind != "image":
                continue
            try:
                yield source, image_id, media.read_rgb(source.path)
            except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for a file that is no image
                counts["skipped"] += 1
                log.warning("skipped %s: not a readable image (%s)", source.path, e)

    n_images = sum(s.kind == "image" for s in sources)
    with tqdm(total=n_images, unit="img", disable=n_images == 0, dynamic_ncols=True) as bar:
        for chunk in _batches(readable_images(), batch):
            for (source, image_id, rgb), det in zip(chunk, predictor([c[2] for c in chunk])):
                draw_detections(rgb, det[1], det[0], det[2], names).save(
                    _out_path(out, root, source.path, ".jpg", taken), quality=92)
                rows += _coco_rows(source.path, image_id, det, to_category)
                counts["detections"] += len(det[0])
            counts["images"] += len(chunk)
            bar.update(len(chunk))
            bar.set_postfix_str(f"{counts['images'] / (time.perf_counter() - t0):.1f} img/s")
        bar.update(n_images - bar.n)  # the skipped ones

    for source, image_id in zip(sources, ids):
        if source.kind != "video":
            continue
        try:
            fps, frames = media.video_info(source.path)
        except UserError:  # no PyAV
            raise
        except Exception as e:  # PyAV's errors for a file it cannot demux  # noqa: BLE001
            counts["skipped"] += 1
            log.warning("skipped %s: not a readable video (%s)", source.path, e)
            continue
        writer = media.VideoWriter(_out_path(out, root, source.path, ".mp4", taken), fps)
        frame_index = 0
        try:
            with tqdm(total=frames or None, unit="frame", desc=os.path.basename(source.path),
                      dynamic_ncols=True) as bar:
                for chunk in _batches(media.video_frames(source.path), batch):
                    for rgb, det in zip(chunk, predictor(chunk)):
                        writer.write(np.asarray(draw_detections(rgb, det[1], det[0], det[2], names)))
                        rows += _coco_rows(source.path, image_id, det, to_category, frame=frame_index)
                        counts["detections"] += len(det[0])
                        frame_index += 1
                    bar.update(len(chunk))
        except Exception as e:  # a frame PyAV cannot decode: keep what was done  # noqa: BLE001
            counts["skipped"] += 1
            log.warning("%s: stopped at frame %d, the rest is not readable (%s)", source.path, frame_index, e)
        finally:
            writer.close()
        counts["frames"] += frame_index
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(rows, f)
    return counts
