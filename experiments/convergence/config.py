"""The four arms of the convergence study, on the clutter set (``clutter.py``).

    python -m deim_jax.main --config=experiments/convergence/config.py:ARM --workdir=DIR [--config.seed=S]

ARM is one of ``ARMS``. Every arm has the same model (the demo's DEIM-D-FINE-N with a 64-wide
encoder/decoder, 60 queries), data, canvas (192 px), batch 8, 12 epochs, lr 1e-3, warm-up,
EMA, stage 2 from 0-based epoch 10 (no augmentation, best stage-1 reload) and evaluation after every
epoch (epochs 0-based below, as in the config fields):

* ``deim``: DEIM: Dense O2O (Mosaic p 0.5 and MixUp p 0.5 in epochs 1-5), MAL (gamma 1.5),
  flat-cosine lr (flat in epochs 0-5, cosine to 0.1x by epoch 10, then 0.1x);
* ``baseline``: the D-FINE recipe (``--config=demo_baseline``): VFL (alpha 0.75, gamma 2), no Mosaic or
  MixUp, linear warm-up then a constant lr, D-FINE's parameter groups;
* ``o2o_vfl``: ``deim`` with VFL instead of MAL;
* ``mal_only``: ``deim`` without Mosaic and MixUp (MAL and the DEIM schedule kept).

Diagnostic arm (``DIAGNOSTIC_ARMS``, run on request): ``deim_constant_lr``, ``deim`` with the
baseline's lr (constant after the warm-up: no cosine decay, no 0.1x in the last epochs).
"""

from configs import defaults, demo, demo_baseline

ARMS = ("deim", "baseline", "o2o_vfl", "mal_only")
DIAGNOSTIC_ARMS = ("deim_constant_lr",)
ROOT = "data/clutter"
EPOCHS, STOP_EPOCH, DENSE_EPOCHS = 12, 10, (1, 6)


def _study(c, name: str):
    """What every arm shares: data, canvas, length, evaluation points."""
    c.name = f"convergence_{name}"
    c.epochs = EPOCHS
    c.eval_every_epochs = 1
    c.keep_checkpoints = 1
    c.schedule.flat_epoch = DENSE_EPOCHS[1]
    c.eval_spatial_size = (192, 192)
    d = c.data
    d.policy_epochs = (DENSE_EPOCHS[0], DENSE_EPOCHS[1], STOP_EPOCH) if d.mosaic_prob > 0 else (0, 0, STOP_EPOCH)
    d.mixup_epochs = DENSE_EPOCHS if d.mixup_prob > 0 else (0, 0)
    d.stop_epoch = STOP_EPOCH
    d.image_size = d.eval_size = 192
    d.mosaic_size = 96
    d.max_boxes = 0  # from the train set: 60 (the queries) with Mosaic and MixUp
    d.root = ROOT
    d.train.images, d.train.annotations = f"{ROOT}/train", f"{ROOT}/annotations/instances_train.json"
    d.val.images, d.val.annotations = f"{ROOT}/val", f"{ROOT}/annotations/instances_val.json"
    d.generate_demo = False  # run.sh writes the clutter set
    return c


def get_config(arm: str = "deim"):
    if arm not in ARMS + DIAGNOSTIC_ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose one of {ARMS + DIAGNOSTIC_ARMS}")
    c = demo_baseline.get_config() if arm == "baseline" else demo.get_config()
    if arm == "o2o_vfl":
        c.loss = defaults.loss(("vfl", "boxes", "local"), gamma=2.0, use_uni_set=c.loss.use_uni_set,
                               weights=dict(c.loss.weights))
    if arm == "mal_only":
        c.data.mosaic_prob = c.data.mixup_prob = 0.0
    c = _study(c, arm)
    if arm == "deim_constant_lr":  # the cosine phase ends where it starts; the last phase keeps the full lr
        c.schedule.flat_epoch = EPOCHS - int(c.schedule.no_aug_epoch)
        c.schedule.lr_gamma = 1.0
    return c
