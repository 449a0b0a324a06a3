"""DEIM-D-FINE (HGNetv2 N/S/M/L/X) recipes, and the original D-FINE baselines of the same sizes.

Values are the official resolved configs (DEIM `configs/deim_dfine/deim_hgnetv2_{size}_coco.yml`;
see shared/reference/deim_dfine.md §1.3/§1.4). ``get_config('l')`` is DEIM-D-FINE-L;
``get_config('l,baseline')`` is the D-FINE-L recipe (ReLU decoder activations, VFL loss,
no Mosaic/MixUp, linear warm-up then constant lr; L/X: frozen stem and frozen backbone BN),
with the lrs/epochs of the D-FINE repository's COCO configs.
"""

import ml_collections

from configs import defaults

NAMES = ("n", "s", "m", "l", "x")  # --config=dfine_<size>, and dfine_<size>_baseline
RECIPES = ("baseline",)

# size -> official values (deim_dfine.md §1.3 table).
_SIZES = {
    "n": dict(
        backbone=dict(variant="B0", use_lab=True, return_idx=(2, 3)),
        in_channels=(512, 1024), strides=(16, 32), enc_hidden=128, enc_ffn=512, encoder_idx=(1,),
        expansion=0.34, depth_mult=0.5, dec_channels=(128, 128), dec_hidden=128, dec_ffn=512,
        num_levels=2, num_layers=3, num_points=(6, 6), reg_scale=4.0,
        epochs=160, flat_epoch=7800, no_aug_epoch=12, lr_gamma=1.0, policy_epochs=(4, 78, 148),
        mixup_epochs=(4, 78), stop_epoch=148, base_size_repeat=None, ema_restart_decay=0.9999,
        batch_size=128, val_batch_size=256, lr=8e-4, wd=1e-4,
        groups=[
            ("^(?=.*backbone)(?!.*norm|bn).*$", 4e-4, 1e-4),
            ("^(?=.*backbone)(?=.*norm|bn).*$", 4e-4, 0.0),
            ("^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$", 8e-4, 0.0),
        ],
    ),
    "s": dict(
        backbone=dict(variant="B0", use_lab=True, return_idx=(1, 2, 3)),
        in_channels=(256, 512, 1024), strides=(8, 16, 32), enc_hidden=256, enc_ffn=1024, encoder_idx=(2,),
        expansion=0.5, depth_mult=0.34, dec_channels=(256, 256, 256), dec_hidden=256, dec_ffn=1024,
        num_levels=3, num_layers=3, num_points=(3, 6, 3), reg_scale=4.0,
        epochs=132, flat_epoch=64, no_aug_epoch=12, lr_gamma=0.5, policy_epochs=(4, 64, 120),
        mixup_epochs=(4, 64), stop_epoch=120, base_size_repeat=20, ema_restart_decay=0.9999,
        batch_size=32, val_batch_size=64, lr=4e-4, wd=1e-4,
        groups=[
            ("^(?=.*backbone)(?!.*bn).*$", 2e-4, 1e-4),
            ("^(?=.*(?:norm|bn)).*$", 4e-4, 0.0),
        ],
    ),
    "m": dict(
        backbone=dict(variant="B2", use_lab=True, return_idx=(1, 2, 3)),
        in_channels=(384, 768, 1536), strides=(8, 16, 32), enc_hidden=256, enc_ffn=1024, encoder_idx=(2,),
        expansion=1.0, depth_mult=0.67, dec_channels=(256, 256, 256), dec_hidden=256, dec_ffn=1024,
        num_levels=3, num_layers=4, num_points=(3, 6, 3), reg_scale=4.0,
        epochs=102, flat_epoch=49, no_aug_epoch=12, lr_gamma=0.5, policy_epochs=(4, 49, 90),
        mixup_epochs=(4, 49), stop_epoch=90, base_size_repeat=6, ema_restart_decay=0.9999,
        batch_size=32, val_batch_size=64, lr=4e-4, wd=1e-4,
        groups=[
            ("^(?=.*backbone)(?!.*bn).*$", 4e-5, 1e-4),
            ("^(?=.*(?:norm|bn)).*$", 4e-4, 0.0),
        ],
    ),
    "l": dict(
        backbone=dict(variant="B4", use_lab=False, return_idx=(1, 2, 3)),
        in_channels=(512, 1024, 2048), strides=(8, 16, 32), enc_hidden=256, enc_ffn=1024, encoder_idx=(2,),
        expansion=1.0, depth_mult=1.0, dec_channels=(256, 256, 256), dec_hidden=256, dec_ffn=1024,
        num_levels=3, num_layers=6, num_points=(3, 6, 3), reg_scale=4.0,
        epochs=58, flat_epoch=29, no_aug_epoch=8, lr_gamma=0.5, policy_epochs=(4, 29, 50),
        mixup_epochs=(4, 29), stop_epoch=50, base_size_repeat=4, ema_restart_decay=0.9999,
        batch_size=32, val_batch_size=64, lr=5e-4, wd=1.25e-4,
        groups=[
            ("^(?=.*backbone)(?!.*norm|bn).*$", 2.5e-5, 1.25e-4),
            ("^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", 5e-4, 0.0),
        ],
    ),
    "x": dict(
        backbone=dict(variant="B5", use_lab=False, return_idx=(1, 2, 3)),
        in_channels=(512, 1024, 2048), strides=(8, 16, 32), enc_hidden=384, enc_ffn=2048, encoder_idx=(2,),
        expansion=1.0, depth_mult=1.0, dec_channels=(384, 384, 384), dec_hidden=256, dec_ffn=1024,
        num_levels=3, num_layers=6, num_points=(3, 6, 3), reg_scale=8.0,
        epochs=58, flat_epoch=29, no_aug_epoch=8, lr_gamma=0.5, policy_epochs=(4, 29, 50),
        mixup_epochs=(4, 29), stop_epoch=50, base_size_repeat=3, ema_restart_decay=0.9998,
        batch_size=32, val_batch_size=64, lr=5e-4, wd=1.25e-4,
        groups=[
            ("^(?=.*backbone)(?!.*norm|bn).*$", 5e-6, 1.25e-4),
            ("^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", 5e-4, 0.0),
        ],
    ),
}

# D-FINE repository COCO recipes (configs/dfine/dfine_hgnetv2_{size}_coco.yml): lr, backbone lr,
# weight decay, epochs, augmentation/multi-scale stop epoch.
_DFINE_BASELINE = {
    "n": dict(lr=8e-4, backbone_lr=4e-4, wd=1e-4, epochs=160, stop_epoch=148, freeze=False),
    "s": dict(lr=2.5e-4, backbone_lr=1.25e-4, wd=1.25e-4, epochs=132, stop_epoch=120, freeze=False),
    "m": dict(lr=2.5e-4, backbone_lr=2.5e-5, wd=1.25e-4, epochs=132, stop_epoch=120, freeze=False),
    "l": dict(lr=2.5e-4, backbone_lr=1.25e-5, wd=1.25e-4, epochs=80, stop_epoch=72, freeze=True),
    "x": dict(lr=2.5e-4, backbone_lr=2.5e-6, wd=1.25e-4, epochs=80, stop_epoch=72, freeze=True),
}


def get_config(arg: str = "l") -> ml_collections.ConfigDict:
    parts = [p.strip() for p in (arg or "l").split(",")]
    size = parts[0]
    recipe = "dfine" if "baseline" in parts[1:] else "deim"
    if size not in _SIZES:
        raise ValueError(f"unknown D-FINE size {size!r}; choose one of {sorted(_SIZES)}")
    t = _SIZES[size]
    c = defaults.run(f"dfine_{size}" + ("_baseline" if recipe == "dfine" else ""), recipe,
                     epochs=t["epochs"] if recipe == "deim" else _DFINE_BASELINE[size]["epochs"],
                     batch_size=t["batch_size"], num_classes=80)

    act = "silu" if recipe == "deim" else "relu"
    freeze = recipe == "dfine" and _DFINE_BASELINE[size]["freeze"]
    c.model = ml_collections.ConfigDict(
        dict(
            family="dfine",
            backbone=dict(
                name="HGNetv2",
                variant=t["backbone"]["variant"],
                use_lab=t["backbone"]["use_lab"],
                return_idx=t["backbone"]["return_idx"],
                freeze_at=0 if freeze else -1,
                freeze_norm=freeze,
                freeze_stem_only=True,
            ),
            encoder=dict(
                in_channels=t["in_channels"],
                feat_strides=t["strides"],
                hidden_dim=t["enc_hidden"],
                dim_feedforward=t["enc_ffn"],
                use_encoder_idx=t["encoder_idx"],
                num_encoder_layers=1,
                nhead=8,
                dropout=0.0,
                enc_act="gelu",
                act="silu",
                expansion=t["expansion"],
                depth_mult=t["depth_mult"],
                pe_temperature=10000.0,
                version="dfine",
            ),
            decoder=dict(
                feat_channels=t["dec_channels"],
                feat_strides=t["strides"],
                hidden_dim=t["dec_hidden"],
                dim_feedforward=t["dec_ffn"],
                num_levels=t["num_levels"],
                num_layers=t["num_layers"],
                num_points=t["num_points"],
                nhead=8,
                num_queries=300,
                num_denoising=100,
                label_noise_ratio=0.5,
                box_noise_scale=1.0,
                reg_max=32,
                reg_scale=t["reg_scale"],
                eval_idx=-1,
                activation=act,
                mlp_act=act,
                dropout=0.0,
            ),
        )
    )

    c.loss = defaults.loss(
        ("mal", "boxes", "local") if recipe == "deim" else ("vfl", "boxes", "local"),
        gamma=1.5 if recipe == "deim" else 2.0, use_uni_set=True,
        weights=dict(loss_mal=1.0, loss_vfl=1.0, loss_bbox=5.0, loss_giou=2.0, loss_fgl=0.15, loss_ddf=1.5))

    if recipe == "deim":
        lr, wd, groups = t["lr"], t["wd"], t["groups"]
        c.schedule = defaults.schedule("flatcosine", warmup_iter=2000, flat_epoch=t["flat_epoch"],
                                       no_aug_epoch=t["no_aug_epoch"], lr_gamma=t["lr_gamma"], first_step_divisor=500)
        stop_epoch, policy_epochs, mixup_epochs = t["stop_epoch"], t["policy_epochs"], t["mixup_epochs"]
    else:
        b = _DFINE_BASELINE[size]
        lr, wd = b["lr"], b["wd"]
        groups = [
            ("^(?=.*backbone)(?!.*norm|bn).*$", b["backbone_lr"], wd),
            ("^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", lr, 0.0),
        ]
        c.schedule = defaults.schedule("linear_warmup", warmup_iter=500, first_step_divisor=500)
        stop_epoch = b["stop_epoch"]
        policy_epochs, mixup_epochs = (0, 0, stop_epoch), (0, 0)
    c.optimizer = defaults.optimizer(lr=lr, weight_decay=wd,
                                     groups=[dict(regex=r, lr=glr, weight_decay=gwd) for r, glr, gwd in groups])
    c.ema = defaults.ema(warmups=1000, restart_decay=t["ema_restart_decay"])
    # Dense O2O input pipeline (configs/defaults.py documents every field)
    c.data = defaults.coco_data(c, eval_batch_size=t["val_batch_size"], policy_epochs=policy_epochs,
                                mixup_epochs=mixup_epochs, stop_epoch=stop_epoch,
                                base_size_repeat=t["base_size_repeat"] if recipe == "deim" else 1)
    if recipe == "dfine":  # D-FINE: no Mosaic/MixUp; multi-scale over the 10 sizes of its collate function, 640 once
        c.data.mosaic_prob = 0.0
        c.data.mixup_prob = 0.0
    return c
