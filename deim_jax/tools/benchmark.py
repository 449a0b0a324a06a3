"""Inference speed of a config: latency, throughput, compile time, FLOPs, memory, and the official
PyTorch model side by side.

    python -m deim_jax.tools.benchmark --config=NAME [--batch=1,32] [--dtype=float32,bfloat16] [--deploy]
        [--size=640] [--runs=50] [--peak_tflops=989] [--official=DIR] [--out=benchmarks/results]

For every batch and dtype: the eval-mode forward (``train.make_predict_step``; ``--deploy``: the
weights folded by ``models.fusion``) is jitted, its compile time taken, run ``--warmup`` times and
then ``--runs`` times: latency median and p90, images/s at the median, FLOPs from XLA's cost
analysis, achieved TFLOP/s (and the share of ``--peak_tflops``), and peak memory (XLA's memory
analysis of the program; the device's peak where it reports one). Weights are random unless
``--workdir``/``--checkpoint``/``--weights`` gives them: speed does not depend on their values.

``--official=DIR`` (an official DEIM source tree) times the official model of the same config
(DEIM's YAML for ``dfine_*`` and ``rtdetrv2_*``) with the same weights
(``convert.to_torch_state_dict``; ``deploy()`` with ``--deploy``) on the same input in the same
run, float32, in ``--official_python`` (``official_forward.py``; torch, torchvision and the tree's
requirements, as ``experiments/official_ab/setup_official.sh`` installs them), and gives the
ratio; it warns when the two models' top scores differ by more than 1e-3. Results go to ``--out`` as ``benchmark_<config>_<platform>.md`` and ``.json`` with the date,
device and versions.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from typing import Dict, List

import numpy as np
from absl import flags

from deim_jax import cli, configs
from deim_jax.tools import speed

_CONFIG = cli.define_config_flag()
_BATCH = flags.DEFINE_string("batch", "1", "Comma-separated batch sizes.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Comma-separated compute dtypes (float32, bfloat16).")
_DEPLOY = flags.DEFINE_bool("deploy", False, "Fold BatchNorms and RepVGG blocks (models.fusion) first.")
_SIZE = flags.DEFINE_integer("size", None, "Square input size (default: the config's eval_spatial_size).")
_RUNS = flags.DEFINE_integer("runs", 50, "Timed runs per setting.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed runs after compiling.")
_PEAK = flags.DEFINE_float("peak_tflops", None, "The device's peak TFLOP/s, for the share achieved.")
_OFFICIAL = flags.DEFINE_string("official", None, "Official DEIM source tree: time the PyTorch model too.")
_OUT = flags.DEFINE_string("out", os.path.join(configs.REPO_ROOT, "benchmarks", "results"), "Results folder.")
_OFFICIAL_PYTHON = flags.DEFINE_string("official_python", sys.executable, "Python with torch, torchvision and the "
                                       "official tree's requirements (experiments/official_ab/setup_official.sh).")
_WEIGHT_FLAGS = cli.define_weights_flags()

def markdown(meta: Dict, rows: List[Dict]) -> str:
    cols = ["impl", "batch", "dtype", "compile_s", "median_ms", "p90_ms", "images_per_s", "gflops", "tflops_per_s",
            "peak_share", "program_mib", "device_peak_mib", "speedup_vs_official", "top_score_diff_vs_official"]
    present = [c for c in cols if any(c in r for r in rows)]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"# {meta['config']}: inference benchmark", "", f"{meta['date']}, {meta['device']}; jax {meta['jax']}, "
             f"{meta['size'][0]}x{meta['size'][1]}, deploy fusion {'on' if meta['deploy'] else 'off'}, "
             f"{meta['runs']} timed runs after {meta['warmup']} warm-up", "",
             "| " + " | ".join(present) + " |", "|" + "---|" * len(present)]
    lines += ["| " + " | ".join(fmt(r.get(c, "-")) for c in present) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    import jax

    from deim_jax import models
    from deim_jax.deploy import weights as deploy_weights
    from deim_jax.models import fusion

    cfg = cli.require_config(_CONFIG)
    batches = [int(b) for b in _BATCH.value.split(",")]
    dtypes = _DTYPE.value.split(",")
    size = (_SIZE.value, _SIZE.value) if _SIZE.value else tuple(cfg.eval_spatial_size)
    if any(_WEIGHT_FLAGS.values().values()):
        variables = deploy_weights.load(cfg, **_WEIGHT_FLAGS.values()).variables
    else:
        variables = jax.tree_util.tree_map(np.asarray, models.init(models.build(cfg), cfg, jax.random.PRNGKey(0)))
    run_vars = fusion.fold(variables) if _DEPLOY.value else variables
    dev = jax.devices()[0]
    meta = {"config": cfg.name, "date": str(datetime.date.today()), "size": list(size), "deploy": _DEPLOY.value,
            "runs": _RUNS.value, "warmup": _WARMUP.value, "jax": jax.__version__,
            "device": f"{len(jax.devices())}x {dev.platform} {dev.device_kind}, {os.cpu_count()} CPUs, {platform.machine()}"}
    rows = []
    for batch in batches:
        ref = speed.bench_official(cfg, _OFFICIAL.value, _OFFICIAL_PYTHON.value, variables, batch, size, _RUNS.value,
                             _WARMUP.value, _DEPLOY.value) if _OFFICIAL.value else None
        for dtype in dtypes:
            row = speed.bench_jax(cfg, run_vars, batch, dtype, size, _RUNS.value, _WARMUP.value)
            if _PEAK.value:
                row["peak_share"] = row["tflops_per_s"] / _PEAK.value
            if ref is not None:
                row["speedup_vs_official"] = ref["median_ms"] / row["median_ms"]
                diff = float(np.abs(speed.top_scores(row["_out"]["pred_logits"]) - speed.top_scores(ref["_out"]["pred_logits"])).max())
                row["top_score_diff_vs_official"] = diff
                if dtype == "float32" and diff > 1e-3:
                    print(f"warning: batch {batch}: deim_jax and the official model's top scores differ by {diff:.2g}")
            rows.append(row)
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                           if not k.startswith("_")), flush=True)
        if ref is not None:
            rows.append(ref)
    for r in rows:
        r.pop("_out", None)
    os.makedirs(_OUT.value, exist_ok=True)
    stem = os.path.join(_OUT.value, f"benchmark_{cfg.name}_{dev.platform}{'_deploy' if _DEPLOY.value else ''}")
    with open(stem + ".json", "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(meta, rows))
    print(f"wrote {stem}.md and .json")


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
