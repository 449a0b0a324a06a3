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
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import config as study  # noqa: E402  (experiments/convergence/config.py)

CONFIG = "experiments/convergence/config.py"


def curve(run_dir: str):
    """[(epoch, AP, AP50)] from a run's ``eval.jsonl``."""
    path = os.path.join(run_dir, "eval.jsonl")
    if not os.path.isfile(path):
        return []
    rows = [json.loads(line) for line in open(path) if line.strip()]
    return [(int(r["epoch"]), float(r["AP"]), float(r["AP50"])) for r in rows]


def train(arm: str, seed: int, run_dir: str) -> None:
    cmd = [sys.executable, "-m", "deim_jax.main", f"--config={CONFIG}:{arm}", f"--workdir={run_dir}",
           f"--config.seed={seed}"]
    os.makedirs(run_dir, exist_ok=True)
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    with open(os.path.join(run_dir, "stdout.log"), "a") as log:
        done = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {done.returncode}); see {run_dir}/stdout.log")
    with open(os.path.join(run_dir, "wall_s.txt"), "a") as f:
        f.write(f"{time.time() - t0:.0f}\n")


# ---- report ------------------------------------------------------------------------------------
def collect(runs: str):
    """{arm: {seed: {epochs, AP, AP50, wall_s}}} of the finished runs."""
    results = {}
    for arm in study.ARMS + study.DIAGNOSTIC_ARMS:
        arm_dir = os.path.join(runs, arm)
        for name in sorted(os.listdir(arm_dir)) if os.path.isdir(arm_dir) else []:
            run_dir = os.path.join(arm_dir, name)
            c = curve(run_dir)
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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (the plots extra): no curves.png")
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    arms = study.ARMS + study.DIAGNOSTIC_ARMS
    colors = dict(zip(arms, ("tab:red", "tab:gray", "tab:blue", "tab:green", "tab:purple")))
    for arm, runs in results.items():
        epochs = next(iter(runs.values()))["epochs"]
        aps = list(zip(*(r["AP"] for r in runs.values())))
        seeds = f"{len(runs)} seed{'s' if len(runs) > 1 else ''}"
        ax.plot(epochs, [statistics.mean(v) for v in aps], color=colors[arm], label=f"{arm} ({seeds})")
        ax.fill_between(epochs, [min(v) for v in aps], [max(v) for v in aps], color=colors[arm], alpha=0.2)
    ax.axvline(study.STOP_EPOCH + 0.5, color="k", lw=0.8, ls=":")
    ax.set_xlabel("epoch (stage 2 after the dotted line)")
    ax.set_ylabel("COCO AP (EMA weights, 128 val images)")
    ax.set_title("clutter set: seed mean and range per arm")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    return True


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
                if len(curve(run_dir)) >= study.EPOCHS:
                    print(f"{arm} seed {seed}: done, skipped")
                    continue
                train(arm, seed, run_dir)
    report(args.runs, args.report_dir)


if __name__ == "__main__":
    main()
