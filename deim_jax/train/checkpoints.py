"""Training checkpoints on top of ``orbax.checkpoint.CheckpointManager``.

One checkpoint (directory ``<root>/<step>``) holds three items:

* ``state``: ``{'train': <train-state pytree>, 'data': <data-pipeline position pytree>}`` — the train
  state is whatever pytree the trainer passes (params, batch_stats, EMA params/batch stats,
  opt_state, step, rng ...; a ``TrainState`` dataclass works), arrays saved with their values
  bit-exactly;
* ``config``: the experiment config as JSON;
* ``meta``: JSON ``{'step', 'metrics', 'classes', 'loop'}``; ``classes`` is what the manager was
  given (the run's class names and category ids, ``deim_jax.data.classes.Classes.to_json``), absent
  in checkpoints saved before it was stored (restored as None); ``loop`` is the trainer's own JSON
  state passed to ``save`` (the stage-2 rule's), None when absent.

Retention: the last ``max_to_keep`` checkpoints plus the best one by ``best_metric`` (``'AP'``,
higher is better by default) and the best one by each metric of ``keep_best_of`` (e.g. the best
stage-1 AP, which stage 2 reloads); checkpoints saved without a metric do not count for it.

Atomicity: orbax writes every checkpoint into a temporary directory and renames it into place once
complete (after all items are written), so a save killed mid-way leaves at most a
``<step>.orbax-checkpoint-tmp*`` directory that ``latest_step`` ignores and that the first ``save`` of
the next manager removes (``_remove_partial_saves``; a manager that only reads never deletes);
the previous checkpoint stays intact.

Faults: ``restore()`` of the latest checkpoint falls back to the newest *readable* one when the
latest cannot be read (a truncated or deleted file inside it), with a warning naming the bad
step; the next ``save`` moves the bad ones aside as ``<step>.unreadable`` (kept for inspection,
ignored by orbax). When no checkpoint is readable, ``CheckpointError`` says so: a run never
starts afresh over checkpoints it could not read. A failed save (disk full, permission denied)
raises ``CheckpointError`` naming the step, the folder and the cause; the previous checkpoints are
untouched (the partial save is only a temporary directory).

Restoring on another device count / mesh: pass ``target`` (a pytree like the saved one, of arrays
or ``jax.ShapeDtypeStruct`` with a ``sharding``); each array is read straight into the target's
sharding. Without a target arrays come back as host numpy arrays in plain nested dicts/lists.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import shutil
from typing import Any, Dict, Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

log = logging.getLogger(__name__)


class _WithoutRoutineNotices(logging.Filter):
    """orbax warns at every save without OCDBT that it found no OCDBT files to merge, and at every
    save without metrics (mid-epoch stops, epochs not evaluated) that it tracks metrics."""

    _NOTICES = ("Skipping merge of OCDBT checkpoints", "Requested `tracked_metric`; did not provide metrics")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in self._NOTICES)


logging.getLogger("absl").addFilter(_WithoutRoutineNotices())


class CheckpointError(RuntimeError):
    """A checkpoint could not be saved, or no checkpoint of a run could be read."""


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

    ``save(step, train_state, data_state=None, config=None, metrics=None, loop=None)``;
    ``restore(step=None, target=None) -> {'train', 'data', 'config', 'metrics', 'step', 'classes', 'loop'}``
    (``target`` = the abstract *train* state, optionally ``target_data`` for the data position);
    ``restore_best(metric=None)``; ``latest_step``; ``best_step(metric=None)``; ``all_steps``.
    ``classes`` (JSON) is written into the meta of every save.
    """

    def __init__(self, directory: str, max_to_keep: int = 3, best_metric: Optional[str] = "AP",
                 best_mode: str = "max", async_save: bool = False, classes: Optional[Dict[str, Any]] = None,
                 ocdbt: bool = False, keep_best_of: Sequence[str] = ()):
        self.directory = os.path.abspath(directory)
        self.classes = classes
        self.best_metric = best_metric
        self.best_mode = best_mode
        self._cleaned = False
        self._unreadable: Dict[int, str] = {}  # step -> why it could not be read
        policies = [ocm.LatestN(n=max_to_keep)]
        for name in ([best_metric] if best_metric is not None else []) + list(keep_best_of):
            policies.append(ocm.BestN(get_metric_fn=functools.partial(self._metric_value, name), n=1,
                                      keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            # with a best_fn orbax writes each save's metrics into the step folder, so a manager
            # opened on a resumed run ranks the earlier checkpoints too (without one it forgets them
            # and the next save deletes the best ones); the ranking itself is the policies' above
            best_fn=lambda metrics: 0.0,
            cleanup_tmp_directories=False,  # done by the first save(): a reader must not touch a live run
            enable_async_checkpointing=async_save,
            create=True,
        )
        # ocdbt=False (one zarr folder per array): orbax's OCDBT path keeps ~0.2 MiB of host memory
        # per save of 600 arrays that the plain zarr path does not (benchmarks/checkpoint_save_growth.py);
        # either format restores, whichever wrote it.
        handlers = {"state": ocp.StandardCheckpointHandler(use_ocdbt=ocdbt), "config": ocp.JsonCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler()}
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def _metric_value(self, name: str, metrics) -> float:
        """Rank for retention, higher is better; a checkpoint without the metric ranks last."""
        if name not in metrics:
            return -math.inf
        return float(metrics[name]) * (-1.0 if self.best_mode == "min" else 1.0)

    # ---- queries -------------------------------------------------------------------------------
    def all_steps(self):
        """Saved steps, ascending, without those found unreadable."""
        return sorted(s for s in self._mngr.all_steps() if s not in self._unreadable)

    def latest_step(self) -> Optional[int]:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self, metric: Optional[str] = None) -> Optional[int]:
        """Step with the best ``metric`` (default ``best_metric``) among kept checkpoints (None if none
        has it); the earliest of equal ones."""
        metric = metric or self.best_metric
        best, best_v = None, None
        for s in self.all_steps():
            try:
                m = self.metrics(s)
            except Exception as e:  # an unreadable checkpoint is never the best one
                self._mark_unreadable(s, e)
                continue
            if metric not in m:
                continue
            v = float(m[metric])
            better = best_v is None or (v > best_v if self.best_mode == "max" else v < best_v)
            if better:
                best, best_v = s, v
        return best

    def metrics(self, step: int) -> Dict[str, float]:
        """The metrics saved with checkpoint ``step``."""
        return self._read_meta(step).get("metrics") or {}

    def _read_meta(self, step: int) -> Dict[str, Any]:
        out = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    # ---- save / restore ------------------------------------------------------------------------
    def save(self, step: int, train_state: Any, data_state: Any = None, config: Any = None,
             metrics: Optional[Dict[str, float]] = None, force: bool = False,
             loop: Optional[Dict[str, Any]] = None) -> bool:
        """Save a checkpoint for ``step`` (an int). ``metrics`` (e.g. ``{'AP': 0.41}``) drive best-retention;
        ``loop``: JSON-able trainer state, returned by ``restore``."""
        step = int(step)
        if not self._cleaned:
            _remove_partial_saves(self.directory)
            self._cleaned = True
        if self._unreadable:
            self._set_aside_unreadable()
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        state = {"train": train_state, "data": data_state if data_state is not None else {}}
        try:
            return self._mngr.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    config=ocp.args.JsonSave(config_to_json(config)),
                    meta=ocp.args.JsonSave({"step": step, "metrics": metrics,
                                            **({"classes": self.classes} if self.classes else {}),
                                            **({"loop": loop} if loop else {})}),
                ),
                metrics=metrics if metrics else None,
                force=force,
            )
        except OSError as e:
            previous = self.latest_step()
            kept = f"the previous checkpoint (step {previous}) is intact" if previous is not None else "no earlier checkpoint"
            raise CheckpointError(f"saving checkpoint step {step} into {self.directory} failed: {e}; {kept}") from e

    def wait_until_finished(self):
        self._mngr.wait_until_finished()

    def restore(self, step: Optional[int] = None, target: Any = None, target_data: Any = None) -> Dict[str, Any]:
        """Restore ``step``, or (default) the newest readable checkpoint, warning about newer unreadable
        ones. ``target``: abstract train state (shapes, dtypes, shardings)."""
        self._mngr.wait_until_finished()
        if step is not None:
            return self._restore_step(step, target, target_data)
        if not self.all_steps():
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        return self._restore_first_readable(self.all_steps()[::-1], target, target_data)

    def _restore_first_readable(self, steps, target, target_data) -> Dict[str, Any]:
        for s in steps:
            try:
                return self._restore_step(s, target, target_data)
            except Exception as e:  # orbax/tensorstore raise many kinds for a damaged checkpoint
                self._mark_unreadable(s, e)
        bad = "; ".join(f"step {s}: {why}" for s, why in sorted(self._unreadable.items()))
        raise CheckpointError(f"no readable checkpoint in {self.directory} ({bad}); move the folder away "
                              "to start afresh, or fix it")

    def _mark_unreadable(self, step: int, error: Exception) -> None:
        why = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        self._unreadable[step] = why
        log.warning("checkpoint step %d in %s is unreadable (%s); using an earlier one", step, self.directory, why)

    def _set_aside_unreadable(self) -> None:
        """Rename unreadable checkpoints to ``<step>.unreadable`` (primary process), so the run can
        save those steps again; orbax no longer lists them."""
        if jax.process_index() == 0:
            for step in self._unreadable:
                src = os.path.join(self.directory, str(step))
                if os.path.isdir(src):
                    os.replace(src, f"{src}.unreadable")
                    log.warning("moved the unreadable checkpoint %s aside to %s.unreadable", src, src)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("deim_jax: unreadable checkpoints set aside")
        self._unreadable.clear()
        self._mngr.reload()

    def _restore_step(self, step: int, target: Any, target_data: Any) -> Dict[str, Any]:
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
            "classes": meta.get("classes"),
            "loop": meta.get("loop"),
        }

    def restore_best(self, target: Any = None, target_data: Any = None, metric: Optional[str] = None) -> Dict[str, Any]:
        """Restore the best checkpoint by ``metric`` (default ``best_metric``; the next best if it is unreadable)."""
        while (step := self.best_step(metric)) is not None:
            try:
                return self._restore_step(step, target, target_data)
            except Exception as e:
                self._mark_unreadable(step, e)
        raise FileNotFoundError(f"no readable checkpoint with metric {metric or self.best_metric!r} in {self.directory}")

    def close(self):
        self._mngr.wait_until_finished()
        self._mngr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def latest_weights(directory: str, use_ema: bool = True, best: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """``{'variables': {'params', 'batch_stats'}, 'step', 'data', 'classes', 'metrics'}`` of the newest
    readable checkpoint in ``directory`` (host arrays; the EMA weights unless ``use_ema=False``), or
    with ``best='AP'`` of the one with the highest AP (the newest if none was evaluated); None if
    the folder has no checkpoint."""
    if not os.path.isdir(directory):
        return None
    with CheckpointManager(directory, best_metric=None) as mngr:
        if not mngr.all_steps():
            return None
        step = mngr.best_step(best) if best else None
        restored = mngr.restore(step)
    prefix = "ema_" if use_ema else ""
    train = restored["train"]
    return {"variables": {"params": train[prefix + "params"], "batch_stats": train[prefix + "batch_stats"]},
            "step": restored["step"], "data": restored["data"], "classes": restored["classes"],
            "metrics": restored["metrics"]}


def save_weights(directory: str, variables: Dict[str, Any], classes: Optional[Dict[str, Any]] = None,
                 config: Any = None, step: int = 0) -> None:
    """A checkpoint holding only inference weights (``variables`` as the EMA weights) that
    ``latest_weights``, ``--checkpoint`` and ``config.init_from`` read like a training checkpoint."""
    train = {"ema_params": variables["params"], "ema_batch_stats": variables.get("batch_stats", {})}
    with CheckpointManager(directory, best_metric=None, classes=classes) as mngr:
        mngr.save(step, train, config=config, force=True)
        mngr.wait_until_finished()


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
