"""YOLO detection sets (the Ultralytics layout), read into the same ``CocoRecords`` as a COCO json.

Layout (``config.data.root`` names the folder, or the yaml file itself)::

    ROOT/data.yaml           names: [a, b] or {0: a, 1: b}; nc (optional, = the number of names);
                             train / val / test: an image folder (or a list of them) relative to
                             ``path`` (absolute, or relative to the yaml's folder; default: that folder)
    ROOT/images/train/x.jpg
    ROOT/labels/train/x.txt  one line per box: ``class cx cy w h``, normalized to [0, 1]

or, without a data.yaml, ``ROOT/classes.txt`` (one name per line) and ``ROOT/images/<split>/``.
The split read is ``config.data.<train|val>.split`` (default 'train' / 'val'): the yaml's key, or
the folder name. The label file of an image is its path with the last ``images`` folder replaced
by ``labels`` and the extension by ``.txt`` (Ultralytics' rule); no label file, or an empty one,
is a background image. Images: the files of ``image_files.IMAGE_EXTENSIONS`` under the folders
(recursive, sorted), sizes read from their headers, ids by ``image_files.image_ids``. Category id
= class index, so the labels are the class indices when the names are a list. A line becomes the
COCO box ``[(cx - w/2) W, (cy - h/2) H, w W, h H]`` and then every check of ``deim_jax.data.coco``
applies (clipping, degenerate and non-finite boxes, num_classes).

Bad input (tests in ``tests/test_data_yolo_voc.py``):

==========================================  =====================================================
input                                       behaviour
==========================================  =====================================================
no data.yaml / classes.txt in the root;     ``MissingDataError`` naming the path
split folder missing
malformed YAML; top level not a mapping;    ``DataError`` naming FILE:LINE:COL or the key
no or bad ``names``; ``nc`` != number of
names; split key missing or not a folder
(``.txt`` image lists are not read)
empty line inside classes.txt               ``DataError`` naming FILE:LINE
image folder with no ``images`` folder in   ``DataError`` (its labels cannot be found)
its path
label line without 5 fields (a segment      ``DataError`` naming FILE:LINE and the count
polygon too), class not an integer,
non-numeric coordinate
class index not among the names             ``DataError`` naming FILE:LINE and the number of names
box corner outside [-0.01, 1.01]            dropped, counted (``stats['out_of_range']``), one
                                            warning naming the first FILE:LINE; corners within
                                            the margin are clipped to the image (COCO's rule)
label file without an image                 counted (``stats['orphan_labels']``), one warning
image without a label file                  background image, counted (``stats['no_label_file']``);
                                            one warning if no image of the split has one
image whose header cannot be read           as a missing file: train: dropped with one warning;
                                            val, strict_files: ``DataError`` listing them
==========================================  =====================================================
"""

from __future__ import annotations

import logging
import math
import os
from typing import Dict, List, Optional, Tuple

import yaml

from deim_jax.data import coco as coco_lib
from deim_jax.data.image_files import drop_unsized, header_sizes, image_ids, is_image
from deim_jax.errors import DataError, MissingDataError

log = logging.getLogger(__name__)

# the counters this loader adds to ``stats`` -> (input, what happens), for deim_jax.tools.inspect_data
STATS_BEHAVIOUR = {
    "out_of_range": ("YOLO box corner outside [-0.01, 1.01]", "dropped (within the margin: clipped)"),
    "orphan_labels": ("YOLO label file without an image", "ignored, one warning"),
    "no_label_file": ("YOLO image without a label file", "background image"),
}

MARGIN = 0.01  # normalized corners within [-MARGIN, 1 + MARGIN] are clipped, beyond are dropped


def names_file(root: str) -> Optional[str]:
    """The yaml or classes.txt of the set at ``root`` (a folder or the yaml), None if there is none."""
    if root.endswith((".yaml", ".yml")):
        return root if os.path.isfile(root) else None
    for name in ("data.yaml", "classes.txt"):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


def _labels_path(path: str) -> Optional[str]:
    """``path`` with its last ``images`` folder replaced by ``labels`` (None: it has none)."""
    head, sep, tail = path.rpartition(f"{os.sep}images{os.sep}")
    return f"{head}{os.sep}labels{os.sep}{tail}" if sep else None


def label_file(image_path: str) -> str:
    return os.path.splitext(_labels_path(image_path))[0] + ".txt"


def _read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.MarkedYAMLError as e:
        m = e.problem_mark
        raise DataError(f"{path}:{m.line + 1}:{m.column + 1}: malformed YAML: {e.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: malformed YAML: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: the top level is not a mapping with 'names' and the splits")
    return data


def _yaml_names(data: dict, path: str) -> Dict[int, str]:
    names, nc = data.get("names"), data.get("nc")
    if nc is not None and (not isinstance(nc, int) or isinstance(nc, bool) or nc <= 0):
        raise DataError(f"{path}: 'nc' is {nc!r}, not a positive integer")
    if names is None:
        if nc is None:
            raise DataError(f"{path}: no 'names' (a list of class names, or a mapping index: name)")
        return {i: f"class{i}" for i in range(nc)}
    if isinstance(names, list):
        table = dict(enumerate(names))
    elif isinstance(names, dict):
        bad = [k for k in names if not (isinstance(k, int) and not isinstance(k, bool) and k >= 0)
               and not (isinstance(k, str) and k.isascii() and k.isdigit())]
        if bad:
            raise DataError(f"{path}: 'names' key {bad[0]!r} is not a class index (an integer >= 0)")
        table = {int(k): v for k, v in names.items()}
    else:
        raise DataError(f"{path}: 'names' is {names!r}, not a list or a mapping index: name")
    if not table:
        raise DataError(f"{path}: 'names' is empty")
    if nc is not None and nc != len(table):
        raise DataError(f"{path}: 'nc' is {nc} but 'names' has {len(table)} entries")
    return {i: str(n) for i, n in sorted(table.items())}


def _yaml_split(data: dict, path: str, split: str) -> List[str]:
    """The image folders of ``split``: relative to ``path`` (relative to the yaml's folder)."""
    if split not in data:
        raise DataError(f"{path}: no {split!r} entry (config.data.<train|val>.split names the key; "
                        f"the yaml has {[k for k in data if k not in ('names', 'nc', 'path')]})")
    base = os.path.join(os.path.dirname(os.path.abspath(path)), str(data.get("path") or "."))
    dirs = []
    for entry in data[split] if isinstance(data[split], list) else [data[split]]:
        if not isinstance(entry, str):
            raise DataError(f"{path}: {split!r} is {entry!r}, not a folder name")
        if entry.endswith(".txt"):
            raise DataError(f"{path}: {split!r} is {entry!r}, a list of image files; only image "
                            "folders are read here: name the folder")
        folder = os.path.normpath(os.path.join(base, entry))
        if not os.path.isdir(folder) and entry.startswith("../"):  # Roboflow exports: '../train/images'
            folder = os.path.normpath(os.path.join(base, entry[3:]))
        dirs.append(folder)
    return dirs


def _read_classes_txt(path: str) -> Dict[int, str]:
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f.read().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise DataError(f"{path}: no class names (one per line)")
    for n, line in enumerate(lines, 1):
        if not line:
            raise DataError(f"{path}:{n}: empty class name (line N names class N - 1)")
    return dict(enumerate(lines))


def read_spec(root: str, split: str) -> Tuple[str, Dict[int, str], List[str]]:
    """(names file, class index -> name, image folders of ``split``) of the set at ``root``."""
    path = names_file(root)
    if path is None:
        raise MissingDataError(
            f"config.data.root = {root!r} has no data.yaml or classes.txt: a YOLO set is a folder with "
            "data.yaml (names, train, val) or classes.txt, images/<split>/ and labels/<split>/")
    if path.endswith(".txt"):
        names = _read_classes_txt(path)
        dirs = [os.path.join(os.path.dirname(os.path.abspath(path)), "images", split)]
    else:
        data = _read_yaml(path)
        names, dirs = _yaml_names(data, path), _yaml_split(data, path, split)
    for folder in dirs:
        if not os.path.isdir(folder):
            raise MissingDataError(f"{path}: the {split!r} image folder {folder} does not exist")
        if _labels_path(folder + os.sep) is None:
            raise DataError(f"{path}: the {split!r} image folder {folder} has no 'images' folder in its "
                            "path, so its labels cannot be found (.../images/... -> .../labels/...)")
    return path, names, dirs


def _read_labels(path: str, names: Dict[int, str], names_path: str):
    """[(line number, class, cx, cy, w, h)] of a label file; ``DataError`` FILE:LINE on bad lines."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 5:
                hint = " (a segment polygon? only boxes are read)" if len(fields) > 5 else ""
                raise DataError(f"{path}:{n}: {len(fields)} fields, expected 5: class cx cy w h{hint}")
            try:
                cls = int(fields[0])
            except ValueError:
                raise DataError(f"{path}:{n}: class {fields[0]!r} is not an integer") from None
            values = []
            for name, text in zip(("cx", "cy", "w", "h"), fields[1:]):
                try:
                    values.append(float(text))
                except ValueError:
                    raise DataError(f"{path}:{n}: {name} {text!r} is not a number") from None
            if cls not in names:
                raise DataError(f"{path}:{n}: class {cls} is not one of the {len(names)} classes named "
                                f"in {names_path}")
            rows.append((n, cls, *values))
    return rows


def _out_of_range(cx: float, cy: float, w: float, h: float) -> bool:
    corners = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    return all(map(math.isfinite, corners)) and not all(-MARGIN <= v <= 1 + MARGIN for v in corners)


def _orphan_labels(dirs: List[str], expected: set) -> List[str]:
    """Label files under the labels folders of ``dirs`` that belong to no image."""
    out = []
    for folder in dirs:
        for dp, _, files in os.walk(_labels_path(folder + os.sep).rstrip(os.sep)):
            out += [os.path.join(dp, f) for f in sorted(files)
                    if f.endswith(".txt") and f != "classes.txt" and os.path.join(dp, f) not in expected]
    return out


def load_yolo(root: str, split: str, num_classes: int, check_files: bool = True,
              missing: str = "drop") -> coco_lib.CocoRecords:
    """Records of ``split`` of the YOLO set at ``root``; see the module docstring."""
    names_path, names, dirs = read_spec(os.path.abspath(root), split)
    paths = sorted({os.path.join(dp, f) for folder in dirs for dp, _, fs in os.walk(folder) for f in fs
                    if is_image(f)})
    stats = dict(out_of_range=0, orphan_labels=0, no_label_file=0)
    images, annotations, unsized, first_out = [], [], [], ""
    ids = image_ids([os.path.splitext(os.path.basename(p))[0] for p in paths])
    for path, size, iid in zip(paths, header_sizes(paths), ids):
        if size is None:
            unsized.append(path)
            continue
        (W, H), labels = size, label_file(path)
        images.append({"id": iid, "file_name": path, "width": W, "height": H})
        if not os.path.isfile(labels):
            stats["no_label_file"] += 1
            continue
        for n, cls, cx, cy, w, h in _read_labels(labels, names, names_path):
            if _out_of_range(cx, cy, w, h):
                stats["out_of_range"] += 1
                first_out = first_out or f"{labels}:{n}"
                continue
            annotations.append({"image_id": iid, "category_id": cls,
                                "bbox": [(cx - w / 2) * W, (cy - h / 2) * H, w * W, h * H]})
    drop_unsized(unsized, missing, names_path)
    if first_out:
        log.warning("%s: %d box(es) with a corner outside [%g, %g] of the image dropped (first: %s)",
                    names_path, stats["out_of_range"], -MARGIN, 1 + MARGIN, first_out)
    if images and stats["no_label_file"] == len(images):
        log.warning("%s: none of the %d %r images has a label file (looked in %s): all are background images",
                    names_path, len(images), split, _labels_path(dirs[0] + os.sep))
    orphans = _orphan_labels(dirs, {label_file(p) for p in paths})
    if orphans:
        stats["orphan_labels"] = len(orphans)
        log.warning("%s: %d label file(s) without an image (ignored): %s", names_path, len(orphans), orphans[:10])
    dataset = {"images": images, "annotations": annotations,
               "categories": [{"id": i, "name": n} for i, n in names.items()]}
    records = coco_lib.load_coco(dirs[0], names_path, num_classes, check_files=check_files, missing=missing,
                                 dataset=dataset, source_format="yolo")
    records.stats.update(stats)
    return records
