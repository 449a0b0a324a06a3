"""The records of a split: ``load_split(config.data, 'train' | 'val')`` reads the split's COCO-format
folder (or the TFDS export of ``tfds_name``), or the YOLO or VOC set of ``config.data.root``
(``formats.detect`` says which), into ``coco.CocoRecords``.

With ``config.data.strict_files`` every image file of the split is read and decoded once, with
the pipeline's own decoder (``transforms.decode_image``, in parallel with tf.data), and any file
that is missing or cannot be decoded is a ``DataError`` at start-up listing them. Without it, a
missing train file is dropped with one warning and an undecodable one is skipped when the
pipeline meets it (the table in ``deim_jax.data.coco``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf

from deim_jax.data import coco as coco_lib
from deim_jax.data import formats, voc, yolo
from deim_jax.data import transforms as T
from deim_jax.errors import ConfigError, DataError, MissingDataError

log = logging.getLogger(__name__)

MAX_LISTED = 20  # bad files named in the strict_files error

_CONFIGURED = False


def configure_tf():
    """Set TensorFlow up for the input pipelines, once per process: no accelerators (they belong to
    JAX) and one thread per op. The pipelines run examples (and batches) in parallel through tf.data,
    and an op that splits one image over threads costs more than it saves (2 cores, Mosaic phase:
    about 17% more images/s with one thread per op). Takes effect only before TensorFlow's runtime
    starts; later calls leave it as it is."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    _CONFIGURED = True
    try:
        tf.config.set_visible_devices([], "GPU")
        tf.config.threading.set_intra_op_parallelism_threads(1)
    except RuntimeError:
        log.debug("TensorFlow's runtime had started: its device and thread settings stay as they are")


def load_split(d, split: str, missing: Optional[str] = None) -> coco_lib.CocoRecords:
    """Records for ``split`` ('train' or 'val') of the data block ``d`` (``d.<split>``).

    ``missing``: what to do with missing image files ('drop' or 'error'; default: 'drop' for
    train, 'error' for val); ignored with ``d.strict_files`` (every bad file is an error)."""
    configure_tf()   # reading a TFDS export may start TensorFlow's runtime
    fmt = formats.detect(d)
    missing = missing or ("drop" if split == "train" else "error")
    read = _read_folder_set if fmt in ("yolo", "voc") else _read_coco
    records, images = read(d, fmt, split, missing)
    if d.strict_files:
        check_files(records, images, split)
    return records


def _read_coco(d, fmt: str, split: str, missing: str):
    """(records, images folder) of the split's COCO json, or of the TFDS export."""
    images, ann = d[split].images, d[split].annotations
    if fmt == "tfds" or ((not images or not ann) and d.tfds_name):
        if not d.tfds_name:
            raise ConfigError("config.data.format='tfds' needs config.data.tfds_name")
        from deim_jax.data import tfds_source
        images, ann = tfds_source.coco_folder_from_tfds(
            d.tfds_name, d.data_dir or "", d[f"tfds_{split}_split"], d.tfds_export_dir)
    if not images or not ann:
        raise ConfigError(f"config.data.{split}.images / .annotations must name a COCO-format set")
    if not os.path.isfile(ann):
        raise MissingDataError(f"config.data.{split}.annotations: annotation file not found: {ann}")
    records = coco_lib.load_coco(images, ann, int(d.num_classes), bool(d.remap_mscoco_category),
                                 check_files=not d.strict_files, missing=missing)
    return records, images


def _read_folder_set(d, fmt: str, split: str, missing: str):
    """(records, the set's folder) of the YOLO or VOC set at ``d.root``."""
    root = formats.set_root(d, fmt)
    kw = dict(check_files=not d.strict_files, missing="error" if d.strict_files else missing)
    records = (yolo.load_yolo(root, d[split].split, int(d.num_classes), **kw) if fmt == "yolo" else
               voc.load_voc(root, d[split].split, int(d.num_classes), voc.class_list(d.voc_classes), **kw))
    return records, root if os.path.isdir(root) else os.path.dirname(root)


def undecodable(paths: Sequence[str]) -> List[int]:
    """Indices of the ``paths`` that the pipeline cannot read or decode (missing files included)."""
    configure_tf()

    def decode(i, path):
        return i, tf.shape(T.decode_image(tf.io.read_file(path), tf.uint8))  # the shape keeps the decode

    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype=np.int64), [str(p) for p in paths]))
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
    readable = {int(i) for i, _ in ds.as_numpy_iterator()}
    return [i for i in range(len(paths)) if i not in readable]


def check_files(records: coco_lib.CocoRecords, images_dir: str, split: str) -> None:
    """``DataError`` listing the image files of ``records`` that are missing or undecodable."""
    t0 = time.perf_counter()
    bad = undecodable(records.file_names)
    log.info("strict_files: read and decoded %d %s image files in %.1f s, %d bad", len(records), split,
             time.perf_counter() - t0, len(bad))
    if bad:
        listed = [f"{os.path.relpath(p, images_dir)} ({'unreadable' if os.path.isfile(p) else 'missing'})"
                  for p in records.file_names[bad[:MAX_LISTED]]]
        more = f", ... ({len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
        raise DataError(f"{records.annotations_file}: {len(bad)} of {len(records)} {split} image files under "
                        f"{images_dir} are missing or unreadable (config.data.strict_files=True): "
                        f"{', '.join(listed)}{more}")
