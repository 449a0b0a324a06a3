"""COCO AP of any predict function over a validation split; the eval log rows of a run.

``evaluate(cfg, predict, mesh, records)``: ``predict(images) -> {'pred_logits', 'pred_boxes'}``
takes the global eval batch (a ``jax.Array`` sharded over the first axis of ``mesh``) and
returns global arrays; every image is counted once (padding is masked). Nothing here knows
about models, losses or train states: the train loop passes its EMA predict step, ``--mode=eval``
the restored weights', the tests an oracle.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Dict, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from deim_jax import data as data_lib
from deim_jax.data.classes import Classes
from deim_jax.evaluate import postprocess as pp
from deim_jax.evaluate.coco_eval import CocoEvaluator, format_per_class, format_stats, ground_truth
from deim_jax.evaluate.visualize import predictions_grid

log = logging.getLogger(__name__)

Predict = Callable[[jax.Array], Dict[str, jax.Array]]


def _label_to_category(classes: Classes, num_classes: int) -> np.ndarray:
    """[max(num_classes, labels)] int64 category id per label; -1 for labels without a category
    (a model with more classes than the data: COCOeval ignores such detections)."""
    table = np.full(max(num_classes, max(classes.label_to_category) + 1), -1, np.int64)
    for label, cat in classes.label_to_category.items():
        table[label] = cat
    return table


def _gather(x) -> np.ndarray:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def evaluate(cfg, predict: Predict, mesh, records, picture: Optional[list] = None,
             classes: Optional[Classes] = None) -> Dict[str, Any]:
    """COCO numbers (``coco_eval.STAT_NAMES`` plus ``per_class``) of ``predict`` on ``records``.

    ``picture``: if a list is given, a grid (uint8 array) of the first validation images with
    their predictions drawn (and named) is appended to it (process 0). ``classes``: what the
    model's labels mean (the train set's, stored with its checkpoints); default: ``records``'.
    """
    classes = classes if classes is not None else Classes.of_records(records)
    evaluator = CocoEvaluator(ground_truth(records))
    label_to_cat = _label_to_category(classes, int(cfg.num_classes))
    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    post = jax.jit(lambda lg, bx, sz: pp.postprocess(lg, bx, sz, num_top_queries=cfg.num_top_queries,
                                                     remap_mscoco_category=False))
    for local in data_lib.build_eval_iterator(cfg.data, jax.process_index(), jax.process_count(), records=records):
        images = jax.make_array_from_process_local_data(sharding, np.asarray(local["image"]))
        out = {k: _gather(v) for k, v in predict(images).items()}
        meta = {k: _gather(local[k]) for k in ("image_id", "orig_size", "valid")}
        res = jax.device_get(post(out["pred_logits"], out["pred_boxes"], meta["orig_size"]))
        evaluator.add(meta["image_id"], res["boxes"], res["scores"], label_to_cat[res["labels"]], meta["valid"])
        if picture is not None and not picture and jax.process_index() == 0:
            grid = predictions_grid(local["image"], out["pred_logits"], out["pred_boxes"], classes.names)
            picture.append(np.asarray(grid))
    return evaluator.summarize()


def forget_evals_after(workdir: str, step: int) -> None:
    """Drop the ``eval.jsonl`` rows of steps after ``step`` (and a half-written last line): a run
    killed between an evaluation and its checkpoint redoes that epoch when it resumes (process 0)."""
    path = os.path.join(workdir, "eval.jsonl")
    if jax.process_index() != 0 or not os.path.isfile(path):
        return
    kept, dropped = [], 0
    for line in open(path):
        try:
            keep = int(json.loads(line)["step"]) <= step
        except (ValueError, KeyError):
            keep = False
        kept += [line] if keep else []
        dropped += not keep
    if dropped:
        with open(path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)
        log.info("dropped %d row(s) of %s after step %d (evaluated before the run was stopped)", dropped, path, step)


def record_eval(workdir: str, step: int, epoch: int, metrics: Dict[str, Any], writer=None) -> None:
    """Append the row ``{step, epoch, AP, ..., per_class}`` to ``workdir/eval.jsonl``, rewrite
    ``per_class_ap.txt``, log the compact table, and write the scalars to ``writer`` (process 0 only)."""
    if jax.process_index() != 0:
        return
    row = {"step": int(step), "epoch": int(epoch), **metrics}
    with open(os.path.join(workdir, "eval.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    with open(os.path.join(workdir, "per_class_ap.txt"), "w") as f:
        f.write(f"step {step} epoch {epoch}\n" + format_per_class(metrics["per_class"]) + "\n")
    log.info("eval epoch %d step %d (COCO box AP, %%):\n%s", epoch, step, format_stats(metrics))
    if writer is not None:
        writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items() if k != "per_class"})
