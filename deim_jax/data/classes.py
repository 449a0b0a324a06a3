"""What a model's labels mean: label -> name and label -> category id of the annotations.

``config.num_classes = 0`` (``FROM_DATA``) means "as many classes as the training set has":
``adopt_num_classes(config.data, train_records)`` sets the shared field from the records before the
model is built and logs the names. ``Classes`` is stored with every checkpoint as JSON
``{"class_names": [name or null per label], "label_to_category": {"<label>": category id}}``, so
that evaluation and prediction show names; ``display_names`` falls back to COCO's names for an
80-class COCO-id model (official weights) and to none (labels shown as numbers) otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, Optional

from deim_jax.ops.coco_categories import MSCOCO_CATEGORY_IDS, MSCOCO_NAMES

log = logging.getLogger(__name__)

FROM_DATA = 0  # config.num_classes: take the number of classes from the training set
MAX_LOGGED = 30  # names in the start-up line


@dataclasses.dataclass(frozen=True)
class Classes:
    """``names``: label -> name (labels without a category have none); ``label_to_category``:
    label -> category id of the annotation files."""
    names: Dict[int, str]
    label_to_category: Dict[int, int]

    @classmethod
    def of_records(cls, records) -> "Classes":
        return cls(dict(records.category_names), dict(records.label_to_category))

    @property
    def num_labels(self) -> int:
        """The labels the table covers: its largest label + 1."""
        return max([*self.names, *self.label_to_category], default=-1) + 1

    def to_json(self) -> Dict[str, Any]:
        return {"class_names": [self.names.get(label) for label in range(self.num_labels)],
                "label_to_category": {str(k): int(v) for k, v in sorted(self.label_to_category.items())}}

    @classmethod
    def from_json(cls, obj: Optional[Dict[str, Any]]) -> Optional["Classes"]:
        """The inverse of ``to_json``; None for None (a checkpoint saved before names were stored)."""
        if not obj:
            return None
        names = {i: str(n) for i, n in enumerate(obj.get("class_names") or []) if n is not None}
        return cls(names, {int(k): int(v) for k, v in (obj.get("label_to_category") or {}).items()})


def num_classes_of(records) -> int:
    """Classes a model needs for ``records``: the largest label of the category table + 1 (80 with
    ``remap_mscoco_category``, else the number of categories of the annotation file)."""
    return max(records.label_to_category) + 1


def adopt_num_classes(d, records, stored: Optional[Classes] = None, stored_in: str = "") -> int:
    """``d.num_classes`` (the field shared with ``config.num_classes``), set when it is ``FROM_DATA``
    from ``stored`` (the classes a checkpoint in ``stored_in`` was trained with) if given, else from
    ``records``, with one log line naming the classes; returns it."""
    if int(d.num_classes) == FROM_DATA:
        if stored is not None:
            d.num_classes, names, source = stored.num_labels, stored.names, stored_in
        else:
            d.num_classes, names, source = num_classes_of(records), records.category_names, records.annotations_file
        names = [names[k] for k in sorted(names)]
        more = f" ... ({len(names) - MAX_LOGGED} more)" if len(names) > MAX_LOGGED else ""
        log.info("num_classes=%d from %s: names %s%s", int(d.num_classes), source,
                 ", ".join(names[:MAX_LOGGED]), more)
    return int(d.num_classes)


def display_names(classes: Optional[Classes], num_classes: int, remap_mscoco_category: bool) -> Dict[int, str]:
    """label -> name to show: ``classes``' names, else COCO's for an 80-class model with
    ``remap_mscoco_category`` (the official weights), else {} (show the label numbers)."""
    if classes is not None:
        return dict(classes.names)
    if remap_mscoco_category and num_classes == len(MSCOCO_CATEGORY_IDS):
        return dict(enumerate(MSCOCO_NAMES))
    return {}
