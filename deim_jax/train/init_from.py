"""Initial weights of a run: random, or ``config.init_from`` (an official .pth or a deim_jax checkpoint).

Fine-tuning with another number of classes: entries whose shape differs (class heads, the
denoising class embedding) keep their fresh initialization; the log lists them. With the same
number of classes the class head is loaded as it is, label by label: when the checkpoint's stored
class names are the data set's in another order, a warning says that the labels are permuted
(list the classes in the checkpoint's order, e.g. ``config.data.voc_classes``). An official
.pth is mapped straight onto the model's variables (``convert.raw_variables``: names and layouts),
with no detour through a full PyTorch state dict of the model.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np
from flax import traverse_util

from deim_jax import convert, models
from deim_jax.data.classes import Classes
from deim_jax.errors import MissingDataError
from deim_jax.train import checkpoints

log = logging.getLogger(__name__)


def merge_into(fresh: Dict[str, Any], source: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, List[str]]]:
    """``fresh`` variables with every leaf that ``source`` has at the same path and shape replaced
    (cast to the fresh dtype). Returns the merged tree and the paths ``{'loaded', 'reshaped' (fresh
    kept: shape differs), 'missing' (fresh kept: not in source), 'ignored' (in source only)}``."""
    flat_fresh = traverse_util.flatten_dict(fresh, sep="/")
    flat_src = traverse_util.flatten_dict(source, sep="/")
    out, report = {}, {"loaded": [], "reshaped": [], "missing": [], "ignored": sorted(set(flat_src) - set(flat_fresh))}
    for path, leaf in flat_fresh.items():
        if path not in flat_src:
            report["missing"].append(path)
            out[path] = leaf
        elif np.shape(flat_src[path]) != np.shape(leaf):
            report["reshaped"].append(path)
            out[path] = leaf
        else:
            report["loaded"].append(path)
            out[path] = np.asarray(flat_src[path]).astype(np.asarray(leaf).dtype)
    return traverse_util.unflatten_dict(out, sep="/"), report


def _source(src: str) -> Tuple[Dict[str, Any], Optional[Classes]]:
    """``{'params', 'batch_stats'}`` of an official .pth, or the EMA weights of a deim_jax checkpoint
    dir, and the class names stored with it (None for a .pth or an older checkpoint)."""
    if src.endswith(".pth"):
        return convert.raw_variables(convert.load_pth(src)), None
    found = checkpoints.latest_weights(src)
    if found is None:
        raise MissingDataError(f"config.init_from={src}: neither a .pth file nor a folder with checkpoints")
    return found["variables"], Classes.from_json(found["classes"])


def warn_if_permuted(src: str, source: Optional[Classes], target: Optional[Classes]) -> bool:
    """Warn (and return True) when ``source`` and ``target`` name the same classes in another order."""
    if source is None or target is None:
        return False
    a, b = [source.names.get(i) for i in sorted(source.names)], [target.names.get(i) for i in sorted(target.names)]
    if a == b or sorted(a) != sorted(b):
        return False
    log.warning("init_from %s: its classes are %s, this data set's %s: the class head is loaded label by "
                "label, so the labels are permuted; list the classes in the checkpoint's order "
                "(e.g. --config.data.voc_classes=%s) to keep what it learned", src, a, b, ",".join(a))
    return True


def initial_variables(cfg, model, rng, classes: Optional[Classes] = None) -> Dict[str, Any]:
    """Random init (host arrays), or that overwritten by ``cfg.init_from`` where paths and shapes agree.
    ``classes``: the training set's, compared with those stored in ``init_from``."""
    variables = jax.device_get(models.init(model, cfg, rng))
    if not cfg.init_from:
        return variables
    source, source_classes = _source(cfg.init_from)
    warn_if_permuted(cfg.init_from, source_classes, classes)
    merged, r = merge_into(variables, source)
    log.info("init_from %s: %d entries loaded; %d re-initialized (shape differs): %s; %d missing (fresh init): "
             "%s; %d ignored (not in this model): %s", cfg.init_from, len(r["loaded"]), len(r["reshaped"]),
             r["reshaped"], len(r["missing"]), r["missing"][:20], len(r["ignored"]), r["ignored"][:20])
    return merged
