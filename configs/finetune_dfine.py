"""Fine-tuning DEIM-D-FINE (N/S/M/L/X) from COCO weights on your own data set.

    python -m deim_jax.main --config=finetune_dfine_s --config.init_from=deim_dfine_hgnetv2_s_coco.pth \\
        --config.data.root=my_set --workdir=runs/my_set   # a YOLO or VOC folder; COCO json: docs/custom_data.md
    python -m deim_jax.main --config=finetune_dfine_s_e120 ...   # another epoch count (or configs/finetune_dfine.py:s,epochs=120)

The COCO recipes count their warm-ups in iterations of COCO (2,000 lr warm-up steps, 1,000 EMA
warm-up updates) and their phases in COCO epochs; on a set of a few hundred images that leaves
the learning rate warming up for most of the run and the EMA barely averaging.
Here every phase is derived from the chosen number of epochs ``E`` (default 80: ~1,000-2,000
steps on a few hundred images at batch 16) and from the size's DEIM COCO recipe
(``configs/dfine.py``, ``E0`` epochs):

* Dense O2O policy, stage 2 and the lr phases keep the recipe's fractions of the run: augmentation
  from ``round(4 E/E0)`` (at least 1), Mosaic/MixUp until and the flat lr phase until
  ``round(flat E/E0)``, no augmentation, no multi-scale and the stage-2 reload of the best
  checkpoint from ``E - no_aug`` with ``no_aug = max(1, round(no_aug0 E/E0))``; N keeps its flat lr
  for the whole run as its recipe does.
* lr warm-up: 1 epoch (``schedule.warmup_epochs``), whatever the data set size.
* EMA warm-up ``W = E/5`` epochs (``ema.warmup_epochs``): the EMA decay ``0.9999 (1 - exp(-u/W))``
  then averages over about ``e^5 ~ 150`` updates at the end of the run, whatever its length. The
  COCO value (1,000 updates) would hardly average at all on a run of ~1,000 steps (window ~3
  updates), the official fine-tuning value (0) would average over 10,000 updates, i.e. keep the
  EMA weights near the initial ones.
* Learning rates of the official fine-tuning recipes (D-FINE ``objects365/*_obj2coco.yml``:
  a detector pre-trained on Objects365 fine-tuned on COCO): lr 1e-4, weight decay 1e-4 and the
  backbone at 0.5x (N, S), 0.1x (M), 0.05x (L), 0.01x (X) of it; the size's parameter groups
  (norm / bias groups without weight decay) are kept.
* ``num_classes`` and ``data.max_boxes`` from the data set (0: the class count of the train set;
  the most boxes of one train image x4 with Mosaic x2 with MixUp, at most ``num_queries``).
* batch 16, evaluation every 4 epochs, ``remap_mscoco_category`` off (your category ids).

``finetune_dfine_demo`` is the same recipe for the demo model (``configs/demo.py``: N with a
64-wide encoder/decoder, 256 px; phases and lrs of N), to fine-tune ``runs/demo`` on a small set
in minutes on a CPU (``docs/custom_data.md``).
"""

import re

import ml_collections

from configs import demo, dfine



class _EpochCounts:
    """The name suffixes ``e<N>`` (``finetune_dfine_s_e120``: 120 epochs); ``available()`` lists none."""

    def __contains__(self, suffix: str) -> bool:
        return re.fullmatch(r"e\d+", suffix) is not None

    def __iter__(self):
        return iter(())


NAMES = dfine.NAMES + ("demo",)
RECIPES = _EpochCounts()
DEFAULT_EPOCHS = 80
BACKBONE_LR_RATIO = {"n": 0.5, "s": 0.5, "m": 0.1, "l": 0.05, "x": 0.01}  # obj2coco backbone lr / lr
BACKBONE_LR_RATIO["demo"] = BACKBONE_LR_RATIO["n"]
LR, WEIGHT_DECAY = 1e-4, 1e-4


def parse_arg(arg: str):
    """``'s'``, ``'s,epochs=120'`` or ``'s,e120'`` -> (size, epochs)."""
    size, *rest = [p.strip() for p in (arg or "s").split(",")]
    epochs = DEFAULT_EPOCHS
    for item in rest:
        m = re.fullmatch(r"(?:epochs=|e)(\d+)", item)
        if not m or int(m.group(1)) < 2:
            raise ValueError(f"finetune_dfine: {item!r} is not epochs=N or eN (an integer N >= 2)")
        epochs = int(m.group(1))
    if size not in BACKBONE_LR_RATIO:
        raise ValueError(f"finetune_dfine: unknown size {size!r}; choose one of {sorted(BACKBONE_LR_RATIO)}")
    return size, epochs


def scaled_phases(size: str, epochs: int) -> dict:
    """The recipe's phase epochs of D-FINE ``size`` scaled to a run of ``epochs`` (see the module doc)."""
    t = dfine._SIZES["n" if size == "demo" else size]
    r = epochs / t["epochs"]
    no_aug = max(1, round(t["no_aug_epoch"] * r))
    stop = epochs - no_aug
    start = min(max(1, round(t["policy_epochs"][0] * r)), stop)
    mosaic_end = min(max(start, round(t["policy_epochs"][1] * r)), stop)
    flat = round(t["flat_epoch"] * r) if t["flat_epoch"] < t["epochs"] else t["flat_epoch"]
    return dict(policy_epochs=(start, mosaic_end, stop), mixup_epochs=(start, mosaic_end), stop_epoch=stop,
                flat_epoch=flat, no_aug_epoch=no_aug)


def get_config(arg: str = "s") -> ml_collections.ConfigDict:
    size, epochs = parse_arg(arg)
    c = dfine.get_config("n" if size == "demo" else size)
    c.name = f"finetune_dfine_{size}"
    if size == "demo":
        demo.narrow_dfine(c)
        demo.small_inputs(c)
    c.epochs = epochs
    c.batch_size = 16
    c.eval_every_epochs = 4
    c.remap_mscoco_category = False
    c.num_classes = 0  # from the data set
    p = scaled_phases(size, epochs)

    s = c.schedule
    s.warmup_epochs = 1.0
    s.flat_epoch, s.no_aug_epoch = p["flat_epoch"], p["no_aug_epoch"]
    c.ema.warmup_epochs = epochs / 5

    recipe_lr = c.optimizer.lr
    c.optimizer.lr, c.optimizer.weight_decay = LR, WEIGHT_DECAY
    groups = []
    for g in c.optimizer.groups:
        ratio = BACKBONE_LR_RATIO[size] if "(?=.*backbone)" in g["regex"] else g["lr"] / recipe_lr
        groups.append(dict(g, lr=LR * ratio, weight_decay=WEIGHT_DECAY if g["weight_decay"] else 0.0))
    c.optimizer.groups = groups

    d = c.data
    d.policy_epochs, d.mixup_epochs, d.stop_epoch = p["policy_epochs"], p["mixup_epochs"], p["stop_epoch"]
    d.eval_batch_size = 32
    d.max_boxes = 0  # from the data set
    return c
