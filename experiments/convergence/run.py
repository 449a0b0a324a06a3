"""The convergence study: DEIM against the D-FINE baseline recipe and two ablations, per epoch.

    experiments/convergence/run.sh [--seeds=0,1] [--arms=deim,baseline,o2o_vfl,mal_only]
    experiments/convergence/run.sh --arms=deim_constant_lr   # the diagnostic arm of config.py
    experiments/convergence/run.sh --report       # results.json, results.md, curves.png only

Writes the clutter set (``clutter.py``) into ``data/clutter`` if it is missing, then trains every
arm of ``config.py`` for every seed, seed by seed (so an interrupted study already holds whole
seeds), each run in ``--runs/ARM/seedS`` (not committed). An arm/seed whose ``eval.jsonl`` holds
every epoch is skipped; an unfinished one resumes from its checkpoint. The report goes next to
this script: ``results.json`` (AP, AP50 per arm, seed and epoch; wall time per run),
``results.md`` (the table and the answers) and ``curves.png`` (matplotlib, the ``plots`` extra).
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
sys.path.insert(0, HERE)

import config as study  # noqa: E402  (experiments/convergence/config.py)
from experiments.common import deim_jax_curve, plot_bands, run_logged  # noqa: E402

CONFIG = "experiments/convergence/config.py"


def train(arm: str, seed: int, run_dir: str) -> None:
    cmd = [sys.executable, "-m", "deim_jax.main", f"--config={CONFIG}:{arm}", f"--workdir={run_dir}",
           f"--config.seed={seed}"]
    run_logged(cmd, run_dir)


# ---- report ------------------------------------------------------------------------------------
def collect(runs: str):
    """{arm: {seed: {epochs, AP, AP50, wall_s}}} of the finished runs."""
    results = {}
    for arm in study.ARMS + study.DIAGNOSTIC_ARMS:
        arm_dir = os.path.join(runs, arm)
        for name in sorted(os.listdir(arm_dir)) if os.path.isdir(arm_dir) else []:
            run_dir = os.path.join(arm_dir, name)
            c = deim_jax_curve(run_dir)
            if len(c) < study.EPOCHS:
                continue
            wall_path = os.path.join(run_dir, "wall_s.txt")
            wall = sum(float(x) for x in open(wall_path)) if os.path.isfile(wall_path) else 0.0
            results.setdefault(arm, {})[name.replace("seed", "")] = {
                "epochs": [e for e, _, _ in c], "AP": [round(a, 4) for _, a, _ in c],
                "AP50": [round(a, 4) for _, _, a in c], "wall_s": wall}
    return results


def mean_curve(runs_of_arm, key: str = "AP"):
    return [statistics.mean(v) for v in zip(*(r[key] for r in runs_of_arm.values()))]


def answers(results):
    """The study's questions, answered from the seed means (None where an arm is missing)."""
    out = {}
    if "deim" in results and "baseline" in results:
        deim, base = mean_curve(results["deim"]), mean_curve(results["baseline"])
        reached = next((e for e, ap in enumerate(deim, 1) if ap >= base[-1]), None)
        out["baseline_final_AP"] = round(base[-1], 4)
        out["deim_final_AP"] = round(deim[-1], 4)
        out["deim_epoch_reaching_baseline_final"] = reached
        out["deim_fraction_of_epochs"] = None if reached is None else round(reached / len(base), 3)
        out["deim_within_60pct_of_epochs"] = reached is not None and reached <= 0.6 * len(base)
        out["deim_final_ge_baseline"] = deim[-1] >= base[-1]
    if "deim" in results and "o2o_vfl" in results:
        out["mal_minus_vfl_final_AP"] = round(mean_curve(results["deim"])[-1] - mean_curve(results["o2o_vfl"])[-1], 4)
    if "deim" in results and "mal_only" in results:
        out["dense_o2o_gain_final_AP"] = round(
            mean_curve(results["deim"])[-1] - mean_curve(results["mal_only"])[-1], 4)
    return out


def table(results) -> str:
    arms = [a for a in study.ARMS + study.DIAGNOSTIC_ARMS if a in results]
    rows = ["| epoch | " + " | ".join(f"{a} AP mean [min, max]" for a in arms) + " |",
            "|" + "---|" * (len(arms) + 1)]
    for i in range(study.EPOCHS):
        cells = []
        for a in arms:
            v = [r["AP"][i] for r in results[a].values()]
            cells.append(f"{statistics.mean(v):.3f} [{min(v):.3f}, {max(v):.3f}]")
        rows.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    notes = [f"- {a}: seeds {', '.join(sorted(results[a]))}; final AP50 mean {mean_curve(results[a], 'AP50')[-1]:.3f}; "
             f"wall time per run {statistics.mean(r['wall_s'] for r in results[a].values()):.0f} s" for a in arms]
    return "\n".join(rows + [""] + notes) + "\n"


def plot(results, path: str) -> bool:
    arms = study.ARMS + study.DIAGNOSTIC_ARMS
    return plot_bands(results, dict(zip(arms, ("tab:red", "tab:gray", "tab:blue", "tab:green", "tab:purple"))), path,
                      "clutter set: seed mean and range per arm", "COCO AP (EMA weights, 128 val images)",
                      divider=study.STOP_EPOCH + 0.5)


def report(runs: str, out: str):
    results = collect(runs)
    summary = {"runs": results, "answers": answers(results)}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    text = table(results) + "\n" + "\n".join(f"- {k}: {v}" for k, v in summary["answers"].items()) + "\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    plot(results, os.path.join(out, "curves.png"))
    print(text)
    return summary


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--arms", default=",".join(study.ARMS))
    p.add_argument("--runs", default=os.path.join(HERE, "runs"), help="run folders (not committed)")
    p.add_argument("--report_dir", default=HERE, help="where results.json, results.md, curves.png go")
    p.add_argument("--report", action="store_true", help="only collect the finished runs and write the report")
    args = p.parse_args(argv)
    os.chdir(REPO)  # the config's data root is relative to the repository
    if not args.report:
        arms = [a for a in args.arms.split(",") if a]
        unknown = set(arms) - set(study.ARMS + study.DIAGNOSTIC_ARMS)
        if unknown:
            p.error(f"--arms: unknown {sorted(unknown)}; choose from {study.ARMS + study.DIAGNOSTIC_ARMS}")
        if not os.path.isfile(os.path.join(study.ROOT, "annotations", "instances_val.json")):
            import clutter

            clutter.generate(study.ROOT)
        for seed in (int(s) for s in args.seeds.split(",")):
            for arm in arms:
                run_dir = os.path.join(args.runs, arm, f"seed{seed}")
                if len(deim_jax_curve(run_dir)) >= study.EPOCHS:
                    print(f"{arm} seed {seed}: done, skipped")
                    continue
                train(arm, seed, run_dir)
    report(args.runs, args.report_dir)


if __name__ == "__main__":
    main()
