"""Training checkpoints on top of ``orbax.checkpoint.CheckpointManager``.

One checkpoint (directory ``<root>/<step>``) holds three items:

* ``state``: ``{'train': <train-state pytree>, 'data': <data-pipeline position pytree>}`` — the train
  state is whatever pytree the trainer passes (params, batch_stats, EMA params/batch stats,
  opt_state, step, rng ...; a ``TrainState`` dataclass works), arrays saved with their values
  bit-exactly;
* ``config``: the experiment config as JSON;
* ``meta``: JSON ``{'step', 'metrics'}``.

Retention: the last ``max_to_keep`` checkpoints plus the best one by ``best_metric`` (``'AP'``,
higher is better by default); checkpoints saved without that metric only count as "latest".

Atomicity: orbax writes every checkpoint into a temporary directory and renames it into place once
complete (after all items are written), so a save killed mid-way leaves at most a
``<step>.orbax-checkpoint-tmp*`` directory that ``latest_step`` ignores and that the first ``save`` of
the next manager removes (``_remove_partial_saves``; a manager that only reads never deletes);
the previous checkpoint stays intact.

Restoring on another device count / mesh: pass ``target`` (a pytree like the saved one, of arrays
or ``jax.ShapeDtypeStruct`` with a ``sharding``); each array is read straight into the target's
sharding. Without a target arrays come back as host numpy arrays in plain nested dicts/lists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Dict, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm



def config_to_json(config: Any) -> Any:
    """A JSON-compatible copy of a config (ConfigDict, dataclass-free dicts, tuples -> lists)."""
    if config is None:
        return {}
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def abstract_like(tree: Any, sharding: Optional[Any] = None) -> Any:
    """``jax.ShapeDtypeStruct`` tree for ``restore(target=...)``; ``sharding`` (one sharding or a
    function ``leaf -> sharding``) places every array, else the leaf's own sharding is kept."""

    def one(x):
        x = x if hasattr(x, "dtype") else np.asarray(x)
        if sharding is None:
            s = getattr(x, "sharding", None)
        elif callable(sharding) and not isinstance(sharding, jax.sharding.Sharding):
            s = sharding(x)
        else:
            s = sharding
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

    return jax.tree_util.tree_map(one, tree)


class CheckpointManager:
    """Keep-last-N-plus-best checkpoints of a training run.

    ``save(step, train_state, data_state=None, config=None, metrics=None)``;
    ``restore(step=None, target=None) -> {'train', 'data', 'config', 'metrics', 'step'}``
    (``target`` = the abstract *train* state, optionally ``target_data`` for the data position);
    ``restore_best``; ``latest_step``; ``best_step``; ``all_steps``.
    """

    def __init__(self, directory: str, max_to_keep: int = 3, best_metric: Optional[str] = "AP",
                 best_mode: str = "max", async_save: bool = False):
        self.directory = os.path.abspath(directory)
        self.best_metric = best_metric
        self.best_mode = best_mode
        self._cleaned = False
        policies = [ocm.LatestN(n=max_to_keep)]
        if best_metric is not None:
            policies.append(ocm.BestN(get_metric_fn=self._metric_value, reverse=(best_mode == "min"), n=1,
                                      keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=False,  # done by the first save(): a reader must not touch a live run
            enable_async_checkpointing=async_save,
            create=True,
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler()}
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def _metric_value(self, metrics) -> float:
        return float(metrics[self.best_metric])

    # ---- queries -------------------------------------------------------------------------------
    def all_steps(self):
        return sorted(self._mngr.all_steps())

    def latest_step(self) -> Optional[int]:
        return self._mngr.latest_step()

    def best_step(self) -> Optional[int]:
        """Step with the best ``best_metric`` among kept checkpoints (None if none has it)."""
        best, best_v = None, None
        for s in self.all_steps():
            m = self._read_meta(s).get("metrics") or {}
            if self.best_metric not in m:
                continue
            v = float(m[self.best_metric])
            better = best_v is None or (v > best_v if self.best_mode == "max" else v < best_v)
            if better:
                best, best_v = s, v
        return best

    def _read_meta(self, step: int) -> Dict[str, Any]:
        out = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    # ---- save / restore ------------------------------------------------------------------------
    def save(self, step: int, train_state: Any, data_state: Any = None, config: Any = None,
             metrics: Optional[Dict[str, float]] = None, force: bool = False) -> bool:
        """Save a checkpoint for ``step`` (an int). ``metrics`` (e.g. ``{'AP': 0.41}``) drive best-retention."""
        step = int(step)
        if not self._cleaned:
            _remove_partial_saves(self.directory)
            self._cleaned = True
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        state = {"train": train_state, "data": data_state if data_state is not None else {}}
        saved = self._mngr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                config=ocp.args.JsonSave(config_to_json(config)),
                meta=ocp.args.JsonSave({"step": step, "metrics": metrics}),
            ),
            metrics=metrics if metrics else None,
            force=force,
        )
        return saved

    def wait_until_finished(self):
        self._mngr.wait_until_finished()

    def restore(self, step: Optional[int] = None, target: Any = None, target_data: Any = None) -> Dict[str, Any]:
        """Restore ``step`` (default: latest). ``target``: abstract train state (shapes, dtypes, shardings)."""
        self._mngr.wait_until_finished()
        if step is None:
            step = self.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if target is not None:
            abstract = {"train": abstract_like(target)}
            if target_data is not None:
                abstract["data"] = abstract_like(target_data)
            else:
                meta = self._mngr.item_metadata(step)["state"]
                abstract["data"] = _abstract_from_metadata(meta["data"]) if meta is not None else {}
            state_args = ocp.args.StandardRestore(abstract)
        else:  # host numpy arrays: works whatever device count / sharding the checkpoint was saved with
            meta = self._mngr.item_metadata(step)["state"]
            state_args = ocp.args.StandardRestore(_abstract_from_metadata(meta.tree if hasattr(meta, "tree") else meta))
        out = self._mngr.restore(
            step,
            args=ocp.args.Composite(state=state_args, config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()),
        )
        meta = dict(out["meta"])
        return {
            "train": out["state"]["train"],
            "data": out["state"].get("data", {}),
            "config": out["config"],
            "metrics": meta.get("metrics", {}),
            "step": int(meta.get("step", step)),
        }

    def restore_best(self, target: Any = None, target_data: Any = None) -> Dict[str, Any]:
        step = self.best_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint with metric {self.best_metric!r} in {self.directory}")
        return self.restore(step, target, target_data)

    def close(self):
        self._mngr.wait_until_finished()
        self._mngr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_TMP = re.compile(r"^\d+\.orbax-checkpoint-tmp")


def _remove_partial_saves(directory: str) -> None:
    """Delete ``<step>.orbax-checkpoint-tmp*`` leftovers of saves that never finished (primary process only)."""
    if jax.process_index() != 0 or not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if _TMP.match(name):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def _abstract_from_metadata(meta: Any) -> Any:
    """Abstract (numpy, host) target for a saved subtree from its orbax metadata."""

    def one(m):
        shape = getattr(m, "shape", None)
        dtype = getattr(m, "dtype", None)
        if shape is None or dtype is None:
            return m
        return np.zeros(shape, dtype)

    return jax.tree_util.tree_map(one, meta)
