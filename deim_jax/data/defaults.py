"""Data parts of experiment configs: ``config.data = coco_data_config(...)``.

Fields (``config.data``):
  train.images / train.annotations   COCO-format image folder and instances json (training)
  val.images / val.annotations       same for evaluation
  tfds_name / data_dir               TFDS alternative (e.g. 'coco/2017'); None for COCO folders.
                                     Used when train/val.images are empty: the prepared builder
                                     is exported once to a COCO folder (never downloads)
  tfds_train_split / tfds_val_split  'train' / 'validation'
  tfds_export_dir                    '' = <data_dir>/deim_export/<name>
  remap_mscoco_category              True: COCO's 80 ids (1..90) -> 0..79; False: contiguous
                                     mapping of the json's sorted category ids
  batch_size / eval_batch_size       global batch sizes (split evenly over processes)
  image_size / eval_size             training / evaluation canvas (square, official 640)
  max_boxes                          static number of box slots per image (mask marks real ones)
  policy_epochs                      (e0, e1, e2): aug on from e0, mosaic until e1, off from e2
  mosaic_prob, mosaic_size           0.5, 320 (official)
  mixup_prob, mixup_epochs           0.5, (e0, e1)
  stop_epoch                         multi-scale off from this epoch (official = e2)
  base_size_repeat                   None (no multi-scale, N) or r (S 20, M 6, L 4, X 3)
  multiscale_buckets                 None (official 11 sizes) or a smaller list of sizes
  num_parallel_calls, prefetch       tf.data knobs (None = AUTOTUNE)
  root, generate_demo                demo only: folder of the demo set; write it if missing
                                     (``deim_jax.data.prepare.check_or_generate``)
  spare_examples                     extra shard entries so unreadable files do not shorten
                                     an epoch (None = local batch size)
``config.num_classes`` stays at the top level of the config (80 for COCO).
"""

from __future__ import annotations

import ml_collections

# official per-model Dense O2O settings (deim_dfine.md §1.3)
MODEL_DATA = {
    "n": dict(policy_epochs=(4, 78, 148), mixup_epochs=(4, 78), stop_epoch=148, base_size_repeat=None,
              batch_size=128),
    "s": dict(policy_epochs=(4, 64, 120), mixup_epochs=(4, 64), stop_epoch=120, base_size_repeat=20,
              batch_size=32),
    "m": dict(policy_epochs=(4, 49, 90), mixup_epochs=(4, 49), stop_epoch=90, base_size_repeat=6,
              batch_size=32),
    "l": dict(policy_epochs=(4, 29, 50), mixup_epochs=(4, 29), stop_epoch=50, base_size_repeat=4,
              batch_size=32),
    "x": dict(policy_epochs=(4, 29, 50), mixup_epochs=(4, 29), stop_epoch=50, base_size_repeat=3,
              batch_size=32),
}


def _base(model: str) -> ml_collections.ConfigDict:
    m = MODEL_DATA[model]
    c = ml_collections.ConfigDict()
    c.train = ml_collections.ConfigDict({"images": "", "annotations": ""})
    c.val = ml_collections.ConfigDict({"images": "", "annotations": ""})
    c.tfds_name = ml_collections.FieldReference(None, field_type=str)
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.tfds_train_split = "train"
    c.tfds_val_split = "validation"
    c.tfds_export_dir = ""
    c.remap_mscoco_category = True
    c.batch_size = m["batch_size"]
    c.eval_batch_size = 256 if model == "n" else 64
    c.image_size = 640
    c.eval_size = 640
    c.max_boxes = 100
    c.policy_epochs = m["policy_epochs"]
    c.mosaic_prob = 0.5
    c.mosaic_size = 320
    c.mixup_prob = 0.5
    c.mixup_epochs = m["mixup_epochs"]
    c.stop_epoch = m["stop_epoch"]
    c.base_size_repeat = ml_collections.FieldReference(m["base_size_repeat"], field_type=int)
    c.multiscale_buckets = ml_collections.FieldReference(None, field_type=tuple)
    c.num_parallel_calls = ml_collections.FieldReference(None, field_type=int)
    c.prefetch = 2
    c.spare_examples = ml_collections.FieldReference(None, field_type=int)
    c.root = ""
    c.generate_demo = False
    return c


def coco_data_config(model: str = "l", root: str = "data/coco") -> ml_collections.ConfigDict:
    """COCO 2017 on disk: ``root/train2017``, ``root/val2017``, ``root/annotations/instances_*.json``."""
    c = _base(model)
    c.train.images = f"{root}/train2017"
    c.train.annotations = f"{root}/annotations/instances_train2017.json"
    c.val.images = f"{root}/val2017"
    c.val.annotations = f"{root}/annotations/instances_val2017.json"
    return c


def tfds_data_config(model: str = "l", name: str = "coco/2017", data_dir: str = "") -> ml_collections.ConfigDict:
    """COCO through a prepared TFDS builder (never downloads)."""
    c = _base(model)
    c.tfds_name = name
    c.data_dir = data_dir
    return c


def demo_data_config(root: str = "data/demo", batch_size: int = 8, image_size: int = 256,
                     epochs=(1, 6, 9)) -> ml_collections.ConfigDict:
    """The generated demo set (``python -m deim_jax.data.demo --out ROOT``; num_classes = 4)."""
    c = _base("n")
    c.root = root
    c.train.images = f"{root}/train"
    c.train.annotations = f"{root}/annotations/instances_train.json"
    c.val.images = f"{root}/val"
    c.val.annotations = f"{root}/annotations/instances_val.json"
    c.remap_mscoco_category = False
    c.batch_size = batch_size
    c.eval_batch_size = batch_size
    c.image_size = image_size
    c.eval_size = image_size
    c.mosaic_size = image_size // 2
    c.max_boxes = 32
    c.policy_epochs = tuple(epochs)
    c.mixup_epochs = tuple(epochs[:2])
    c.stop_epoch = epochs[2]
    return c
