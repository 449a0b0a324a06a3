"""Image files of the data sets that have no COCO json (YOLO, VOC): which files are images, their
sizes (read from the headers), their image ids, and what happens to the ones without a size.

Sizes are PIL's ``Image.open(path).size`` (the header only, no pixels decoded; the stored size,
EXIF orientation ignored as the pipeline does), read in threads. Image ids: the file stems as
integers when every stem is a decimal number and they are distinct (COCO-style names such as
``000000000139.jpg`` keep their ids), else 1..N in the order given.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from typing import List, Optional, Sequence, Tuple

from PIL import Image

from deim_jax.errors import DataError

log = logging.getLogger(__name__)

# what the pipeline's decoder reads (tf.io.decode_image); compared lower-case
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _size(path: str) -> Optional[Tuple[int, int]]:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def header_sizes(paths: Sequence[str]) -> List[Optional[Tuple[int, int]]]:
    """(width, height) of each image file, None where it is missing or its header unreadable."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 2)) as pool:
        return list(pool.map(_size, paths))


def image_ids(stems: Sequence[str]) -> List[int]:
    """The image id of each file stem (see the module docstring)."""
    if all(s.isascii() and s.isdigit() for s in stems):
        ids = [int(s) for s in stems]
        if len(set(ids)) == len(ids) and min(ids, default=1) > 0:
            return ids
    return list(range(1, len(stems) + 1))


def drop_unsized(paths: Sequence[str], missing: str, source: str) -> None:
    """The images whose size is unknown (missing or unreadable file, nothing else gives the size):
    ``DataError`` with ``missing='error'`` (evaluation, strict_files), else one warning (dropped)."""
    if not paths:
        return
    msg = (f"{source}: {len(paths)} image file(s) missing or unreadable, so their size is unknown: "
           f"{list(paths[:10])}")
    if missing == "error":
        raise DataError(msg)
    log.warning(msg + " (dropped)")
