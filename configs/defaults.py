"""The one source of defaults for every config block except the model (each family file has its own).

A recipe file builds ``c = run(...)`` and fills ``c.loss = loss(...)``, ``c.optimizer =
optimizer(...)``, ``c.schedule = schedule(...)``, ``c.ema = ema(...)``, ``c.data = coco_data(...)``
(or ``yolo_data`` / ``voc_data`` / ``demo_data`` / ``tfds_data``). Blocks are locked: setting a
field that a block does not have (``c.data.mosiac_prob = 0.3``, ``--config.optimzer.lr=1``) is an
error naming the field, and the code reads every field directly, so nothing silently falls back
to a default.

Data fields (``config.data``, read by ``deim_jax.data``):
  format                             'auto' (detected from root / the annotations, one log line
                                     says what: deim_jax.data.formats), 'coco', 'yolo', 'voc',
                                     'tfds'
  train.images / train.annotations   COCO-format image folder and instances json (training)
  val.images / val.annotations       same for evaluation
  root                               yolo: the folder with data.yaml (or classes.txt, images/,
                                     labels/), or the yaml file; voc: the folder with
                                     JPEGImages/, Annotations/, ImageSets/Main/ (the
                                     images/annotations fields are not read); the demo set's folder
  train.split / val.split            yolo: the data.yaml key (or images/<split>/ folder); voc:
                                     ImageSets/Main/<split>.txt ('train' / 'val'; e.g. 'test')
  voc_classes                        voc: the class names in label order (empty: the sorted
                                     names found in Annotations/)
  tfds_name / data_dir               TFDS alternative (e.g. 'coco/2017'), used when the folders
                                     are empty: the prepared builder is exported once to a COCO
                                     folder (never downloads)
  tfds_train_split / tfds_val_split  'train' / 'validation'
  tfds_export_dir                    '' = <data_dir>/deim_export/<name>
  num_classes                        = config.num_classes (one field); 0 = from the training
                                     set (its categories, read before the model is built; the
                                     names are stored with every checkpoint)
  remap_mscoco_category              True: COCO's 80 ids (1..90) -> 0..79; False: contiguous
                                     mapping of the json's sorted category ids
  batch_size / eval_batch_size       global batch sizes (split evenly over processes)
  image_size / eval_size             training / evaluation canvas (square, official 640)
  max_boxes                          static number of box slots per image (mask marks real ones);
                                     0 = from the train set (data.census.adopt_max_boxes)
  policy_epochs                      (e0, e1, e2): aug on from e0, mosaic until e1, off from e2
  mosaic_prob, mosaic_size           0.5, 320 (official)
  mixup_prob, mixup_epochs           0.5, (e0, e1)
  stop_epoch                         multi-scale off from this epoch (official = e2)
  base_size_repeat                   None (no multi-scale, N) or r (S 20, M 6, L 4, X 3)
  multiscale_buckets                 None (official 11 sizes) or a smaller list of sizes
  num_parallel_calls, prefetch       tf.data knobs (None = AUTOTUNE)
  spare_examples                     extra shard entries so unreadable files do not shorten an
                                     epoch (None = max(local batch size, 8))
  strict_files                       False: a missing train image is dropped with one warning,
                                     an unreadable one skipped when met (counted); True: every
                                     train/val image is read and decoded once at start-up and
                                     any missing or unreadable one is an error listing them
  generate_demo                      write the demo set into root (in ``format``) if missing
"""

from __future__ import annotations

from typing import Optional, Sequence

import ml_collections
from ml_collections import FieldReference

# official per-size Dense O2O settings of DEIM-D-FINE (deim_dfine.md §1.3)
DFINE_DATA = {
    "n": dict(policy_epochs=(4, 78, 148), mixup_epochs=(4, 78), stop_epoch=148, base_size_repeat=None,
              batch_size=128, eval_batch_size=256),
    "s": dict(policy_epochs=(4, 64, 120), mixup_epochs=(4, 64), stop_epoch=120, base_size_repeat=20,
              batch_size=32, eval_batch_size=64),
    "m": dict(policy_epochs=(4, 49, 90), mixup_epochs=(4, 49), stop_epoch=90, base_size_repeat=6,
              batch_size=32, eval_batch_size=64),
    "l": dict(policy_epochs=(4, 29, 50), mixup_epochs=(4, 29), stop_epoch=50, base_size_repeat=4,
              batch_size=32, eval_batch_size=64),
    "x": dict(policy_epochs=(4, 29, 50), mixup_epochs=(4, 29), stop_epoch=50, base_size_repeat=3,
              batch_size=32, eval_batch_size=64),
}


def _locked(d: dict) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(d)
    c.lock()
    return c


def run(name: str, recipe: str, *, epochs: int, batch_size: int, num_classes: int = 0,
        eval_size: int = 640) -> ml_collections.ConfigDict:
    """Top-level fields of a run (the blocks are added by the recipe); ``num_classes`` 0: from the
    training set."""
    return ml_collections.ConfigDict(dict(
        name=name,
        recipe=recipe,
        seed=0,
        num_classes=FieldReference(num_classes),
        remap_mscoco_category=FieldReference(True),
        eval_spatial_size=(eval_size, eval_size),
        num_top_queries=300,
        compute_dtype="float32",  # or "bfloat16" (float32 master weights)
        epochs=epochs,
        batch_size=FieldReference(batch_size),  # global, over all devices and hosts
        eval_every_epochs=1,
        log_every_steps=100,
        skip_nonfinite_steps=False,  # True: skip a step whose loss/gradient is not finite (logged)
        init_from="",  # official .pth or a deim_jax checkpoint directory (fine-tuning)
        keep_checkpoints=3,
        checkpoint_ocdbt=False,  # True: orbax's OCDBT format (fewer files; more host memory kept per save)
        stage2_reload=True,  # official stage 2: reload the best stage-1 checkpoint at data.stop_epoch and after
        # every stage-2 epoch that does not improve (those epochs and the last stage-1 one are evaluated)
    ))


def loss(losses: Sequence[str], *, gamma: float, use_uni_set: bool, weights: dict) -> ml_collections.ConfigDict:
    """Criterion settings (deim_dfine.md §6): loss names, their weights, MAL/VFL gamma, matcher."""
    return _locked(dict(
        losses=tuple(losses),
        weights=dict(weights),
        gamma=gamma,
        alpha=0.75,  # VFL negative weight
        mal_alpha=FieldReference(None, field_type=float),  # MAL negative weight (official: none)
        use_uni_set=use_uni_set,
        reg_max=32,
        distill_temperature=5.0,  # DDF softmax temperature
        matcher=dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, alpha=0.25, gamma=2.0, method="auto"),
    ))


def optimizer(*, lr: float, weight_decay: float, groups: Sequence[dict]) -> ml_collections.ConfigDict:
    """AdamW with global-norm clipping and regex parameter groups (``dict(regex, lr, weight_decay)``)."""
    return _locked(dict(name="adamw", lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8,
                        clip_norm=0.1, groups=[dict(g) for g in groups]))


def schedule(name: str, *, warmup_iter: int, first_step_divisor: float, flat_epoch: int = 0,
             no_aug_epoch: int = 0, lr_gamma: float = 1.0) -> ml_collections.ConfigDict:
    """Learning-rate schedule: 'flatcosine' (DEIM), 'linear_warmup' (D-FINE) or 'constant'.
    ``warmup_epochs`` (None: use ``warmup_iter``) gives the warm-up in epochs instead."""
    return _locked(dict(name=name, warmup_iter=warmup_iter, warmup_epochs=FieldReference(None, field_type=float),
                        flat_epoch=flat_epoch, no_aug_epoch=no_aug_epoch, lr_gamma=lr_gamma,
                        first_step_divisor=first_step_divisor))


def ema(*, warmups: int, restart_decay: float = 0.9999) -> ml_collections.ConfigDict:
    """Model EMA of parameters and batch statistics (deim_dfine.md §9.4); ``warmup_epochs`` (None:
    use ``warmups``, in updates) gives the warm-up in epochs instead."""
    return _locked(dict(enabled=True, decay=0.9999, warmups=warmups, warmup_epochs=FieldReference(None, field_type=float),
                        restart_decay=restart_decay))


def _data(c: ml_collections.ConfigDict, *, batch_size, eval_batch_size: int,
          base_size_repeat: Optional[int], policy_epochs, mixup_epochs, stop_epoch: int) -> ml_collections.ConfigDict:
    """The data block with every field; ``c`` (the run) supplies the shared references."""
    return _locked(dict(
        format="auto",
        train=dict(images="", annotations="", split="train"),
        val=dict(images="", annotations="", split="val"),
        voc_classes=(),
        tfds_name=FieldReference(None, field_type=str),
        data_dir=FieldReference(None, field_type=str),
        tfds_train_split="train",
        tfds_val_split="validation",
        tfds_export_dir="",
        num_classes=c.get_ref("num_classes"),
        remap_mscoco_category=c.get_ref("remap_mscoco_category"),
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        image_size=c.eval_spatial_size[0],
        eval_size=c.eval_spatial_size[0],
        max_boxes=100,
        policy_epochs=tuple(policy_epochs),
        mosaic_prob=0.5,
        mosaic_size=c.eval_spatial_size[0] // 2,
        mixup_prob=0.5,
        mixup_epochs=tuple(mixup_epochs),
        stop_epoch=stop_epoch,
        base_size_repeat=FieldReference(base_size_repeat, field_type=int),
        multiscale_buckets=FieldReference(None, field_type=tuple),
        num_parallel_calls=FieldReference(None, field_type=int),
        prefetch=2,
        spare_examples=FieldReference(None, field_type=int),
        strict_files=False,
        root="",
        generate_demo=False,
    ))


def coco_data(c: ml_collections.ConfigDict, *, eval_batch_size: int, base_size_repeat: Optional[int],
              policy_epochs, mixup_epochs, stop_epoch: int, root: str = "data/coco") -> ml_collections.ConfigDict:
    """COCO 2017 on disk: ``root/train2017``, ``root/val2017``, ``root/annotations/instances_*.json``."""
    d = _data(c, batch_size=c.get_ref("batch_size"), eval_batch_size=eval_batch_size,
              base_size_repeat=base_size_repeat, policy_epochs=policy_epochs, mixup_epochs=mixup_epochs,
              stop_epoch=stop_epoch)
    d.train.images = f"{root}/train2017"
    d.train.annotations = f"{root}/annotations/instances_train2017.json"
    d.val.images = f"{root}/val2017"
    d.val.annotations = f"{root}/annotations/instances_val2017.json"
    return d


def yolo_data(c: ml_collections.ConfigDict, root: str, **schedule) -> ml_collections.ConfigDict:
    """A YOLO set (Ultralytics layout) at ``root``: a folder with data.yaml, or the yaml file
    (``deim_jax.data.yolo``); ``schedule``: the keyword arguments of ``coco_data`` but ``root``.
    Set ``c.remap_mscoco_category = False`` (``c.num_classes`` 0 takes the count from the set)."""
    d = _data(c, batch_size=c.get_ref("batch_size"), **schedule)
    d.format, d.root = "yolo", root
    return d


def voc_data(c: ml_collections.ConfigDict, root: str, **schedule) -> ml_collections.ConfigDict:
    """A Pascal VOC set at ``root`` (JPEGImages/, Annotations/, ImageSets/Main/;
    ``deim_jax.data.voc``), splits ``train`` / ``val``; ``schedule`` as for ``yolo_data``."""
    d = _data(c, batch_size=c.get_ref("batch_size"), **schedule)
    d.format, d.root = "voc", root
    return d


def tfds_data(c: ml_collections.ConfigDict, name: str = "coco/2017", data_dir: str = "",
              size: str = "l") -> ml_collections.ConfigDict:
    """COCO through a prepared TFDS builder (never downloads); Dense O2O settings of D-FINE ``size``."""
    t = DFINE_DATA[size]
    d = _data(c, batch_size=c.get_ref("batch_size"), eval_batch_size=t["eval_batch_size"],
              base_size_repeat=t["base_size_repeat"], policy_epochs=t["policy_epochs"],
              mixup_epochs=t["mixup_epochs"], stop_epoch=t["stop_epoch"])
    d.tfds_name = name
    d.data_dir = data_dir
    return d


def demo_data(c: ml_collections.ConfigDict, root: str = "data/demo", epochs=(1, 6, 9)) -> ml_collections.ConfigDict:
    """The generated demo set (``python -m deim_jax.data.demo --out ROOT``; 4 classes, ids with a gap).

    The canvas is ``c.eval_spatial_size``, the eval batch the run's batch size at the time of the
    call; ``epochs`` = ``policy_epochs`` (mixup until the mosaic stops, multi-scale off)."""
    d = _data(c, batch_size=c.get_ref("batch_size"), eval_batch_size=int(c.batch_size),
              base_size_repeat=None, policy_epochs=epochs, mixup_epochs=epochs[:2], stop_epoch=epochs[2])
    d.root = root
    d.train.images = f"{root}/train"
    d.train.annotations = f"{root}/annotations/instances_train.json"
    d.val.images = f"{root}/val"
    d.val.annotations = f"{root}/annotations/instances_val.json"
    d.max_boxes = 32
    return d
