"""Kill a training run with SIGKILL at random moments, restart it with the same command each time,
and check that it ends bit-identical to an uninterrupted run.

    python benchmarks/kill_resume.py [--kills=20] [--terms=5] [--epochs=6] [--light] [--seed=0] \
        [--out=benchmarks/results/kill_resume_cpu.md]

Workload: the tests' tiny config (``tests/tiny_config.py``: DEIM-D-FINE, 96 px, Mosaic/MixUp,
evaluation and a checkpoint every epoch of 2 steps) trained by ``python -m deim_jax.main``. The
matcher runs on device (``--config.loss.matcher.method=device``): the persistent compilation
cache then holds the train step (the scipy callback cannot be cached), so a restart compiles in
seconds. Each kill is aimed at a phase drawn at random:

* ``step``: a random 0-0.5 s after the n-th "step k/N" log line (during a step or the input pipeline);
* ``eval``: a random 0-1 s after the loop logs that an evaluation starts;
* ``save``: as soon as the n-th temporary checkpoint folder (``*.orbax-checkpoint-tmp*``) appears;
* ``any``: a random moment of the first 0.6x of the uninterrupted run's wall time (start-up included);
* ``term``: SIGTERM instead of SIGKILL, like ``step``: the run must save and exit with status 0.

``--kills`` SIGKILLs (phases step/eval/save/any drawn at random) and ``--terms`` SIGTERMs are
shuffled together.

n is drawn from 1..3, so kills land early and late in a run. A run that completes before its
kill (or after the last kill) is compared with the uninterrupted run: every array of its last
checkpoint (train state and data position) and every row of ``eval.jsonl`` must be equal; the
next kill then goes to a fresh run. Exit status 1 if any differs.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("step", "eval", "save", "any", "term")
SIGKILL_PHASES = PHASES[:-1]


# A lighter model still for the tests' runs: one decoder layer, no denoising (compiles ~20% faster).
LIGHT = ("--config.model.decoder.num_layers=1", "--config.model.decoder.num_denoising=0")


def command(data_root: str, workdir: str, epochs: int, extra=()) -> List[str]:
    return [sys.executable, "-m", "deim_jax.main", f"--config=tests/tiny_config.py:{data_root},{epochs}",
            f"--workdir={workdir}", "--config.loss.matcher.method=device", *extra]


def environment(cache_dir: str) -> Dict[str, str]:
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache_dir,
                JAX_DISABLE_MOST_OPTIMIZATIONS="1", PYTHONUNBUFFERED="1")


def _lines(proc: subprocess.Popen) -> "queue.Queue[Optional[str]]":
    q: "queue.Queue[Optional[str]]" = queue.Queue()

    def pump():
        for line in proc.stdout:
            q.put(line.rstrip("\n"))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _saving(workdir: str) -> bool:
    ckpt = os.path.join(workdir, "checkpoints")
    return os.path.isdir(ckpt) and any("orbax-checkpoint-tmp" in n for n in os.listdir(ckpt))


def run_once(cmd, env, workdir: str, phase: Optional[str], rng: random.Random, any_window_s: float,
             timeout_s: float = 900) -> Dict:
    """Run ``cmd``; with ``phase`` (``name`` or ``name:n``, see the module docstring), SIGKILL it there.
    Returns {'killed', 'phase', 'returncode', 'last', 'log'}."""
    phase, _, n = (phase or "").partition(":")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, log, start = _lines(proc), [], time.monotonic()
    nth, seen, was_saving = int(n) if n else rng.randint(1, 3), 0, False
    kill_at = start + rng.uniform(0, any_window_s) if phase == "any" else None
    done = ended = False
    while not done and time.monotonic() - start < timeout_s:
        try:
            line = lines.get(timeout=0.002)
        except queue.Empty:
            line = ""
        if line is None:
            ended = True
            break
        if line:
            log.append(line)
        saving = phase == "save" and _saving(workdir)
        event = ((saving and not was_saving) or (phase in ("step", "term") and re.match(r"^step \d+/", line))
                 or (phase == "eval" and line.startswith("evaluating the EMA")))
        was_saving = saving
        if phase == "any":
            done = time.monotonic() >= kill_at
        elif event:
            seen += 1
            if seen >= nth:
                time.sleep({"step": rng.uniform(0, 0.5), "term": rng.uniform(0, 0.5),
                            "eval": rng.uniform(0, 1.0)}.get(phase, 0.0))
                done = True
    killed = done and proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGTERM if phase == "term" else signal.SIGKILL)
    returncode = proc.wait(timeout=60)
    while not ended and (line := lines.get()) is not None:
        log.append(line)
    last = next((l for l in reversed(log) if l.strip()), "")
    return {"killed": killed, "phase": phase or None, "returncode": returncode, "last": last, "log": log}


def final_state(workdir: str) -> Dict:
    """{path: bytes} of the latest checkpoint's arrays (train state and data position) and the eval rows."""
    import jax
    import numpy as np

    from deim_jax.train.checkpoints import CheckpointManager

    with CheckpointManager(os.path.join(workdir, "checkpoints")) as m:
        r = m.restore()
    leaves = jax.tree_util.tree_leaves_with_path({"train": r["train"], "data": r["data"]})
    arrays = {jax.tree_util.keystr(p): np.asarray(v).tobytes() for p, v in leaves}
    rows = [json.loads(l) for l in open(os.path.join(workdir, "eval.jsonl"))]
    return {"step": r["step"], "arrays": arrays, "eval": rows}


def differences(a: Dict, b: Dict) -> List[str]:
    out = [f"step {a['step']} != {b['step']}"] if a["step"] != b["step"] else []
    out += [f"array {k} differs" for k in sorted(set(a["arrays"]) | set(b["arrays"]))
            if a["arrays"].get(k) != b["arrays"].get(k)]
    if a["eval"] != b["eval"]:
        out.append(f"eval.jsonl rows differ: {[r['step'] for r in a['eval']]} vs {[r['step'] for r in b['eval']]}")
    return out


def kill_and_resume(root: str, phases: List[str], epochs: int = 3, seed: int = 0, verbose: bool = True,
                    extra=()) -> Dict:
    """An uninterrupted run, then runs killed once per entry of ``phases`` (restarted until they
    complete), each compared with it.
    ``extra``: more command-line arguments (e.g. ``LIGHT``)."""
    from tests.train_helpers import tiny_dataset

    rng = random.Random(seed)
    data = tiny_dataset(os.path.join(root, "data"))
    env = environment(os.path.join(root, "xla_cache"))
    t0 = time.monotonic()
    ref = run_once(command(data, os.path.join(root, "reference"), epochs, extra), env, "", None, rng, 0)
    assert ref["returncode"] == 0, "\n".join(ref["log"][-40:])
    ref_s = time.monotonic() - t0
    reference = final_state(os.path.join(root, "reference"))
    kills, diffs, cycles, workdir, t1 = [], [], 0, None, time.monotonic()
    pending = list(phases)
    while pending or workdir is not None:
        if workdir is None:
            cycles += 1
            workdir = os.path.join(root, f"killed_{cycles}")
        r = run_once(command(data, workdir, epochs, extra), env, workdir, pending[0] if pending else None,
                     rng, 0.6 * ref_s)
        if r["killed"]:
            kills.append({k: r[k] for k in ("phase", "returncode", "last")})
            pending.pop(0)
            expected = 0 if r["phase"] == "term" else -signal.SIGKILL
        else:  # the run completed before the kill: compare it, start the next one afresh
            diffs += [f"run {cycles}: {d}" for d in differences(reference, final_state(workdir))]
            workdir, expected = None, 0
        if verbose:
            print(f"kill {len(kills)}/{len(phases)} ({r['phase']}): "
                  f"{'landed' if r['killed'] else 'the run completed first'}; last line: {r['last'][:90]}", flush=True)
        assert r["returncode"] == expected, "\n".join(r["log"][-40:])
    return {"kills": kills, "runs": cycles, "starts": len(kills) + cycles, "reference_s": ref_s,
            "killed_run_s": time.monotonic() - t1, "differences": diffs}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs")
    p.add_argument("--terms", type=int, default=5, help="SIGTERMs")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--light", action="store_true", help="one decoder layer, no denoising (LIGHT), as the tests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "kill_resume_cpu.md"))
    a = p.parse_args()
    sys.path.insert(0, REPO)
    from benchmarks.bench_common import append_row, device_description

    rng = random.Random(a.seed)
    phases = [rng.choice(SIGKILL_PHASES) for _ in range(a.kills)] + ["term"] * a.terms
    rng.shuffle(phases)
    with tempfile.TemporaryDirectory() as root:
        r = kill_and_resume(root, phases, a.epochs, a.seed, extra=LIGHT if a.light else ())
    landed = r["kills"]
    by_phase = ", ".join(f"{ph} {sum(k['phase'] == ph for k in landed)}" for ph in PHASES)
    ok = not r["differences"]
    append_row(a.out, "SIGKILL at random moments, restart with the same command (tiny config, CPU)",
               ["date, device", "model", "epochs", "faults (by phase)", "completed runs", "starts", "uninterrupted run",
                "killed runs, all starts", "end states"],
               [device_description(), "tiny, light" if a.light else "tiny", str(a.epochs), f"{len(landed) - a.terms} SIGKILL + {a.terms} SIGTERM ({by_phase})", str(r["runs"]), str(r["starts"]),
                f"{r['reference_s']:.0f} s", f"{r['killed_run_s']:.0f} s",
                "bit-identical" if ok else "DIFFERS: " + "; ".join(r["differences"][:5])])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
