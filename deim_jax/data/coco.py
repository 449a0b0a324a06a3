"""COCO-format annotation loading, category mapping and input validation.

``load_coco(images_dir, annotations_file, num_classes, remap_mscoco_category)``
reads an ``instances_*.json`` (COCO or any custom set in COCO format), or takes the same dict
already in memory (``dataset=``: the YOLO and VOC readers build one), and returns a
``CocoRecords``: one entry per image id (sorted ascending, like the official
``CocoDetection``), with boxes as absolute-pixel **xyxy** float32 already clamped to
the image and contiguous int32 labels, stored ragged (``box_offsets``) so a
``tf.data`` pipeline can gather them with tensors only.

Bad input (the behaviour of every case; tests in ``tests/test_data_coco.py`` and
``tests/test_data_pipeline.py``). Every error is raised before training, is a
``deim_jax.errors.UserError`` (one ``error:`` line on the command line, exit status 2) and names
the file. The YOLO and VOC readers build this dict in memory and pass it through the same checks
(``load_coco(..., dataset=)``); their own rows are tables in ``deim_jax.data.yolo`` and ``.voc``:

==========================================  =====================================================
input                                       behaviour
==========================================  =====================================================
malformed JSON (syntax)                     ``DataError`` ``FILE:LINE:COL: malformed JSON: ...``
top level not an object; ``images`` /       ``DataError`` naming the key (a missing key is an
``annotations`` / ``categories`` not a      empty list)
list
entry that is not an object or lacks a      ``DataError`` naming the entry (``images[7]``, its id)
required field: images ``id``,              and the field; also a non-integer id / size, a
``file_name``, ``width``, ``height``;       ``file_name`` that is not a string, a width or height
annotations ``image_id``, ``category_id``;  <= 0
categories ``id``
empty ``categories`` list                   ``DataError``
annotation with unknown ``category_id``     ``DataError`` naming the unknown ids
``num_classes`` too small for the data      ``DataError`` naming the ids and the count
``num_classes`` 0                           taken from the data (``data.classes``)
``remap_mscoco_category`` on non-COCO ids   ``DataError`` naming the ids
duplicated image id, identical entries      deduplicated, counted in ``stats['duplicate_images']``
duplicated image id, different entries      ``DataError`` naming the ids
annotation for an image id not listed       dropped, counted (``stats['orphan_annotations']``)
``iscrowd == 1``                            dropped (official), counted (``stats['crowd']``)
NaN / inf / missing / malformed bbox        dropped, counted (``stats['nonfinite']``)
box partly outside the image                clipped to [0, W] x [0, H] (official)
zero / negative width or height (after      dropped, counted (``stats['degenerate']``)
clipping; also boxes fully outside)
image with no annotations                   kept, trains as a background image (official)
missing image file                          train: dropped before training with one warning
                                            naming them (``stats['missing_files']``); eval:
                                            ``MissingDataError`` naming them
corrupt / truncated / unknown-format file   train: the example is skipped at decode time with a
                                            warning, the epoch keeps its length (spare indices);
                                            eval: replaced by a black image with ``valid=False``
missing or unreadable file with             ``DataError`` at start-up listing them (the first 20
``config.data.strict_files`` (train, val)   and the count): every file is read and decoded once
                                            by the pipeline's decoder (``data.sources``)
grayscale / RGBA / palette / 16-bit PNG,    decoded to 8-bit RGB (``tf.io.decode_image``,
CMYK JPEG                                   ``channels=3``; alpha dropped, 16-bit scaled)
EXIF-rotated JPEG                           orientation tag ignored: pixels used as stored, which
                                            is what COCO boxes refer to and what the official PIL
                                            loader does
more boxes than ``max_boxes``               the first ``max_boxes`` (annotation order) kept, the
                                            rest dropped; per-example count in the batch key
                                            ``num_dropped_boxes``
==========================================  =====================================================
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from deim_jax.errors import DataError, MissingDataError
from deim_jax.ops.coco_categories import MSCOCO_CATEGORY2LABEL, MSCOCO_CATEGORY_IDS, MSCOCO_LABEL2CATEGORY  # noqa: F401

log = logging.getLogger(__name__)

# ``CocoRecords.stats`` key -> (input, behaviour): the rows of the table above that are counted
STATS_BEHAVIOUR = {
    "duplicate_images": ("duplicated image id, identical entries", "deduplicated"),
    "orphan_annotations": ("annotation for an image id not listed", "dropped"),
    "crowd": ("iscrowd == 1", "dropped (official)"),
    "nonfinite": ("NaN / inf / missing / malformed bbox", "dropped"),
    "degenerate": ("zero / negative width or height", "dropped (after clipping; also boxes fully outside)"),
    "missing_files": ("missing image file", "train: dropped before training with one warning; eval: "
                                            "MissingDataError naming them"),
}


@dataclasses.dataclass
class CocoRecords:
    """Per-image arrays (N images, M boxes in total).

    file_names [N] str (absolute paths); image_ids [N] int64; widths/heights [N] int32;
    box_offsets [N+1] int64 (boxes of image i are ``boxes[box_offsets[i]:box_offsets[i+1]]``);
    boxes [M, 4] float32 absolute xyxy; labels [M] int32 contiguous;
    label_to_category: contiguous label -> category id of the json (for evaluation);
    category_names: contiguous label -> name; stats: counts of everything dropped/fixed.
    """
    file_names: np.ndarray
    image_ids: np.ndarray
    widths: np.ndarray
    heights: np.ndarray
    box_offsets: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    label_to_category: Dict[int, int]
    category_names: Dict[int, str]
    stats: Dict[str, int]
    annotations_file: str = ""
    source_format: str = "coco"  # 'coco': annotations_file is the json the evaluator reads; 'yolo', 'voc'

    def __len__(self):
        return len(self.image_ids)

    def boxes_of(self, i):
        a, b = self.box_offsets[i], self.box_offsets[i + 1]
        return self.boxes[a:b], self.labels[a:b]

    def subset(self, keep: np.ndarray) -> "CocoRecords":
        """Records restricted to the images ``keep`` (bool [N] or indices)."""
        idx = np.arange(len(self))[keep] if np.asarray(keep).dtype == bool else np.asarray(keep)
        counts = np.diff(self.box_offsets)[idx]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        sel = np.concatenate([np.arange(self.box_offsets[i], self.box_offsets[i + 1]) for i in idx]
                             ) if len(idx) else np.zeros([0], np.int64)
        sel = sel.astype(np.int64)
        return dataclasses.replace(
            self, file_names=self.file_names[idx], image_ids=self.image_ids[idx],
            widths=self.widths[idx], heights=self.heights[idx], box_offsets=offsets,
            boxes=self.boxes[sel].reshape(-1, 4), labels=self.labels[sel], stats=dict(self.stats))

    def as_coco_dict(self) -> dict:
        """The records as a COCO-format dict (``bbox`` xywh pixels, category ids, ``area``,
        ``iscrowd`` 0): the evaluation ground truth of a set that has no COCO json."""
        images = [{"id": int(i), "width": int(w), "height": int(h)}
                  for i, w, h in zip(self.image_ids, self.widths, self.heights)]
        image_of_box = np.repeat(self.image_ids, np.diff(self.box_offsets))
        xywh = np.concatenate([self.boxes[:, :2], self.boxes[:, 2:] - self.boxes[:, :2]], 1).tolist()
        annotations = [{"id": k + 1, "image_id": int(i), "category_id": self.label_to_category[int(l)],
                        "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                       for k, (i, l, b) in enumerate(zip(image_of_box, self.labels, xywh))]
        categories = [{"id": c, "name": self.category_names.get(l, str(c))}
                      for l, c in sorted(self.label_to_category.items())]
        return {"images": images, "annotations": annotations, "categories": categories}


# The fields every entry of a list needs: an integer (``int()`` of it works) except file_name.
_REQUIRED = {"images": ("id", "file_name", "width", "height"),
             "annotations": ("image_id", "category_id"),
             "categories": ("id",)}


def _json_type(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _entry_problem(entry, fields: Sequence[str]) -> Optional[str]:
    """What is wrong with one entry of a json list (None: nothing)."""
    if not isinstance(entry, dict):
        return f"is a JSON {_json_type(entry)}, not an object"
    for field in fields:
        if field not in entry:
            return f"has no {field!r}"
        value = entry[field]
        if field == "file_name":
            if not isinstance(value, str):
                return f"{field!r} is {value!r}, not a string"
            continue
        try:
            number = int(value)
        except (TypeError, ValueError, OverflowError):
            return f"{field!r} is {value!r}, not an integer"
        if field in ("width", "height") and number <= 0:
            return f"{field!r} is {value!r}, not a positive size"
    return None


def read_annotations(annotations_file: str) -> Dict[str, list]:
    """The 'images', 'annotations' and 'categories' lists of a COCO-format json (a missing key is
    an empty list); ``DataError`` naming the file and the line:column, or the entry and field."""
    try:
        with open(annotations_file, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{annotations_file}:{e.lineno}:{e.colno}: malformed JSON: {e.msg} "
                        f"(line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{annotations_file}: not UTF-8 JSON text: {e}") from None
    return check_lists(data, annotations_file)


def check_lists(data, annotations_file: str) -> Dict[str, list]:
    """The three lists of a COCO-format dict, each entry checked (``annotations_file`` names the
    source in the messages)."""
    if not isinstance(data, dict):
        raise DataError(f"{annotations_file}: the top level is a JSON {_json_type(data)}, not an object "
                        "with 'images', 'annotations' and 'categories'")
    lists = {}
    for key, fields in _REQUIRED.items():
        entries = lists[key] = data.get(key, [])
        if not isinstance(entries, list):
            raise DataError(f"{annotations_file}: '{key}' is a JSON {_json_type(entries)}, not a list")
        for i, entry in enumerate(entries):
            problem = _entry_problem(entry, fields)
            if problem:
                ident = f" (id {entry['id']!r})" if isinstance(entry, dict) and "id" in entry else ""
                raise DataError(f"{annotations_file}: {key}[{i}]{ident} {problem}")
    return lists


def category_mapping(categories: List[dict], num_classes: int, remap_mscoco_category: bool,
                     annotations_file: str = "<json>"):
    """Return (category_id -> label, label -> category_id, label -> name); raise on bad setups.

    ``num_classes`` 0: as many as the data need (no check)."""
    if not categories:
        raise DataError(f"{annotations_file}: the 'categories' list is empty; a detection data set "
                         "needs at least one category")
    ids = sorted({int(c["id"]) for c in categories})
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    if remap_mscoco_category:
        unknown = sorted(set(ids) - set(MSCOCO_CATEGORY_IDS))
        if unknown:
            raise DataError(
                f"{annotations_file}: remap_mscoco_category=True but category ids {unknown} are not "
                "COCO ids; set remap_mscoco_category=False for a custom data set")
        cat2label = dict(MSCOCO_CATEGORY2LABEL)
    else:
        cat2label = {c: i for i, c in enumerate(ids)}
    needed = max(cat2label[c] for c in ids) + 1
    if num_classes != 0 and num_classes < needed:
        raise DataError(
            f"{annotations_file}: num_classes={num_classes} does not cover the data: category ids "
            f"{ids} map to labels 0..{needed - 1} (need num_classes >= {needed})")
    label2cat = {l: c for c, l in cat2label.items()}
    label_names = {cat2label[c]: names[c] for c in ids}
    return cat2label, label2cat, label_names


def _unique_images(entries: List[dict], stats: Dict[str, int], annotations_file: str) -> Dict[int, dict]:
    """image id -> entry; identical repeats are counted and dropped, conflicting ones raise."""
    images, conflicting = {}, []
    for im in entries:
        iid = int(im["id"])
        if iid in images:
            if images[iid] == im:
                stats["duplicate_images"] += 1
                continue
            conflicting.append(iid)
        images[iid] = im
    if conflicting:
        raise DataError(f"{annotations_file}: duplicated image ids with different entries: "
                         f"{sorted(set(conflicting))[:20]}")
    return images


def _boxes_per_image(annotations: List[dict], images: Dict[int, dict], cat2label: Dict[int, int],
                     stats: Dict[str, int]) -> Dict[int, list]:
    """image id -> [(x1, y1, x2, y2, label)] clipped to the image; bad boxes are counted and dropped."""
    per_image: Dict[int, list] = {i: [] for i in images}
    for a in annotations:
        iid = int(a["image_id"])
        if iid not in per_image:
            stats["orphan_annotations"] += 1
            continue
        if int(a.get("iscrowd", 0)) == 1:
            stats["crowd"] += 1
            continue
        try:
            x, y, w, h = (float(v) for v in a.get("bbox"))
        except (TypeError, ValueError):
            stats["nonfinite"] += 1
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            stats["nonfinite"] += 1
            continue
        W, H = float(images[iid]["width"]), float(images[iid]["height"])
        x1, y1 = min(max(x, 0.0), W), min(max(y, 0.0), H)
        x2, y2 = min(max(x + w, 0.0), W), min(max(y + h, 0.0), H)
        if not (x2 > x1 and y2 > y1):
            stats["degenerate"] += 1
            continue
        per_image[iid].append((x1, y1, x2, y2, cat2label[int(a["category_id"])]))
    return per_image


def load_coco(images_dir: str, annotations_file: str, num_classes: int,
              remap_mscoco_category: bool = False, check_files: bool = True,
              missing: str = "drop", dataset: Optional[dict] = None,
              source_format: str = "coco") -> CocoRecords:
    """Read a COCO-format json; see the module docstring for the handling of bad input.

    missing: 'drop' (training: drop missing image files with a warning) or 'error'.
    dataset: the COCO-format dict itself (read instead of the json, with the same checks);
    ``annotations_file`` then only names the source in messages, ``source_format`` says what it is.
    """
    data = read_annotations(annotations_file) if dataset is None else check_lists(dataset, annotations_file)
    cat2label, label2cat, label_names = category_mapping(
        data["categories"], num_classes, remap_mscoco_category, annotations_file)
    stats = dict(duplicate_images=0, orphan_annotations=0, crowd=0, nonfinite=0, degenerate=0,
                 missing_files=0, boxes=0)
    images = _unique_images(data["images"], stats, annotations_file)
    unknown = sorted({int(a["category_id"]) for a in data["annotations"]} - set(cat2label))
    if unknown:
        raise DataError(f"{annotations_file}: annotations use category ids {unknown} that are not "
                        f"in 'categories' (known: {sorted(cat2label)[:100]})")
    per_image = _boxes_per_image(data["annotations"], images, cat2label, stats)

    files, widths, heights, offsets, boxes, labels = [], [], [], [0], [], []
    missing_list, kept_ids = [], []
    for iid in sorted(images):
        im = images[iid]
        path = os.path.join(images_dir, im["file_name"])
        if check_files and not os.path.isfile(path):
            missing_list.append(path)
            continue
        files.append(path)
        kept_ids.append(iid)
        widths.append(int(im["width"]))
        heights.append(int(im["height"]))
        boxes.extend(b[:4] for b in per_image[iid])
        labels.extend(b[4] for b in per_image[iid])
        offsets.append(len(boxes))
    if missing_list:
        stats["missing_files"] = len(missing_list)
        msg = (f"{annotations_file}: {len(missing_list)} image file(s) missing under {images_dir}: "
               f"{missing_list[:10]}")
        if missing == "error":
            raise MissingDataError(msg)
        log.warning(msg + " (dropped)")
    stats["boxes"] = len(boxes)
    return CocoRecords(
        file_names=np.asarray(files, dtype=object), image_ids=np.asarray(kept_ids, np.int64),
        widths=np.asarray(widths, np.int32), heights=np.asarray(heights, np.int32),
        box_offsets=np.asarray(offsets, np.int64),
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4), labels=np.asarray(labels, np.int32),
        label_to_category=label2cat, category_names=label_names, stats=stats,
        annotations_file=annotations_file, source_format=source_format)
