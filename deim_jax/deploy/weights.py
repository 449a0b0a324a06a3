"""The weights a deployed detector runs: the EMA weights of a training run or checkpoint folder,
or an official PyTorch ``.pth`` (converted), with the class table stored alongside.

``load(cfg, workdir=..., checkpoint=..., weights=...)`` -> ``Loaded`` (``variables``
``{'params', 'batch_stats'}``, ``classes`` or None, ``source`` a sentence saying what was loaded).
Exactly one source: ``workdir`` (its ``checkpoints/`` folder, the checkpoint with the best AP, the
newest if none was evaluated), ``checkpoint`` (a checkpoint folder such as ``WORKDIR/checkpoints``
or what ``deim_jax.tools.convert`` writes: its newest checkpoint) or ``weights`` (a ``.pth``). A
config with ``num_classes = 0`` (from the data) takes the number from the stored classes. Weights
that do not fit the config's model (another size, other classes) are a ``ConfigError`` naming the
first entry that differs.

``pth_to_checkpoint`` / ``checkpoint_to_pth``: ``deim_jax.tools.convert``'s two directions.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional

import jax
import numpy as np
from flax import traverse_util

from deim_jax import convert, models
from deim_jax.data.classes import FROM_DATA, Classes, adopt_num_classes
from deim_jax.errors import ConfigError, MissingDataError, UserError
from deim_jax.train import checkpoints


@dataclasses.dataclass
class Loaded:
    variables: Dict[str, Any]
    classes: Optional[Classes]
    source: str


def _from_checkpoints(directory: str, flag: str, best: Optional[str]) -> Loaded:
    found = checkpoints.latest_weights(directory, best=best)
    if found is None:
        raise MissingDataError(f"{flag}: no checkpoint in {directory}")
    ap = found["metrics"].get("AP")
    scored = f", AP {ap:.4f}" if ap is not None else ""
    return Loaded(found["variables"], Classes.from_json(found["classes"]),
                  f"EMA weights of checkpoint step {found['step']}{scored} in {directory}")


def check_fits(variables: Dict[str, Any], cfg, where: str) -> None:
    """A ``ConfigError`` if ``variables`` lack an entry of ``cfg``'s model or hold one of another shape."""
    expected = traverse_util.flatten_dict(models.init_shapes(models.build(cfg), cfg), sep="/")
    got = traverse_util.flatten_dict(variables, sep="/")
    for path, leaf in expected.items():
        if path not in got:
            raise ConfigError(f"{where}: has no {path} for --config={cfg.name}; the weights are of another model")
        if tuple(np.shape(got[path])) != tuple(leaf.shape):
            raise ConfigError(f"{where}: {path} has shape {tuple(np.shape(got[path]))}, --config={cfg.name} needs "
                              f"{tuple(leaf.shape)} (another model size or number of classes?)")


def load(cfg, *, workdir: Optional[str] = None, checkpoint: Optional[str] = None,
         weights: Optional[str] = None) -> Loaded:
    """The variables of exactly one of ``workdir`` / ``checkpoint`` / ``weights`` (module docstring)."""
    given = [(f, v) for f, v in (("--workdir", workdir), ("--checkpoint", checkpoint), ("--weights", weights)) if v]
    if len(given) != 1:
        raise UserError("give exactly one of --workdir, --checkpoint, --weights"
                        + (f" (got {', '.join(f for f, _ in given)})" if given else ""))
    flag, path = given[0][0], given[0][1]
    if not os.path.exists(path):
        raise MissingDataError(f"{flag}={path}: no such file or folder")
    if workdir:
        loaded = _from_checkpoints(os.path.join(workdir, "checkpoints"), f"{flag}={workdir}", best="AP")
    elif checkpoint:
        loaded = _from_checkpoints(checkpoint, f"{flag}={checkpoint}", best=None)
    else:
        if int(cfg.num_classes) == FROM_DATA:
            raise ConfigError(f"--weights={weights}: --config={cfg.name} takes its number of classes from the "
                              f"data; set --config.num_classes for a .pth")
        try:
            state_dict = convert.load_pth(weights)
            variables = convert.from_torch_state_dict(state_dict, cfg)
        except (ValueError, KeyError) as e:
            raise ConfigError(f"--weights={weights}: {e}") from None
        loaded = Loaded(variables, None, f"converted {weights}")
    if int(cfg.num_classes) == FROM_DATA:
        if loaded.classes is None:
            raise ConfigError(f"{flag}={path}: stores no classes and --config={cfg.name} takes its number of "
                              f"classes from the data; set --config.num_classes")
        adopt_num_classes(cfg.data, None, stored=loaded.classes, stored_in=path)
    check_fits(loaded.variables, cfg, f"{flag}={path}")
    loaded.variables = jax.tree_util.tree_map(np.asarray, loaded.variables)
    return loaded


def pth_to_checkpoint(cfg, pth: str, out: str) -> str:
    """Write ``pth``'s weights as a checkpoint into ``out``; returns a sentence saying what was written."""
    from deim_jax.ops.coco_categories import MSCOCO_CATEGORY_IDS, MSCOCO_NAMES

    loaded = load(cfg, weights=pth)
    classes = None
    if cfg.remap_mscoco_category and int(cfg.num_classes) == len(MSCOCO_CATEGORY_IDS):
        classes = Classes(dict(enumerate(MSCOCO_NAMES)), dict(enumerate(MSCOCO_CATEGORY_IDS))).to_json()
    checkpoints.save_weights(out, loaded.variables, classes=classes, config=cfg)
    return f"{pth} -> {out} (EMA weights{', COCO classes' if classes else ''})"


def checkpoint_to_pth(cfg, out: str, checkpoint=None, workdir=None) -> str:
    """Write the EMA weights of ``checkpoint``/``workdir`` as an official state dict into ``out``."""
    import torch

    loaded = load(cfg, checkpoint=checkpoint, workdir=workdir)
    state_dict = {k: torch.from_numpy(v.copy()) for k, v in convert.to_torch_state_dict(loaded.variables, cfg).items()}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    torch.save({"model": state_dict}, out)
    return f"{loaded.source} -> {out} ({len(state_dict)} entries)"
