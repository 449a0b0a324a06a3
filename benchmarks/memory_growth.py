"""Host memory (RSS) over a long training run of the tiny config with Mosaic and MixUp on.

    python benchmarks/memory_growth.py [--steps=2000] [--train_images=64] [--mode=loop] [--config.a.b=value]

Trains the tests' tiny config (``tests.train_helpers.tiny_config``: DEIM-D-FINE, B0 backbone,
96-px images, batch 4) on a generated set of ``--train_images`` images in a temp folder.
``--mode``:

* ``loop`` (default): the real loop, ``deim_jax.train.loop.train_and_evaluate``: per-epoch
  checkpoints (orbax, last ``keep_checkpoints`` kept), TensorBoard scalars every ``--log_every``
  steps, one evaluation at the end;
* ``train_path``: only what each step runs (train iterator, ``global_batch``, the jitted train
  step of ``deim_jax.train.setup``), no checkpoints, writer or evaluation;
* ``checkpoints``: only the per-epoch checkpoint saves of the loop (same manager and state, one
  save per ``steps per epoch`` steps), no training.

Mosaic and MixUp are on for every epoch (``policy_epochs`` / ``mixup_epochs`` / ``stop_epoch``
pushed past the run); multi-scale stays as the recipe has it (off: the demo/N recipe has
``base_size_repeat=None``; ``--config.data.base_size_repeat=R`` turns it on, at the cost of 11
train-step compiles). ``epochs`` is derived from ``--steps``.

RSS is ``VmRSS`` of ``/proc/self/status``, read (a) at every progress line of the loop (a logging
handler: exact steps, every ``--log_every`` steps and at every epoch end; the other modes sample at
the same steps), (b) every ``--interval`` seconds by a background thread (peaks during
checkpointing and the final evaluation) and (c) before and after every generation-2 collection of
Python's garbage collector (``gc.callbacks``; nothing is collected by this script). Warm-up is the
first ``--warmup`` fraction of the steps (compilation, first epochs, allocator pools). Reported:
RSS at the end of warm-up and at the last step, the peak, growth % after warm-up (last step vs
warm-up end, and the least-squares line over the post-warm-up step samples) and its slope in MiB
per 1,000 steps. Passes if both growth figures are under ``--max_growth`` % (default 5); exits 1
otherwise.

Appends a row to ``benchmarks/results/memory_growth_<platform>.md`` (or ``--out``) with date,
device and versions, plus an RSS-vs-step table, and writes the raw samples next to it as
``<out>_<mode>.json`` (the 1-second samples thinned if the file would pass ~48 KB).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time

import bench_common  # first: puts the repository on sys.path (run as python benchmarks/...)
from absl import flags
from ml_collections import config_flags

from deim_jax import cli
from tests import train_helpers

_NEVER = 10 ** 6  # an epoch the run never reaches

_CONFIG = config_flags.DEFINE_config_dict(
    "config", train_helpers.tiny_config("<generated>"),
    "The tiny config (tests.train_helpers.tiny_config); override fields with --config.a.b=value. "
    "Data paths, epochs and the augmentation epochs are set by this script.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 2000, "Train steps (at least; rounded up to whole epochs).")
_TRAIN_IMAGES = flags.DEFINE_integer("train_images", 64, "Generated train images (16 steps per epoch at batch 4).")
_LOG_EVERY = flags.DEFINE_integer("log_every", 50, "config.log_every_steps: progress lines = exact-step RSS samples.")
_INTERVAL = flags.DEFINE_float("interval", 1.0, "Seconds between background-thread RSS samples.")
_WARMUP = flags.DEFINE_float("warmup", 0.2, "Warm-up: this fraction of the steps.")
_MODE = flags.DEFINE_enum("mode", "loop", ["loop", "train_path", "checkpoints"], "What runs (see the docstring).")
_MAX_GROWTH = flags.DEFINE_float("max_growth", 5.0, "Pass criterion: growth after warm-up below this %.")
_OUT = flags.DEFINE_string("out", None, "Results file (default benchmarks/results/memory_growth_<platform>.md).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (default: a temp folder, removed at the end).")


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


class Sampler(logging.Handler):
    """Exact-step samples (``mark``; the loop's progress lines), a thread sampling every ``interval``
    seconds and samples before/after each generation-2 garbage collection."""

    _LINE = re.compile(r"^step (\d+)/(\d+) ")

    def __init__(self, interval: float):
        super().__init__(logging.INFO)
        self.t0 = time.monotonic()
        self.step = 0
        self.at_steps = []   # [seconds, step, MiB] at progress lines
        self.timed = []      # [seconds, last marked step, MiB] every interval
        self.gc2 = []        # [seconds, last marked step, MiB before, MiB after] per gen-2 collection
        self._gc_before = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _sample(self):
        return [round(time.monotonic() - self.t0, 2), self.step, round(rss_mib(), 1)]

    def mark(self, step: int):
        self.step = int(step)
        self.at_steps.append(self._sample())

    def emit(self, record):
        m = self._LINE.match(record.getMessage())
        if m:
            self.mark(int(m.group(1)))

    def _on_gc(self, phase, info):
        if info["generation"] != 2:
            return
        if phase == "start":
            self._gc_before = rss_mib()
        elif self._gc_before is not None:
            self.gc2.append(self._sample()[:2] + [round(self._gc_before, 1), round(rss_mib(), 1)])

    def _run(self, interval):
        while not self._stop.wait(interval):
            self.timed.append(self._sample())

    def __enter__(self):
        self.timed.append(self._sample())
        self._thread.start()
        gc.callbacks.append(self._on_gc)
        logging.getLogger("deim_jax.train.loop").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("deim_jax.train.loop").removeHandler(self)
        gc.callbacks.remove(self._on_gc)
        self._stop.set()
        self._thread.join()
        self.timed.append(self._sample())


def _marks(step, spe, every, total):
    return step % every == 0 or step % spe == 0 or step == total


def run_train_path(cfg, total, spe, sampler):
    """The per-step work of the loop (iterator, global batch, jitted step), nothing else."""
    import jax
    from deim_jax import data as data_lib
    from deim_jax import models
    from deim_jax.train import setup as setup_lib
    from deim_jax.train import sharding

    mesh = sharding.make_mesh()
    records = data_lib.load_split(cfg.data, "train")
    s = setup_lib.setup(cfg, mesh, spe)
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
    state = setup_lib.init_state(s, models.init(s.model, cfg, init_rng), state_rng)
    it = data_lib.build_train_iterator(cfg.data, seed=cfg.seed, records=records)
    for step in range(1, total + 1):
        local = next(it)
        batch = sharding.global_batch({k: local[k] for k in ("image", "boxes", "labels", "mask")}, mesh)
        state, metrics = s.train_step(state, batch)
        bool(metrics["finite"])  # waits for the step, as the loop's finiteness check
        if _marks(step, spe, _LOG_EVERY.value, total):
            sampler.mark(step)
            if step % 200 == 0 or step == total:
                print(f"step {step}/{total} loss {float(metrics['loss']):.4f} RSS {sampler.at_steps[-1][2]:.1f} MiB",
                      flush=True)
    return {}


def run_checkpoints(cfg, workdir, total, spe, sampler):
    """The loop's per-epoch checkpoint saves of an initial train state, nothing else."""
    import jax
    from deim_jax import models
    from deim_jax.train import checkpoints
    from deim_jax.train import setup as setup_lib
    from deim_jax.train import sharding

    s = setup_lib.setup(cfg, sharding.make_mesh(), spe)
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
    state = setup_lib.init_state(s, models.init(s.model, cfg, init_rng), state_rng)
    with checkpoints.CheckpointManager(os.path.join(workdir, "checkpoints"), max_to_keep=cfg.keep_checkpoints) as mngr:
        for step in range(spe, total + 1, spe):
            mngr.save(step, state, dict(epoch=step // spe, pos=0, step_in_epoch=0), cfg, force=True)
            sampler.mark(step)
            if step % 200 < spe or step == total:
                print(f"step {step}/{total} ({step // spe} saves) RSS {sampler.at_steps[-1][2]:.1f} MiB", flush=True)
    return {}


def fit_slope(xs, ys):
    """Least-squares slope and intercept of ys over xs."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return slope, my - slope * mx


def summarize(at_steps, timed, gc2, total_steps, warmup_steps):
    """Figures of a run from its samples (lists of [seconds, step, MiB])."""
    after = [s for s in at_steps if s[1] >= warmup_steps]
    if len(after) < 2:
        raise ValueError(f"fewer than 2 samples after warm-up (step {warmup_steps}): run more steps")
    warm, end = after[0], after[-1]
    xs, ys = [s[1] for s in after], [s[2] for s in after]
    slope, icpt = fit_slope(xs, ys)
    fit_growth = 100 * slope * (xs[-1] - xs[0]) / (slope * xs[0] + icpt)
    gc_after = [g for g in gc2 if warmup_steps <= g[1] <= end[1]]
    return dict(
        total_steps=total_steps, warmup_steps=warmup_steps, warmup_end_step=warm[1],
        rss_start_mib=timed[0][2], rss_warmup_end_mib=warm[2], rss_end_mib=end[2], end_step=end[1],
        rss_peak_mib=max(s[2] for s in at_steps + timed),
        rss_peak_after_warmup_mib=max([s[2] for s in after] + [s[2] for s in timed if warmup_steps <= s[1] <= end[1]]),
        growth_pct=100 * (end[2] - warm[2]) / warm[2], fit_growth_pct=fit_growth, slope_mib_per_1k=1000 * slope,
        gen2_collections=len(gc2),
        rss_after_gen2_first_last_mib=[gc_after[0][3], gc_after[-1][3]] if gc_after else None)


def series_table(at_steps, every):
    """Markdown rows of RSS at (about) every ``every`` steps (the first progress sample at or after each
    mark) and at the last step."""
    rows, mark = [], 0
    for k, (_, step, mib) in enumerate(at_steps):
        if step >= mark or k == len(at_steps) - 1:
            rows.append(f"| {step} | {mib:.1f} |")
            mark = (step // every + 1) * every
    return ["| step | RSS MiB |", "|---:|---:|"] + rows


def main(argv):
    del argv
    import jax
    from deim_jax.train import loop

    cfg = _CONFIG.value
    tmp = tempfile.mkdtemp(prefix="deim_memory_growth_")
    root = train_helpers.tiny_dataset(os.path.join(tmp, "data"), num_train=_TRAIN_IMAGES.value)
    workdir = _WORKDIR.value or os.path.join(tmp, "run")
    for split in ("train", "val"):
        cfg.data[split].images = f"{root}/{split}"
        cfg.data[split].annotations = f"{root}/annotations/instances_{split}.json"
    spe = _TRAIN_IMAGES.value // int(cfg.batch_size)
    cfg.epochs = epochs = math.ceil(_STEPS.value / spe)
    total = epochs * spe
    # augmentation on for the whole run: mosaic (epoch < e1) and mixup in every epoch, multi-scale
    # (if the recipe has it) too, no stage-2 reload; evaluation only at the last step
    cfg.data.policy_epochs = (0, _NEVER, _NEVER)
    cfg.data.mixup_epochs = (0, _NEVER)
    cfg.data.stop_epoch = _NEVER
    cfg.eval_every_epochs = _NEVER
    cfg.log_every_steps = _LOG_EVERY.value
    warmup = int(round(_WARMUP.value * total))
    print(f"{total} steps ({epochs} epochs x {spe}), warm-up {warmup} steps; data {root}, workdir {workdir}")

    mode = _MODE.value
    t0 = time.perf_counter()
    with Sampler(_INTERVAL.value) as sampler:
        if mode == "loop":
            metrics = loop.train_and_evaluate(cfg, workdir)
        elif mode == "train_path":
            metrics = run_train_path(cfg, total, spe, sampler)
        else:
            metrics = run_checkpoints(cfg, workdir, total, spe, sampler)
    wall = time.perf_counter() - t0
    r = summarize(sampler.at_steps, sampler.timed, sampler.gc2, total, warmup)
    r.update(mode=mode, train_images=_TRAIN_IMAGES.value, steps_per_epoch=spe, wall_s=round(wall, 1),
             rss_after_run_mib=round(rss_mib(), 1), final_ap=metrics.get("AP"))
    ok = r["growth_pct"] < _MAX_GROWTH.value and r["fit_growth_pct"] < _MAX_GROWTH.value
    print(json.dumps(r, indent=1))

    out = _OUT.value or os.path.join(bench_common.REPO, "benchmarks", "results",
                                     f"memory_growth_{jax.devices()[0].platform}.md")
    desc = bench_common.device_description()
    floors = r["rss_after_gen2_first_last_mib"]
    bench_common.append_row(
        out, "# Host RSS over a long tiny-config run, Mosaic + MixUp on",
        ["date, device", "mode", "train images", "steps (epochs)", "wall s", "warm-up steps", "RSS start MiB",
         "RSS warm-up end MiB", "RSS end MiB", "peak MiB", "growth after warm-up %", "fit growth %",
         "slope MiB/1k steps", "gen-2 GCs (RSS after first, last past warm-up)", "pass"],
        [desc, mode, str(_TRAIN_IMAGES.value), f"{total} ({epochs})", f"{wall:.0f}", str(warmup),
         f"{r['rss_start_mib']:.0f}", f"{r['rss_warmup_end_mib']:.1f}", f"{r['rss_end_mib']:.1f}",
         f"{r['rss_peak_mib']:.1f}", f"{r['growth_pct']:+.2f}", f"{r['fit_growth_pct']:+.2f}",
         f"{r['slope_mib_per_1k']:+.2f}", f"{r['gen2_collections']}" + (f" ({floors[0]:.0f}, {floors[1]:.0f})" if floors else ""),
         "yes" if ok else "NO"])
    with open(out, "a") as f:
        f.write(f"\nRSS vs step, mode {mode}, {_TRAIN_IMAGES.value} train images, {desc} "
                f"(`python benchmarks/memory_growth.py {' '.join(sys.argv[1:])}`):\n\n")
        f.write("\n".join(series_table(sampler.at_steps, max(total // 10, 1))) + "\n")
    raw = dict(device=desc, command=sys.argv, results=r, columns=["seconds", "step", "rss_mib"],
               at_steps=sampler.at_steps, timed=sampler.timed, timed_every=1,
               gc2_columns=["seconds", "step", "rss_mib_before", "rss_mib_after"], gc2=sampler.gc2)
    text = json.dumps(raw, separators=(",", ":"))
    while len(text) > 48_000 and raw["timed_every"] < 64:  # keep the raw file small: thin the timed samples
        raw["timed_every"] *= 2
        raw["timed"] = sampler.timed[::raw["timed_every"]]
        text = json.dumps(raw, separators=(",", ":"))
    with open(f"{os.path.splitext(out)[0]}_{mode}.json", "w") as f:
        f.write(text)
    if not _WORKDIR.value:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"growth after warm-up {r['growth_pct']:+.2f}% (fit {r['fit_growth_pct']:+.2f}%), "
          f"slope {r['slope_mib_per_1k']:+.2f} MiB/1k steps: {'PASS' if ok else 'FAIL'} (< {_MAX_GROWTH.value}%)")
    return 0 if ok else 1


if __name__ == "__main__":
    cli.run(main)
