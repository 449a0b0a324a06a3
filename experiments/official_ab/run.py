"""Whole-run A/B of deim_jax against the official DEIM trainer on the demo set and recipe.

    python experiments/official_ab/run.py --official=/path/to/DEIM [--seeds=0,1,2] [--arms=official,deim_jax]
    python experiments/official_ab/run.py --report            # results.json, results.md, curves.png only

Both trainers run ``--config=demo`` (``configs/demo.py``): the same model widths, data, 256 px,
batch 8, 16 epochs, lr, warm-up, schedule, augmentation epochs and EMA. The official trainer gets
that recipe as its YAML (written from the deim_jax config by ``official_yaml``, so the two cannot
drift apart) and the demo annotations with category ids remapped to 0..K-1 (with
``remap_mscoco_category: False`` it uses raw ids as labels). Both evaluate the EMA weights after
every epoch (COCO AP on the 64 val images). The official tree is given on the command line and
never copied into this repository.

Runs are resumable: an arm/seed whose log already holds every epoch is skipped, and deim_jax
resumes an interrupted run from its checkpoint (the official trainer restarts that seed).
Runs go to ``--runs`` (default ``experiments/official_ab/runs``, not committed): one folder per
arm and seed with the trainer's own log. The report goes next to this script: ``results.json``
(AP, AP50 per arm, seed, epoch; wall time per run), ``results.md`` (mean and range per epoch)
and ``curves.png`` (matplotlib, the ``plots`` extra).

The official trainer needs torch (the ``torch`` extra), ``torchvision==0.16.2`` (``--no-deps``:
newer ones pull other torch builds), ``faster-coco-eval``, PyYAML, SciPy and TensorBoard in the
Python given by ``--official_python`` (default: this one). Under numpy 2, torchvision 0.16's PIL
``adjust_hue`` overflows; ``official_trainer.py`` patches it at run time (no official file is
edited).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)

from experiments.common import deim_jax_curve, plot_bands, run_logged  # noqa: E402

ARMS = ("official", "deim_jax")


def demo_config():
    from deim_jax import configs

    return configs.get_config("demo")


def official_yaml(c, official: str, data_root: str, ann_dir: str, out_dir: str) -> str:
    """The official trainer's YAML for the deim_jax config ``c`` (a DEIM-D-FINE-N recipe)."""
    enc, dec, d = c.model.encoder, c.model.decoder, c.data
    groups = c.optimizer.groups
    assert len(groups) == 3, "the N recipe has three parameter groups"
    g = [dict(params=x["regex"], lr=x["lr"], weight_decay=x["weight_decay"]) for x in groups]
    lines = [
        f"__include__: ['{official}/configs/deim_dfine/deim_hgnetv2_n_coco.yml']",
        f"output_dir: {out_dir}",
        f"num_classes: {c.num_classes}",
        "remap_mscoco_category: False",
        f"eval_spatial_size: [{c.eval_spatial_size[0]}, {c.eval_spatial_size[1]}]",
        "HGNetv2: {pretrained: False}",
        f"HybridEncoder: {{hidden_dim: {enc.hidden_dim}, dim_feedforward: {enc.dim_feedforward}}}",
        f"DFINETransformer: {{feat_channels: {list(dec.feat_channels)}, hidden_dim: {dec.hidden_dim}, "
        f"dim_feedforward: {dec.dim_feedforward}, num_queries: {dec.num_queries}, num_denoising: {dec.num_denoising}}}",
        f"PostProcessor: {{num_top_queries: {c.num_top_queries}}}",
        "optimizer:",
        "  type: AdamW",
        "  params:",
        *[f"    - {{params: '{x['params']}', lr: {x['lr']}, weight_decay: {x['weight_decay']}}}" for x in g],
        f"  lr: {c.optimizer.lr}",
        f"  betas: [{c.optimizer.betas[0]}, {c.optimizer.betas[1]}]",
        f"  weight_decay: {c.optimizer.weight_decay}",
        f"epoches: {c.epochs}",
        f"flat_epoch: {c.schedule.flat_epoch}",
        f"no_aug_epoch: {c.schedule.no_aug_epoch}",
        f"lr_gamma: {c.schedule.lr_gamma}",
        f"warmup_iter: {c.schedule.warmup_iter}",
        "use_ema: True",
        f"ema: {{type: ModelEMA, decay: {c.ema.decay}, warmups: {c.ema.warmups}, start: 0}}",
        "checkpoint_freq: 1000",
        f"print_freq: {c.log_every_steps}",
        "train_dataloader:",
        "  dataset:",
        f"    img_folder: {data_root}/train",
        f"    ann_file: {ann_dir}/instances_train.json",
        "    transforms:",
        "      ops:",
        f"        - {{type: Mosaic, output_size: {d.mosaic_size}, rotation_range: 10, translation_range: [0.1, 0.1], "
        "scaling_range: [0.5, 1.5], probability: 1.0, fill_value: 0, use_cache: False, max_cached_images: 50, "
        "random_pop: True}",
        "        - {type: RandomPhotometricDistort, p: 0.5}",
        "        - {type: RandomZoomOut, fill: 0}",
        "        - {type: RandomIoUCrop, p: 0.8}",
        "        - {type: SanitizeBoundingBoxes, min_size: 1}",
        "        - {type: RandomHorizontalFlip}",
        f"        - {{type: Resize, size: [{d.image_size}, {d.image_size}]}}",
        "        - {type: SanitizeBoundingBoxes, min_size: 1}",
        "        - {type: ConvertPILImage, dtype: 'float32', scale: True}",
        "        - {type: ConvertBoxes, fmt: 'cxcywh', normalize: True}",
        "      policy:",
        f"        epoch: {list(d.policy_epochs)}",
        "        ops: ['Mosaic', 'RandomPhotometricDistort', 'RandomZoomOut', 'RandomIoUCrop']",
        f"      mosaic_prob: {d.mosaic_prob}",
        "  collate_fn:",
        f"    mixup_prob: {d.mixup_prob}",
        f"    mixup_epochs: {list(d.mixup_epochs)}",
        f"    stop_epoch: {d.stop_epoch}",
        f"    base_size: {d.image_size}",
        "    base_size_repeat: ~",
        f"    ema_restart_decay: {c.ema.restart_decay}",
        f"  total_batch_size: {c.batch_size}",
        "  num_workers: 1",
        "val_dataloader:",
        "  dataset:",
        f"    img_folder: {data_root}/val",
        f"    ann_file: {ann_dir}/instances_val.json",
        "    transforms:",
        "      ops:",
        f"        - {{type: Resize, size: [{d.eval_size}, {d.eval_size}]}}",
        "        - {type: ConvertPILImage, dtype: 'float32', scale: True}",
        f"  total_batch_size: {d.eval_batch_size}",
        "  num_workers: 1",
    ]
    return "\n".join(lines) + "\n"


def remap_categories(src: str, dst: str) -> None:
    """Copy a COCO json with its category ids renumbered 0..K-1 in id order."""
    with open(src) as f:
        coco = json.load(f)
    new = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    for c in coco["categories"]:
        c["id"] = new[c["id"]]
    for a in coco["annotations"]:
        a["category_id"] = new[a["category_id"]]
    with open(dst, "w") as f:
        json.dump(coco, f)


# ---- per-arm curves --------------------------------------------------------------------------
def official_curve(run_dir: str):
    """[(epoch 1-based, AP, AP50)] from the official ``log.txt`` (one JSON line per epoch)."""
    path = os.path.join(run_dir, "log.txt")
    if not os.path.isfile(path):
        return []
    out = []
    for line in open(path):
        row = json.loads(line)
        stats = row["test_coco_eval_bbox"]
        out.append((int(row["epoch"]) + 1, float(stats[0]), float(stats[1])))
    return out


CURVES = {"official": official_curve, "deim_jax": deim_jax_curve}


# ---- running -----------------------------------------------------------------------------------
def run_official(args, c, seed: int, run_dir: str) -> None:
    ann_dir = os.path.join(args.runs, "official_annotations")
    os.makedirs(ann_dir, exist_ok=True)
    for split in ("train", "val"):
        remap_categories(os.path.join(REPO, c.data.root, "annotations", f"instances_{split}.json"),
                         os.path.join(ann_dir, f"instances_{split}.json"))
    if os.path.isdir(run_dir):  # the official trainer cannot resume this run cleanly: start the seed again
        for name in os.listdir(run_dir):
            if name in ("log.txt", "last.pth", "best_stg1.pth", "best_stg2.pth"):
                os.remove(os.path.join(run_dir, name))
    os.makedirs(run_dir, exist_ok=True)
    cfg_path = os.path.join(run_dir, "demo_official.yml")
    with open(cfg_path, "w") as f:
        f.write(official_yaml(c, os.path.abspath(args.official), os.path.join(REPO, c.data.root), ann_dir, run_dir))
    cmd = [args.official_python, os.path.join(HERE, "official_trainer.py"), "-c", cfg_path, "-d", "cpu",
           "--seed", str(seed)]
    run_logged(cmd, run_dir, env={"DEIM_OFFICIAL": os.path.abspath(args.official)})


def run_deim_jax(args, c, seed: int, run_dir: str) -> None:
    cmd = [sys.executable, "-m", "deim_jax.main", "--config=demo", f"--workdir={run_dir}",
           f"--config.seed={seed}", "--config.eval_every_epochs=1"]
    run_logged(cmd, run_dir)


# ---- report ------------------------------------------------------------------------------------
def collect(runs: str, epochs: int):
    results = {}
    for arm in ARMS:
        for name in sorted(os.listdir(os.path.join(runs, arm))) if os.path.isdir(os.path.join(runs, arm)) else []:
            run_dir = os.path.join(runs, arm, name)
            curve = CURVES[arm](run_dir)
            if len(curve) < epochs:
                continue
            wall = [float(x) for x in open(os.path.join(run_dir, "wall_s.txt"))] if os.path.isfile(
                os.path.join(run_dir, "wall_s.txt")) else []
            results.setdefault(arm, {})[name.replace("seed", "")] = {
                "epochs": [e for e, _, _ in curve], "AP": [round(a, 4) for _, a, _ in curve],
                "AP50": [round(a, 4) for _, _, a in curve], "wall_s": sum(wall)}
    return results


def _stats(values):
    return statistics.mean(values), min(values), max(values)


def summary_table(results, epochs: int) -> str:
    arms = [a for a in ARMS if a in results]
    head = "| epoch | " + " | ".join(f"{a} AP mean [min, max]" for a in arms) + " | ranges overlap |"
    rows = [head, "|" + "---|" * (len(arms) + 2)]
    for e in range(1, epochs + 1):
        cells, ranges = [], []
        for a in arms:
            m, lo, hi = _stats([r["AP"][e - 1] for r in results[a].values()])
            cells.append(f"{m:.3f} [{lo:.3f}, {hi:.3f}]")
            ranges.append((lo, hi))
        overlap = "yes" if len(ranges) == 2 and max(r[0] for r in ranges) <= min(r[1] for r in ranges) else (
            "no" if len(ranges) == 2 else "-")
        rows.append(f"| {e} | " + " | ".join(cells) + f" | {overlap} |")
    seeds = {a: sorted(results[a]) for a in arms}
    final = {a: _stats([r["AP50"][-1] for r in results[a].values()]) for a in arms}
    notes = [f"- {a}: seeds {', '.join(seeds[a])}; final AP50 mean {final[a][0]:.3f} [{final[a][1]:.3f}, "
             f"{final[a][2]:.3f}]; wall time per run {statistics.mean(r['wall_s'] for r in results[a].values()):.0f} s"
             for a in arms]
    return "\n".join(rows + [""] + notes) + "\n"


def plot(results, path: str) -> bool:
    return plot_bands(results, dict(zip(ARMS, ("tab:orange", "tab:blue"))), path,
                      "--config=demo: deim_jax vs the official DEIM trainer", "COCO AP (EMA weights, 64 val images)")


def report(runs: str, out: str, epochs: int) -> None:
    results = collect(runs, epochs)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    table = summary_table(results, epochs)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)
    plot(results, os.path.join(out, "curves.png"))
    print(table)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", help="official DEIM source tree (never committed)")
    p.add_argument("--official_python", default=sys.executable, help="Python with torch, torchvision, faster-coco-eval")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--runs", default=os.path.join(HERE, "runs"), help="run folders (not committed)")
    p.add_argument("--report_dir", default=HERE, help="where results.json, results.md, curves.png go")
    p.add_argument("--report", action="store_true", help="only collect the finished runs and write the report")
    args = p.parse_args(argv)
    os.chdir(REPO)  # the demo config's data root is relative to the repository
    c = demo_config()
    if not args.report:
        arms = [a for a in args.arms.split(",") if a]
        unknown = set(arms) - set(ARMS)
        if unknown:
            p.error(f"--arms: unknown {sorted(unknown)}; choose from {ARMS}")
        if "official" in arms and not (args.official and os.path.isfile(os.path.join(args.official, "train.py"))):
            p.error(f"--official={args.official!r}: not an official DEIM source tree (no train.py)")
        from deim_jax.data import prepare

        prepare.check_or_generate(c.data)  # the demo set, as --config=demo writes it
        for seed in (int(s) for s in args.seeds.split(",")):
            for arm in arms:
                run_dir = os.path.join(args.runs, arm, f"seed{seed}")
                if len(CURVES[arm](run_dir)) >= c.epochs:
                    print(f"{arm} seed {seed}: done, skipped")
                    continue
                (run_official if arm == "official" else run_deim_jax)(args, c, seed, run_dir)
    report(args.runs, args.report_dir, int(c.epochs))


if __name__ == "__main__":
    main()
