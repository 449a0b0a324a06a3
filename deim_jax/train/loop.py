"""Training and evaluation: ``train_and_evaluate(config, workdir)`` and ``evaluate_checkpoint``.

One process per host; each feeds its slice of the global batch; the state is
replicated over a one-axis mesh (``deim_jax.train.sharding``). Per epoch: train,
save a checkpoint (params, batch stats, EMA, optimizer state, step, data
position, config), evaluate the EMA weights with COCO AP every
``eval_every_epochs`` epochs and at the end (one JSON line appended to
``WORKDIR/eval.jsonl``), keep the last N checkpoints plus the best by AP.
At ``data.stop_epoch`` (end of augmentation) the best stage-1 checkpoint is
reloaded (``stage2_reload``), as the official trainer does. A run in a workdir
that has checkpoints resumes from the latest one, bit-exactly (same batches).
SIGTERM/SIGINT save a checkpoint at the next step and exit cleanly.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from deim_jax import convert, losses, models
from deim_jax import data as data_lib
from deim_jax.evaluate import postprocess as pp
from deim_jax.evaluate.coco_eval import CocoEvaluator, format_per_class
from deim_jax.evaluate.visualize import predictions_grid
from deim_jax.train import checkpoints, optimizer, sharding
from deim_jax.train.train_step import TrainState, create_state, make_predict_step, make_train_step

log = logging.getLogger("deim_jax")


class NonFiniteLoss(RuntimeError):
    pass


def _frozen_filter(cfg):
    """(path, torch name) -> frozen? for the backbone's freeze settings."""
    b = cfg.model.backbone
    if b.get("freeze_at", -1) < 0 and not b.get("freeze_norm", False):
        return None
    if cfg.model.family == "rtdetrv2":
        from deim_jax.models.presnet import frozen_param_filter
    else:
        from deim_jax.models.hgnetv2 import frozen_param_filter
    pred = frozen_param_filter(b)
    return lambda path, name: pred(path)


def initial_variables(cfg, model, rng) -> Dict[str, Any]:
    """Random init, or ``config.init_from`` (an official .pth or a deim_jax checkpoint directory).

    Fine-tuning with another number of classes: entries whose shape differs (class heads,
    the denoising class embedding) keep their fresh initialization; the log lists them.
    """
    variables = models.init(model, cfg, rng)
    src = cfg.get("init_from", "")
    if not src:
        return jax.device_get(variables)
    if src.endswith(".pth"):
        sd = convert.load_pth(src)
        fresh = convert.to_torch_state_dict(jax.device_get(variables), cfg)
        skipped = sorted(k for k, v in sd.items() if k in fresh and np.shape(v) != np.shape(fresh[k]))
        unknown = sorted(k for k in sd if k not in fresh)
        sd = {k: v for k, v in sd.items() if k in fresh and k not in skipped}
        sd.update({k: fresh[k] for k in skipped})
        missing = sorted(k for k in fresh if k not in sd)
        sd.update({k: fresh[k] for k in missing})
        print(f"init_from {src}: {len(sd) - len(skipped) - len(missing)} entries loaded; {len(skipped)} "
              f"re-initialized (shape differs): {skipped}; {len(missing)} missing (fresh init): {missing[:20]}; "
              f"{len(unknown)} ignored (not in this model): {unknown[:20]}")
        return convert.from_torch_state_dict(sd, cfg)
    mngr = checkpoints.CheckpointManager(src, best_metric=None)
    restored = mngr.restore()["train"]
    mngr.close()
    source = {"params": restored["ema_params"], "batch_stats": restored["ema_batch_stats"]}

    def pick(path, leaf):
        node = source
        for p in path:
            node = node.get(p.key) if isinstance(node, dict) else None
            if node is None:
                return leaf
        return np.asarray(node) if np.shape(node) == np.shape(leaf) else leaf

    out = jax.tree_util.tree_map_with_path(pick, jax.device_get(variables))
    print(f"init_from checkpoint {src} (EMA weights; entries with another shape re-initialized)")
    return out


class _StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks after every step."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        log.warning("signal %d: saving a checkpoint and stopping after this step", signum)
        self.requested = True

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _summary_writer(workdir):
    if jax.process_index() != 0:
        return None
    try:
        from clu import metric_writers

        return metric_writers.create_default_writer(os.path.join(workdir, "tensorboard"), asynchronous=False)
    except Exception as e:  # pragma: no cover - TensorBoard is optional at run time
        log.warning("no TensorBoard writer (%s)", e)
        return None


def evaluate(cfg, predict, mesh, records, picture: Optional[list] = None) -> Dict[str, Any]:
    """COCO AP on the validation split of ``predict(images) -> {'pred_logits', 'pred_boxes'}``.

    ``images`` is the global eval batch; every image is counted once (padding is masked).
    ``picture``: if a list is given, a grid (uint8 array) of the first validation images with
    their predictions drawn is appended to it.
    """
    coco_gt = coco_gt_of(records)
    evaluator = CocoEvaluator(coco_gt)
    label_to_cat = np.zeros(max(records.label_to_category) + 1, np.int64)
    for label, cat in records.label_to_category.items():
        label_to_cat[label] = cat
    post = jax.jit(lambda lg, bx, sz: pp.postprocess(lg, bx, sz, num_top_queries=cfg.num_top_queries,
                                                     remap_mscoco_category=False))
    for local in data_lib.build_eval_iterator(cfg.data, jax.process_index(), jax.process_count(), records=records):
        images = sharding.global_batch({"image": local["image"]}, mesh)["image"]
        out = predict(images)
        out = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in out.items()}
        meta = {k: np.asarray(multihost_utils.process_allgather(local[k], tiled=True))
                for k in ("image_id", "orig_size", "valid")}
        res = jax.device_get(post(out["pred_logits"], out["pred_boxes"], meta["orig_size"]))
        evaluator.add(meta["image_id"], res["boxes"], res["scores"], label_to_cat[res["labels"]], meta["valid"])
        if picture is not None and not picture and jax.process_index() == 0:
            grid = predictions_grid(local["image"], out["pred_logits"], out["pred_boxes"], records.category_names)
            picture.append(np.asarray(grid))
    return evaluator.summarize(verbose=jax.process_index() == 0)


def coco_gt_of(records):
    """pycocotools COCO object of a split (read once per annotation file)."""
    return _coco_gt(records.annotations_file)


@functools.lru_cache(maxsize=2)
def _coco_gt(annotations_file: str):
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(annotations_file)


def _log_line(step, total, metrics, lr, ips, eta_s):
    eta = f"{int(eta_s // 3600)}:{int(eta_s % 3600 // 60):02d}:{int(eta_s % 60):02d}" if math.isfinite(eta_s) else "?"
    return (f"step {step}/{total} ({100 * step / max(total, 1):.1f}%) loss {metrics['loss']:.4f} "
            f"lr {lr:.3e} {ips:.1f} img/s ETA {eta}")


_STEPS_CACHE: Dict[Any, Any] = {}


def _jitted_steps(cfg, mesh, steps_per_epoch: int):
    """Model, optimizer and the jitted train/predict steps of a config, cached by the config's
    JSON so that runs of the same config in one process (a resume, tests) compile once."""
    key = (cfg.to_json_best_effort(), mesh, steps_per_epoch)
    if key not in _STEPS_CACHE:
        model = models.build(cfg)
        criterion = losses.build(cfg, mesh)
        shapes = models.init_shapes(model, cfg)["params"]
        tx = optimizer.build_optimizer(cfg, shapes, frozen=_frozen_filter(cfg), iters_per_epoch=steps_per_epoch,
                                       epochs=int(cfg.epochs))
        repl, batch_shard = sharding.replicated(mesh), sharding.batch_sharding(mesh)
        train_step = jax.jit(make_train_step(model, criterion, tx, cfg), in_shardings=(repl, batch_shard),
                             out_shardings=(repl, repl), donate_argnums=(0,))
        predict_step = jax.jit(make_predict_step(model, cfg), in_shardings=(repl, batch_shard),
                               out_shardings=batch_shard)
        _STEPS_CACHE.clear()  # keep one config's executables at a time
        _STEPS_CACHE[key] = (model, tx, train_step, predict_step)
    return _STEPS_CACHE[key]


def train_and_evaluate(cfg, workdir: str, stop_at_step: int = 0) -> Dict[str, Any]:
    """Train ``cfg`` in ``workdir`` (resuming if it has checkpoints); returns the last eval metrics.

    ``stop_at_step`` > 0: save a checkpoint and return once that step is reached (a run can then be
    resumed by calling again, e.g. in time-limited jobs).
    """
    sharding.maybe_initialize_distributed()
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=1))
    mesh = sharding.make_mesh()
    sharding.check_batch_size(cfg.batch_size, mesh)
    train_records = data_lib.load_split(cfg.data, "train")
    val_records = data_lib.load_split(cfg.data, "val")
    steps_per_epoch = data_lib.steps_per_epoch(cfg.data, train_records)
    total_steps = int(cfg.epochs) * steps_per_epoch

    rng = jax.random.PRNGKey(cfg.seed)
    init_rng, state_rng = jax.random.split(rng)
    model, tx, train_step, predict_step = _jitted_steps(cfg, mesh, steps_per_epoch)
    variables = initial_variables(cfg, model, init_rng)
    if jax.process_index() == 0:
        print(optimizer.format_param_group_report(
            optimizer.param_group_report(variables["params"], cfg, _frozen_filter(cfg))))
    state = sharding.replicate(create_state(variables, tx, state_rng), mesh)

    mngr = checkpoints.CheckpointManager(os.path.join(workdir, "checkpoints"), max_to_keep=cfg.keep_checkpoints)
    data_state = None
    if mngr.latest_step() is not None:
        restored = mngr.restore(target=state)
        state, data_state = restored["train"], restored["data"]
        print(f"resumed from checkpoint step {restored['step']} in {mngr.directory}")
    train_iter = data_lib.build_train_iterator(
        cfg.data, seed=cfg.seed, start_step=int(state.step), state=data_state or None,
        process_index=jax.process_index(), process_count=jax.process_count(), records=train_records)

    lr_fn = _lr_of_default_group(cfg, steps_per_epoch)
    writer = _summary_writer(workdir)
    log_every = int(cfg.get("log_every_steps", 50))
    eval_every = int(cfg.eval_every_epochs)
    stop_epoch = int(cfg.data.get("stop_epoch", -1) or -1)
    skip_nonfinite = bool(cfg.get("skip_nonfinite_steps", False))
    last_metrics: Dict[str, Any] = {}

    step = int(state.step)
    t_last, step_last = time.perf_counter(), step
    with _StopRequest() as stop:
        while step < total_steps:
            if (stop_epoch > 0 and cfg.get("stage2_reload", True) and step == stop_epoch * steps_per_epoch
                    and mngr.best_step() is not None):
                state = _reload_best(mngr, state)
            local = next(train_iter)
            dropped = int(local.get("num_dropped_boxes", np.zeros(1)).sum())
            batch = sharding.global_batch({k: local[k] for k in ("image", "boxes", "labels", "mask")}, mesh)
            state, metrics = train_step(state, batch)
            step += 1
            if not bool(metrics["finite"]):
                msg = (f"non-finite loss or gradient at step {step} (loss {float(metrics['loss'])}, grad norm "
                       f"{float(metrics['grad_norm'])}); last good checkpoint: step {mngr.latest_step()} in "
                       f"{mngr.directory}")
                if not skip_nonfinite:
                    raise NonFiniteLoss(msg)
                log.warning("%s: the update was skipped", msg)
            if step % log_every == 0 or step == total_steps or step % steps_per_epoch == 0:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                ips = (step - step_last) * cfg.batch_size / max(now - t_last, 1e-9)
                eta = (total_steps - step) * (now - t_last) / max(step - step_last, 1)
                t_last, step_last = now, step
                lr = lr_fn(step - 1)
                if jax.process_index() == 0:
                    print(_log_line(step, total_steps, metrics, lr, ips, eta)
                          + (f" dropped boxes {dropped}" if dropped else ""), flush=True)
                    if writer is not None:
                        writer.write_scalars(step, {**{f"train/{k}": v for k, v in metrics.items()},
                                                    "train/lr": lr, "train/images_per_s": ips})
            end_of_epoch = step % steps_per_epoch == 0
            stopping = stop.requested or step == stop_at_step
            if end_of_epoch or stopping or step == total_steps:
                epoch_done = step // steps_per_epoch
                eval_metrics = None
                if end_of_epoch and (epoch_done % eval_every == 0 or step == total_steps):
                    picture = []
                    eval_metrics = evaluate(cfg, lambda im: predict_step(state, im), mesh, val_records, picture)
                    last_metrics = eval_metrics
                    _record_eval(workdir, step, epoch_done, eval_metrics, writer)
                    if writer is not None and picture:
                        writer.write_images(step, {"eval/predictions": picture[0][None]})
                save_metrics = {"AP": eval_metrics["AP"]} if eval_metrics else None
                mngr.save(step, state, train_iter.get_state(), cfg, metrics=save_metrics, force=True)
                if stopping:
                    mngr.wait_until_finished()
                    print(f"stopped at step {step}; checkpoint saved in {mngr.directory}")
                    break
    mngr.close()
    if writer is not None:
        writer.flush()
    return last_metrics


def _reload_best(mngr, state: TrainState) -> TrainState:
    """Stage 2 starts from the best stage-1 weights, batch statistics and EMA (official trainer).

    The optimizer state (Adam moments and the schedule position) is kept: the official lr
    schedule follows the global iteration, and restoring moments that are ~1000 steps old
    would change little.
    """
    restored = mngr.restore_best(target=state)
    best = restored["train"]
    print(f"stage 2: reloaded the best stage-1 checkpoint (step {restored['step']}, AP {restored['metrics'].get('AP')})")
    return state.replace(params=best.params, batch_stats=best.batch_stats, ema_params=best.ema_params,
                         ema_batch_stats=best.ema_batch_stats)


def _lr_of_default_group(cfg, steps_per_epoch):
    from deim_jax.train import schedule

    def lr(step):
        return float(schedule.lr_used_at_step(step, cfg.optimizer.lr, cfg.schedule, steps_per_epoch, int(cfg.epochs)))

    return lr


def _record_eval(workdir, step, epoch, metrics, writer):
    if jax.process_index() != 0:
        return
    row = {"step": int(step), "epoch": int(epoch), **{k: v for k, v in metrics.items()}}
    with open(os.path.join(workdir, "eval.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    with open(os.path.join(workdir, "per_class_ap.txt"), "w") as f:
        f.write(f"step {step} epoch {epoch}\n" + format_per_class(metrics["per_class"]) + "\n")
    print(f"eval epoch {epoch} step {step}: AP {metrics['AP']:.4f} AP50 {metrics['AP50']:.4f} AP75 {metrics['AP75']:.4f}",
          flush=True)
    if writer is not None:
        writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items() if k != "per_class"})


def evaluate_checkpoint(cfg, workdir: str, use_ema: bool = True) -> Dict[str, Any]:
    """``--mode=eval``: restore the latest checkpoint of ``workdir`` (or ``config.init_from``) and evaluate."""
    mesh = sharding.make_mesh()
    model = models.build(cfg)
    val_records = data_lib.load_split(cfg.data, "val")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    step = epoch = 0
    latest = None
    if os.path.isdir(ckpt_dir):
        mngr = checkpoints.CheckpointManager(ckpt_dir)
        latest = mngr.latest_step()
        if latest is not None:
            restored = mngr.restore(latest)
            step = restored["step"]
            epoch = int(np.asarray((restored.get("data") or {}).get("epoch", 0)))
            train = restored["train"]
            variables = {"params": train["ema_params" if use_ema else "params"],
                         "batch_stats": train["ema_batch_stats" if use_ema else "batch_stats"]}
        mngr.close()
    if latest is not None:
        print(f"evaluating the {'EMA ' if use_ema else ''}weights of checkpoint step {step} in {ckpt_dir}")
    elif cfg.get("init_from", ""):
        variables = initial_variables(cfg, model, jax.random.PRNGKey(0))
    else:
        raise FileNotFoundError(f"nothing to evaluate: no checkpoint in {ckpt_dir} and no --config.init_from")
    state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"], batch_stats=variables["batch_stats"],
                       opt_state=None, ema_params=variables["params"], ema_batch_stats=variables["batch_stats"],
                       rng=jax.random.PRNGKey(0))
    predict_step = jax.jit(make_predict_step(model, cfg, use_ema=False))
    metrics = evaluate(cfg, lambda im: predict_step(state, im), mesh, val_records)
    os.makedirs(workdir, exist_ok=True)
    _record_eval(workdir, step, epoch, metrics, None)
    return metrics
