"""DEIM-RT-DETRv2 (PResNet-vd R18/R34/R50-M/R50/R101) recipes, and DEIM's RT-DETRv2 baselines.

Values are the official resolved configs (DEIM `configs/deim_rtdetrv2/deim_r*vd_*_coco.yml`;
see shared/reference/rtdetrv2.md §1). ``get_config('r50')`` is DEIM-RT-DETRv2-L;
``get_config('r50,baseline')`` is the RT-DETRv2 baseline (ReLU, 2-layer query-position head,
VFL, no Mosaic/MixUp, constant lr after warm-up; R50-M/R50/R101: frozen stem and FrozenBN).
"""

import ml_collections

from configs import defaults

NAMES = ("r18", "r34", "r50m", "r50", "r101")  # --config=rtdetrv2_<size>, and rtdetrv2_<size>_baseline
RECIPES = ("baseline",)

_SIZES = {
    # depth, enc hidden/ffn/expansion, decoder layers/eval_idx, epochs, flat, no_aug, policy, backbone lr
    "r18": dict(depth=18, ch=(128, 256, 512), hid=256, ffn=1024, exp=0.5, layers=3, eval_idx=-1, epochs=120,
                flat=64, no_aug=3, policy=(4, 64, 117), backbone_lr=None,
                base=dict(layers=3, eval_idx=-1, epochs=120, stop=117, backbone_lr=None, freeze=False)),
    "r34": dict(depth=34, ch=(128, 256, 512), hid=256, ffn=1024, exp=0.5, layers=4, eval_idx=-1, epochs=120,
                flat=64, no_aug=3, policy=(4, 64, 117), backbone_lr=1e-4,
                base=dict(layers=4, eval_idx=-1, epochs=120, stop=117, backbone_lr=5e-5, freeze=False)),
    "r50m": dict(depth=50, ch=(512, 1024, 2048), hid=256, ffn=1024, exp=0.5, layers=3, eval_idx=2, epochs=60,
                 flat=34, no_aug=2, policy=(4, 34, 58), backbone_lr=2e-5,
                 base=dict(layers=6, eval_idx=2, epochs=84, stop=81, backbone_lr=1e-5, freeze=True)),
    "r50": dict(depth=50, ch=(512, 1024, 2048), hid=256, ffn=1024, exp=1.0, layers=6, eval_idx=-1, epochs=60,
                flat=34, no_aug=2, policy=(4, 34, 58), backbone_lr=2e-5,
                base=dict(layers=6, eval_idx=-1, epochs=72, stop=72, backbone_lr=1e-5, freeze=True)),
    "r101": dict(depth=101, ch=(512, 1024, 2048), hid=384, ffn=2048, exp=1.0, layers=6, eval_idx=-1, epochs=60,
                 flat=34, no_aug=2, policy=(4, 34, 58), backbone_lr=2e-6,
                 base=dict(layers=6, eval_idx=-1, epochs=72, stop=72, backbone_lr=1e-6, freeze=True)),
}

_NORMS = "^(?=.*(?:norm|bn)).*$"
_BACKBONE = "^(?=.*backbone)(?!.*norm).*$"


def get_config(arg: str = "r50") -> ml_collections.ConfigDict:
    parts = [p.strip() for p in (arg or "r50").split(",")]
    size = parts[0]
    baseline = "baseline" in parts[1:]
    if size not in _SIZES:
        raise ValueError(f"unknown RT-DETRv2 size {size!r}; choose one of {sorted(_SIZES)}")
    t = _SIZES[size]
    b = t["base"]
    c = defaults.run(f"rtdetrv2_{size}" + ("_baseline" if baseline else ""), "rtdetrv2" if baseline else "deim",
                     epochs=b["epochs"] if baseline else t["epochs"], batch_size=16,
                     num_classes=80)
    act = "relu" if baseline else "silu"
    freeze = baseline and b["freeze"]
    c.model = ml_collections.ConfigDict(dict(
        family="rtdetrv2",
        backbone=dict(name="PResNet", depth=t["depth"], variant="d", return_idx=(1, 2, 3), num_stages=4,
                      freeze_at=0 if freeze else -1, freeze_norm=freeze),
        encoder=dict(in_channels=t["ch"], feat_strides=(8, 16, 32), hidden_dim=t["hid"], dim_feedforward=t["ffn"],
                     use_encoder_idx=(2,), num_encoder_layers=1, nhead=8, dropout=0.0, enc_act="gelu", act="silu",
                     expansion=t["exp"], depth_mult=1.0, pe_temperature=10000.0, version="rtdetrv2"),
        decoder=dict(feat_channels=(t["hid"],) * 3, feat_strides=(8, 16, 32), hidden_dim=256, num_levels=3,
                     num_points=(4, 4, 4), nhead=8, dim_feedforward=1024, num_queries=300, num_denoising=100,
                     label_noise_ratio=0.5, box_noise_scale=1.0, cross_attn_method="default",
                     num_layers=b["layers"] if baseline else t["layers"],
                     eval_idx=b["eval_idx"] if baseline else t["eval_idx"],
                     activation=act, mlp_act=act, query_pos_method="default" if baseline else "as_reg"),
    ))
    c.loss = defaults.loss(("vfl", "boxes") if baseline else ("mal", "boxes"), gamma=2.0 if baseline else 1.5,
                           use_uni_set=False, weights=dict(loss_mal=1.0, loss_vfl=1.0, loss_bbox=5.0, loss_giou=2.0))
    lr = 1e-4 if baseline else 2e-4
    backbone_lr = b["backbone_lr"] if baseline else t["backbone_lr"]
    groups = []
    if baseline and size == "r34":  # the original RT-DETRv2-R34 groups
        groups = [dict(regex="^(?=.*backbone)(?!.*norm|bn).*$", lr=5e-5, weight_decay=1e-4),
                  dict(regex="^(?=.*backbone)(?=.*norm|bn).*$", lr=5e-5, weight_decay=0.0),
                  dict(regex="^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$", lr=lr, weight_decay=0.0)]
        backbone_lr = None
    elif backbone_lr is not None:
        groups.append(dict(regex=_BACKBONE, lr=backbone_lr, weight_decay=1e-4))
    if not groups:
        groups = [dict(regex=_NORMS, lr=lr, weight_decay=0.0)]
    elif backbone_lr is not None:
        groups.append(dict(regex=_NORMS, lr=lr, weight_decay=0.0))
    c.optimizer = defaults.optimizer(lr=lr, weight_decay=1e-4, groups=groups)
    if baseline:
        c.schedule = defaults.schedule("flatcosine", warmup_iter=2000, flat_epoch=4_000_000, no_aug_epoch=0,
                                       lr_gamma=1.0, first_step_divisor=2000)
    else:
        c.schedule = defaults.schedule("flatcosine", warmup_iter=2000, flat_epoch=t["flat"], no_aug_epoch=t["no_aug"],
                                       lr_gamma=0.5, first_step_divisor=2000)
    c.ema = defaults.ema(warmups=2000)
    stop = b["stop"] if baseline else t["policy"][2]
    c.data = defaults.coco_data(c, eval_batch_size=64, base_size_repeat=3, stop_epoch=stop,
                                policy_epochs=(0, 0, stop) if baseline else t["policy"],
                                mixup_epochs=(0, 0) if baseline else t["policy"][:2])
    if baseline:
        c.data.mosaic_prob = 0.0
        c.data.mixup_prob = 0.0
    return c
