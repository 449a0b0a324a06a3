"""Training and evaluation: ``train_and_evaluate(config, workdir)`` and ``evaluate_checkpoint``.

One process per host; each feeds its slice of the global batch; the state is
replicated over a one-axis mesh (``deim_jax.train.sharding``). Per epoch: train,
save a checkpoint (params, batch stats, EMA, optimizer state, step, data
position, config, class names), evaluate the EMA weights with COCO AP every
``eval_every_epochs`` epochs and at the end (one JSON line appended to
``WORKDIR/eval.jsonl``), keep the last N checkpoints plus the best by AP and
the best of stage 1. With ``stage2_reload`` (the official trainer's stage 2,
``deim_jax.train.stage2``) the last stage-1 epoch and every stage-2 epoch are
evaluated too; the best stage-1 checkpoint is reloaded at ``data.stop_epoch``
(end of augmentation) and after every stage-2 epoch that does not improve.
Every change of the epoch policy and every reload is logged. A run in a workdir
that has checkpoints resumes from the latest readable one, bit-exactly (same batches;
``eval.jsonl`` rows of steps after it, from a run killed before its next save, are dropped), so
a run killed at any moment (SIGKILL) and restarted with the same command ends identical to an
uninterrupted one. SIGTERM/SIGINT save a checkpoint at the next step and exit cleanly; with
several processes the stop is agreed by all of them (``preemption.StopRequest``), and a process
that fails ends at once instead of hanging (``sharding.fail_fast_across_processes``).

Everything is reported through ``logging`` (logger ``deim_jax.train.loop``); the CLI decides
what the user sees.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import optax

from deim_jax import data as data_lib
from deim_jax.data import census
from deim_jax.data.epoch_policy import changes_at
from deim_jax.data.classes import Classes, adopt_num_classes
from deim_jax.evaluate import evaluator
from deim_jax.train import checkpoints, optimizer, schedule, sharding
from deim_jax.train.init_from import initial_variables
from deim_jax.train.preemption import StopRequest
from deim_jax.train.progress import Progress
from deim_jax.train.setup import Setup, init_state, setup
from deim_jax.train.stage2 import Stage2Rule
from deim_jax.train.train_step import TrainState

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    pass


def _summary_writer(workdir):
    if jax.process_index() != 0:
        return None
    try:
        from clu import metric_writers

        return metric_writers.create_default_writer(os.path.join(workdir, "tensorboard"), asynchronous=False)
    except Exception as e:  # pragma: no cover - TensorBoard is optional at run time
        log.warning("no TensorBoard writer (%s)", e)
        return None


def _initial_state(cfg, s: Setup, mngr: checkpoints.CheckpointManager, classes: Optional[Classes] = None):
    """(state, data position or None, stage-2 rule): the latest checkpoint of the run, else
    ``init_from`` / random."""
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
    variables = initial_variables(cfg, s.model, init_rng, classes)
    report = optimizer.param_group_report(variables["params"], cfg, s.frozen)
    log.info("parameter groups:\n%s", optimizer.format_param_group_report(report))
    state = init_state(s, variables, state_rng)
    if not mngr.all_steps():
        return state, None, Stage2Rule()
    restored = mngr.restore(target=state)  # the newest readable one; CheckpointError if none is
    log.info("resumed from checkpoint step %d in %s", restored["step"], mngr.directory)
    return restored["train"], restored["data"] or None, Stage2Rule.from_json((restored["loop"] or {}).get("stage2"))


STAGE1_AP = "stage1_AP"  # metric of stage-1 evaluations: the manager keeps the best of them


def _reload_best_stage1(mngr, state: TrainState, why: str) -> Tuple[TrainState, Optional[float]]:
    """(state, its AP): the best stage-1 weights, batch statistics, EMA and optimizer moments, as
    the official trainer reloads them; the lr schedule position (the optimizer's schedule counts),
    the step, the data position and the rng stay where the run is (the official schedule follows
    the global iteration). The EMA decay follows the global step too (the official one restores its
    update count; both are at the decay's plateau by then). Unchanged state if no stage-1
    checkpoint was evaluated."""
    try:
        restored = mngr.restore_best(target=state, metric=STAGE1_AP)
    except FileNotFoundError:
        log.warning("%s: no evaluated stage-1 checkpoint to reload; training goes on from the current weights", why)
        return state, None
    best, ap = restored["train"], restored["metrics"][STAGE1_AP]
    log.info("%s: reloaded the best stage-1 checkpoint (step %d, AP %.4f): weights, EMA, optimizer moments",
             why, restored["step"], ap)
    return state.replace(params=best.params, batch_stats=best.batch_stats, ema_params=best.ema_params,
                         ema_batch_stats=best.ema_batch_stats,
                         opt_state=_keep_schedule_counts(best.opt_state, state.opt_state)), ap


def _keep_schedule_counts(restored_opt_state, current_opt_state):
    """``restored_opt_state`` with the lr-schedule counts of ``current_opt_state``."""
    def pick(restored, current):
        return current if isinstance(restored, optax.ScaleByScheduleState) else restored

    return jax.tree_util.tree_map(pick, restored_opt_state, current_opt_state,
                                  is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))


def _check_finite(cfg, metrics, step: int, mngr) -> None:
    if bool(metrics["finite"]):
        return
    msg = (f"non-finite loss or gradient at step {step} (loss {float(metrics['loss'])}, grad norm "
           f"{float(metrics['grad_norm'])}); last good checkpoint: step {mngr.latest_step()} in {mngr.directory}")
    if not cfg.skip_nonfinite_steps:
        raise NonFiniteLoss(msg)
    log.warning("%s: the update was skipped", msg)


def _report(progress: Progress, writer, cfg, steps_per_epoch: int, step: int, metrics, dropped: int) -> None:
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    lr = float(schedule.lr_used_at_step(step - 1, cfg.optimizer.lr, cfg.schedule, steps_per_epoch, int(cfg.epochs)))
    if jax.process_index() != 0:
        return
    log.info("%s%s", progress.line(step, metrics, lr), f" dropped boxes {dropped}" if dropped else "")
    if writer is not None:
        writer.write_scalars(step, {**{f"train/{k}": v for k, v in metrics.items()}, "train/lr": lr,
                                    "train/images_per_s": progress.steps_per_sec * cfg.batch_size})


def _evaluate_ema(cfg, s: Setup, state, records, classes, workdir, step, writer) -> Dict[str, Any]:
    log.info("evaluating the EMA weights after epoch %d on %d images", step // s.steps_per_epoch, len(records))
    picture = []
    metrics = evaluator.evaluate(cfg, lambda im: s.predict_step(state.variables(use_ema=True), im), s.mesh,
                                 records, picture, classes)
    evaluator.record_eval(workdir, step, step // s.steps_per_epoch, metrics, writer)
    if writer is not None and picture:
        writer.write_images(step, {"eval/predictions": picture[0][None]})
    return metrics


def _write_config(cfg, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=1))


def load_records(cfg):
    """(train, val) records of a training run. ``config.num_classes=0`` and ``config.data.max_boxes=0``
    are set from the train set here (before the model is built); images with more boxes than ``max_boxes`` (train) or
    ``num_queries`` are logged as warnings."""
    train = data_lib.load_split(cfg.data, "train")
    adopt_num_classes(cfg.data, train)
    census.adopt_max_boxes(cfg.data, train, int(cfg.model.decoder.num_queries))
    val = data_lib.load_split(cfg.data, "val")
    for line in census.startup_warnings(train, val, int(cfg.data.max_boxes), int(cfg.model.decoder.num_queries)):
        log.warning("%s", line)
    return train, val


def train_and_evaluate(cfg, workdir: str, stop_at_step: int = 0) -> Dict[str, Any]:
    """Train ``cfg`` in ``workdir`` (resuming if it has checkpoints); returns the last eval metrics.

    ``stop_at_step`` > 0: save a checkpoint and return once that step is reached (a run can then be
    resumed by calling again, e.g. in time-limited jobs). ``cfg.num_classes=0`` is replaced by the
    train set's number of classes (``load_records``).
    """
    sharding.maybe_initialize_distributed()
    with sharding.fail_fast_across_processes():
        schedule.warn_on_phases_past_the_end(cfg)
        mesh = sharding.make_mesh()
        sharding.check_batch_size(cfg.batch_size, mesh)
        train_records, val_records = load_records(cfg)
        _write_config(cfg, workdir)
        classes = Classes.of_records(train_records)
        steps_per_epoch = data_lib.steps_per_epoch(cfg.data, train_records)
        s = setup(cfg, mesh, steps_per_epoch)
        mngr = checkpoints.CheckpointManager(os.path.join(workdir, "checkpoints"), max_to_keep=cfg.keep_checkpoints,
                                             classes=classes.to_json(), ocdbt=cfg.checkpoint_ocdbt,
                                             keep_best_of=(STAGE1_AP,))
        state, data_state, rule = _initial_state(cfg, s, mngr, classes)
        evaluator.forget_evals_after(workdir, int(state.step))
        train_iter = data_lib.build_train_iterator(
            cfg.data, seed=cfg.seed, start_step=int(state.step), state=data_state,
            process_index=jax.process_index(), process_count=jax.process_count(), records=train_records)
        writer = _summary_writer(workdir)
        try:
            return _train(cfg, s, state, rule, train_iter, val_records, classes, mngr, workdir, writer, stop_at_step)
        finally:
            mngr.close()
            if writer is not None:
                writer.flush()


def _stage2_epoch(cfg) -> Optional[int]:
    """``data.stop_epoch`` when the official stage 2 runs (``stage2_reload``), else None."""
    stop = int(cfg.data.stop_epoch)
    return stop if cfg.stage2_reload and 0 < stop < int(cfg.epochs) else None


def _evaluates_after(cfg, epochs_done: int, stage2: Optional[int]) -> bool:
    """Whether the EMA weights are evaluated after ``epochs_done`` epochs: every ``eval_every_epochs``,
    the last epoch, and with stage 2 the last stage-1 epoch and every stage-2 epoch (the rule needs
    their AP)."""
    return (epochs_done % cfg.eval_every_epochs == 0 or epochs_done == int(cfg.epochs)
            or (stage2 is not None and epochs_done >= stage2))


def _start_epoch(cfg, mngr, state, rule: Stage2Rule, epoch: int, stage2: Optional[int], first: bool):
    """Log the epoch policy's changes; apply the stage-2 reloads due at the start of ``epoch``."""
    changes = changes_at(cfg.data, epoch, first)
    if changes:
        when = "" if not first else " (resumed)" if int(state.step) > 0 else " (start of the run)"
        log.info("epoch %d%s: %s", epoch, when, "; ".join(changes))
    if stage2 is None or epoch < stage2:
        return state
    if epoch == stage2 and not rule.started:
        state, ap = _reload_best_stage1(mngr, state, f"stage 2 starts at epoch {epoch} (no augmentation)")
        rule.start(ap)
        log.info("stage 2: EMA decay unchanged (the official ema_restart_decay is a no-op); the lr schedule "
                 "goes on from step %d", int(state.step))
    elif rule.reload_pending:
        state, _ = _reload_best_stage1(mngr, state, f"epoch {epoch}, stage 2: the last evaluation did not improve")
        rule.reload_pending = False
    return state


def _train(cfg, s: Setup, state, rule: Stage2Rule, train_iter, val_records, classes, mngr, workdir, writer,
           stop_at_step) -> Dict[str, Any]:
    """The epochs from ``state.step`` on: steps, per-epoch checkpoints and evaluations, stage 2."""
    steps_per_epoch = s.steps_per_epoch
    total_steps = int(cfg.epochs) * steps_per_epoch
    progress = Progress(total_steps, int(cfg.log_every_steps), cfg.batch_size, writer,
                        on_steps=range(steps_per_epoch, total_steps + 1, steps_per_epoch))
    stage2 = _stage2_epoch(cfg)
    last_metrics: Dict[str, Any] = {}
    step = first_step = int(state.step)
    with StopRequest() as stop:
        while step < total_steps:
            if step % steps_per_epoch == 0 or step == first_step:
                with progress.paused():
                    state = _start_epoch(cfg, mngr, state, rule, step // steps_per_epoch, stage2,
                                         first=step == first_step)
            local = next(train_iter)
            dropped = int(local["num_dropped_boxes"].sum()) if "num_dropped_boxes" in local else 0
            batch = sharding.global_batch({k: local[k] for k in ("image", "boxes", "labels", "mask")}, s.mesh)
            started = time.perf_counter()
            state, metrics = s.train_step(state, batch)
            step += 1
            _check_finite(cfg, metrics, step, mngr)  # waits for the step: the progress clock excludes compilation
            if step == first_step + 1:
                log.info("first train step: %.1f s, compilation included (persistent cache: %s)",
                         time.perf_counter() - started, jax.config.jax_compilation_cache_dir or "off")
            if progress(step):
                _report(progress, writer, cfg, steps_per_epoch, step, metrics, dropped)
            end_of_epoch = step % steps_per_epoch == 0
            stopping = stop.should_stop(step) or step == stop_at_step
            if not (end_of_epoch or stopping or step == total_steps):
                continue
            with progress.paused():
                saved_metrics = None
                epochs_done = step // steps_per_epoch
                if end_of_epoch and _evaluates_after(cfg, epochs_done, stage2):
                    last_metrics = _evaluate_ema(cfg, s, state, val_records, classes, workdir, step, writer)
                    ap = float(last_metrics["AP"])
                    saved_metrics = {"AP": ap}
                    if stage2 is None or epochs_done <= stage2:
                        saved_metrics[STAGE1_AP] = ap
                    elif rule.after_eval(ap) and step < total_steps:
                        log.info("stage 2: AP %.4f after epoch %d does not improve; the best stage-1 checkpoint "
                                 "is reloaded before the next epoch", ap, epochs_done)
                mngr.save(step, state, train_iter.get_state(), cfg, force=True, metrics=saved_metrics,
                          loop={"stage2": rule.to_json()})
            if stopping:
                mngr.wait_until_finished()
                log.info("stopped at step %d; checkpoint saved in %s", step, mngr.directory)
                break
    best = mngr.best_step() if step == total_steps else None
    if best is not None:
        log.info("best AP %.4f: checkpoint step %d in %s", mngr.metrics(best)["AP"], best, mngr.directory)
    return last_metrics


def evaluate_checkpoint(cfg, workdir: str, use_ema: bool = True) -> Dict[str, Any]:
    """``--mode=eval``: COCO AP of the latest checkpoint of ``workdir`` (or of ``config.init_from``).

    The checkpoint's stored classes map the model's labels to category ids and give
    ``cfg.num_classes=0`` its value (the val set's own table for checkpoints saved without them)."""
    mesh = sharding.make_mesh()
    val_records = data_lib.load_split(cfg.data, "val")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    found = checkpoints.latest_weights(ckpt_dir, use_ema)
    classes = Classes.from_json(found["classes"]) if found is not None else None
    adopt_num_classes(cfg.data, val_records, classes, ckpt_dir)
    s = setup(cfg, mesh)
    if found is not None:
        variables, step = found["variables"], found["step"]
        epoch = int(np.asarray((found["data"] or {}).get("epoch", 0)))
        log.info("evaluating the %sweights of checkpoint step %d in %s", "EMA " if use_ema else "", step, ckpt_dir)
    elif cfg.init_from:
        variables, step, epoch = initial_variables(cfg, s.model, jax.random.PRNGKey(0)), 0, 0
    else:
        raise FileNotFoundError(f"nothing to evaluate: no checkpoint in {ckpt_dir} and no --config.init_from")
    variables = sharding.replicate(variables, mesh)
    metrics = evaluator.evaluate(cfg, lambda im: s.predict_step(variables, im), mesh, val_records, classes=classes)
    os.makedirs(workdir, exist_ok=True)
    evaluator.record_eval(workdir, step, epoch, metrics)
    return metrics
