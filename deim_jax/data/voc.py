"""Pascal VOC detection sets, read into the same ``CocoRecords`` as a COCO json.

Layout (``config.data.root`` is the folder that holds them, e.g. ``VOCdevkit/VOC2012``)::

    ROOT/JPEGImages/<id>.jpg         (or another extension of image_files.IMAGE_EXTENSIONS)
    ROOT/Annotations/<id>.xml        <size> <width> <height>, one <object> per box: <name>,
                                     <difficult>, <bndbox> <xmin> <ymin> <xmax> <ymax>
    ROOT/ImageSets/Main/<split>.txt  the ids of the split, one per line

The split is ``config.data.<train|val>.split`` (default 'train' / 'val'; e.g. 'trainval' and
'test' for VOC2007). Boxes: VOC pixel coordinates are 1-based and inclusive (a one-pixel box has
xmin == xmax), so the record box is ``[xmin - 1, ymin - 1, xmax, ymax]``: 0-based pixel edges,
absolute xyxy, the width staying ``xmax - xmin + 1`` as the devkit counts it. ``difficult``
objects are kept as regular boxes, for training and as evaluation ground truth (counted in
``stats['difficult']``): the DETR-family VOC recipes train on every object, and COCO AP has no
flag to ignore them (VOC's own metric does, so it would read a little higher). Class names:
``config.data.voc_classes`` in label order, or if it is empty the sorted set of the ``<name>``s of
every XML in ``Annotations/`` (the same for every split); category id = label. Image sizes are
read from the image headers and ``<size>`` is checked against them; ids by
``image_files.image_ids`` (list order). Then every check of ``deim_jax.data.coco`` applies.

Bad input (tests in ``tests/test_data_yolo_voc.py``):

==========================================  =====================================================
input                                       behaviour
==========================================  =====================================================
no Annotations/ or JPEGImages/, split list  ``MissingDataError`` naming the path
missing
XML that does not parse                     ``DataError`` ``FILE:LINE:COL: malformed XML: ...``
split list line that is not one id          ``DataError`` naming FILE:LINE
id listed twice                             deduplicated, counted (``stats['duplicate_images']``)
listed id without an XML                    background image, counted
                                            (``stats['no_annotation_file']``), one warning
object without ``<name>``                   ``DataError`` naming the file and the object
name not in ``voc_classes`` (when given)    ``DataError`` naming the file, the name and the classes
missing / malformed ``<bndbox>`` values     dropped, counted (``stats['nonfinite']``, COCO's rule)
``<size>`` that disagrees with the image    ``DataError`` naming the first file, both sizes and the
                                            count (the boxes may refer to another picture)
``<size>`` missing or 0                     the image's size is used
image file missing                          COCO's rule: train: dropped with one warning; val:
                                            ``MissingDataError``; with strict_files an error
image unreadable and no ``<size>``          as a missing file: train: dropped with one warning;
                                            val, strict_files: ``DataError`` listing them
==========================================  =====================================================
"""

from __future__ import annotations

import functools
import logging
import os
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Sequence, Tuple

from deim_jax.data import coco as coco_lib
from deim_jax.data.image_files import IMAGE_EXTENSIONS, drop_unsized, header_sizes, image_ids
from deim_jax.errors import DataError, MissingDataError

log = logging.getLogger(__name__)


def class_list(value) -> tuple:
    """``config.data.voc_classes`` as names: a tuple, or a comma-separated string from the command
    line (``--config.data.voc_classes=cat,dog`` arrives as ``('cat,dog',)``)."""
    items = [value] if isinstance(value, str) else list(value)
    return tuple(name.strip() for item in items for name in str(item).split(",") if name.strip())


# the counters this loader adds to ``stats`` -> (input, what happens), for deim_jax.tools.inspect_data
STATS_BEHAVIOUR = {
    "no_annotation_file": ("VOC listed id without an XML", "background image, one warning"),
    "difficult": ("VOC object marked difficult", "kept as a regular box"),
}

Objects = List[Tuple[str, Optional[List[float]], bool]]  # (name, COCO bbox xywh or None, difficult)


def is_voc(root: str) -> bool:
    return all(os.path.isdir(os.path.join(root, sub)) for sub in ("Annotations", "JPEGImages"))


def split_list(root: str, split: str) -> str:
    return os.path.join(root, "ImageSets", "Main", f"{split}.txt")


def locate(root: str, split: str) -> Tuple[str, str, str]:
    """(split list, JPEGImages folder, Annotations folder) of the set at ``root``."""
    for sub in ("JPEGImages", "Annotations"):
        if not os.path.isdir(os.path.join(root, sub)):
            raise MissingDataError(
                f"config.data.root = {root!r} has no {sub}/ folder: a VOC set is a folder with "
                "JPEGImages/, Annotations/ and ImageSets/Main/<split>.txt")
    ids = split_list(root, split)
    if not os.path.isfile(ids):
        raise MissingDataError(f"{ids} does not exist: it lists the ids of the {split!r} split "
                               "(config.data.<train|val>.split)")
    return ids, os.path.join(root, "JPEGImages"), os.path.join(root, "Annotations")


def _read_ids(path: str) -> Tuple[List[str], int]:
    """The ids of a split list in order, duplicates removed, and the number removed."""
    ids: Dict[str, None] = {}
    count = 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if len(line.split()) != 1:
                raise DataError(f"{path}:{n}: {line.strip()!r} is not one image id (one id per line)")
            ids[line.strip()] = None
            count += 1
    return list(ids), count - len(ids)


def _bbox(box) -> Optional[List[float]]:
    """COCO [x, y, w, h] of a <bndbox> (1-based inclusive -> 0-based edges); None if malformed."""
    try:
        x1, y1, x2, y2 = (float(box.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
    except (AttributeError, TypeError, ValueError):
        return None
    return [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1]


def read_xml(path: str) -> Tuple[Objects, Optional[Tuple[int, int]]]:
    """The objects of an annotation file and its <size> (None if missing or 0)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        line, col = e.position
        raise DataError(f"{path}:{line}:{col + 1}: malformed XML: {e}") from None
    objects = []
    for k, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"{path}: object {k} has no <name>")
        objects.append((name, _bbox(obj.find("bndbox")), (obj.findtext("difficult") or "").strip() == "1"))
    try:
        size = int(float(root.findtext("size/width"))), int(float(root.findtext("size/height")))
    except (TypeError, ValueError):
        size = None
    return objects, size if size and min(size) > 0 else None


def _image_path(images_dir: str, vid: str) -> str:
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        if os.path.isfile(os.path.join(images_dir, vid + ext)):
            return os.path.join(images_dir, vid + ext)
    return os.path.join(images_dir, vid + ".jpg")


def load_voc(root: str, split: str, num_classes: int, names: Sequence[str] = (), check_files: bool = True,
             missing: str = "drop") -> coco_lib.CocoRecords:
    """Records of ``split`` of the VOC set at ``root`` (``names``: the classes in label order, or
    empty for the sorted names found in Annotations/); see the module docstring."""
    list_file, images_dir, ann_dir = locate(os.path.abspath(root), split)
    vids, duplicates = _read_ids(list_file)
    objects_and_size = functools.lru_cache(maxsize=None)(read_xml)  # each XML read once
    classes = list(names) or sorted({o[0] for f in sorted(os.listdir(ann_dir)) if f.endswith(".xml")
                                     for o in objects_and_size(os.path.join(ann_dir, f))[0]})
    label = {n: i for i, n in enumerate(classes)}
    paths = [_image_path(images_dir, v) for v in vids]
    stats = dict(difficult=0, no_annotation_file=0)
    images, annotations, unsized, mismatched = [], [], [], []
    for vid, iid, path, size in zip(vids, image_ids(vids), paths, header_sizes(paths)):
        xml = os.path.join(ann_dir, vid + ".xml")
        objects, tag = objects_and_size(xml) if os.path.isfile(xml) else ([], None)
        stats["no_annotation_file"] += not os.path.isfile(xml)
        if size and tag and size != tag:
            mismatched.append((xml, tag, path, size))
        # a missing file never uses its size: it is dropped or an error (COCO's missing-file rule)
        size = size or tag or (None if os.path.isfile(path) else (1, 1))
        if size is None:
            unsized.append(path)
            continue
        images.append({"id": iid, "file_name": path, "width": size[0], "height": size[1]})
        for name, bbox, difficult in objects:
            if name not in label:
                raise DataError(f"{xml}: object {name!r} is not one of config.data.voc_classes {classes}")
            stats["difficult"] += difficult
            annotations.append({"image_id": iid, "category_id": label[name], "bbox": bbox})
    if mismatched:
        xml, (tw, th), path, (w, h) = mismatched[0]
        raise DataError(f"{xml}: <size> is {tw}x{th} but the image {path} is {w}x{h} ({len(mismatched)} "
                        "file(s) of the split disagree; the boxes may belong to another version of the image)")
    drop_unsized(unsized, missing, list_file)
    if stats["no_annotation_file"]:
        log.warning("%s: %d listed id(s) have no XML in %s: they are background images", list_file,
                    stats["no_annotation_file"], ann_dir)
    dataset = {"images": images, "annotations": annotations,
               "categories": [{"id": i, "name": n} for i, n in enumerate(classes)]}
    records = coco_lib.load_coco(images_dir, list_file, num_classes, check_files=check_files, missing=missing,
                                 dataset=dataset, source_format="voc")
    records.stats.update(stats)
    records.stats["duplicate_images"] += duplicates
    return records
