"""Host memory per orbax checkpoint save, and the tensorstore leak behind part of it.

    python benchmarks/checkpoint_save_growth.py [--leaves=600] [--saves=120] [--variants=ocdbt,no_ocdbt]

Saves a pytree of ``--leaves`` small float32 arrays ``--saves`` times with the project's
``checkpoints.CheckpointManager`` (last 3 kept, as the loop does), each variant in a fresh
process, and reports the RSS growth per save after the first 20 saves. Variants:

* ``ocdbt``: as the loop saves (orbax's default OCDBT format);
* ``no_ocdbt``: ``StandardCheckpointHandler(use_ocdbt=False)`` (one zarr folder per array);
* ``shared_context``: orbax's per-save TensorStore context reused for every save;
* ``no_spec_to_json``: orbax's one ``ts.KvStore.Spec(...).to_json()`` call per array replaced by
  the plain dict it returns for a local path.

It also measures that call alone: Python memory still allocated (``tracemalloc``) after 20,000
calls of ``ts.KvStore.Spec({'driver': 'file', 'path': ...}).to_json()`` and the objects kept alive
per call. Appends a row to ``benchmarks/results/checkpoint_save_growth_<platform>.md``.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import tracemalloc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("ocdbt", "no_ocdbt", "shared_context", "no_spec_to_json")
WARMUP_SAVES = 20


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _apply(variant: str) -> None:
    """Patch orbax for ``variant`` (in this process only)."""
    import functools

    import orbax.checkpoint as ocp
    from orbax.checkpoint._src.serialization import tensorstore_utils

    if variant == "no_ocdbt":
        handler = ocp.StandardCheckpointHandler
        ocp.StandardCheckpointHandler = lambda **kw: handler(use_ocdbt=False, **kw)
    elif variant == "shared_context":
        tensorstore_utils.get_ts_context = functools.lru_cache(maxsize=None)(tensorstore_utils.get_ts_context)
    elif variant == "no_spec_to_json":
        import types

        import tensorstore

        class _KvStore(type):
            def __getattr__(cls, name):
                return getattr(tensorstore.KvStore, name)

        class _Spec:
            def __init__(self, spec):
                self.spec = spec

            def to_json(self):
                return dict(self.spec)

        shim = types.ModuleType("tensorstore_shim")
        shim.__dict__.update(tensorstore.__dict__)
        shim.KvStore = _KvStore("KvStore", (), {"Spec": _Spec})
        tensorstore_utils.ts = shim


def measure_saves(variant: str, leaves: int, saves: int) -> float:
    """RSS growth in MiB per save after ``WARMUP_SAVES`` saves."""
    sys.path.insert(0, REPO)
    _apply(variant)
    import jax.numpy as jnp

    from deim_jax.train import checkpoints

    state = {f"p{i}": jnp.full((64, 64), float(i)) for i in range(leaves)}
    with tempfile.TemporaryDirectory() as d:
        mngr = checkpoints.CheckpointManager(d, max_to_keep=3)
        for i in range(saves):
            mngr.save(i, state, metrics={"AP": 0.0})
            mngr.wait_until_finished()
            if i == WARMUP_SAVES - 1:
                gc.collect()
                start = rss_mib()
        gc.collect()
        mngr.close()
        return (rss_mib() - start) / (saves - WARMUP_SAVES)


def measure_to_json(calls: int = 20000):
    """(bytes still allocated per call, objects kept alive per call) of ``KvStore.Spec.to_json``."""
    import tensorstore as ts

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(calls):
        ts.KvStore.Spec({"driver": "file", "path": f"/tmp/probe/{i}/"}).to_json()
    gc.collect()
    grown = [s for s in tracemalloc.take_snapshot().compare_to(before, "filename") if s.size_diff > 0]
    tracemalloc.stop()
    return sum(s.size_diff for s in grown) / calls, sum(s.count_diff for s in grown) / calls


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--leaves", type=int, default=600)
    p.add_argument("--saves", type=int, default=120)
    p.add_argument("--variants", default="ocdbt,no_ocdbt,shared_context,no_spec_to_json")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one variant in this process
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if a.one:
        print(f"{measure_saves(a.one, a.leaves, a.saves):.4f}")
        return 0
    sys.path.insert(0, REPO)
    from benchmarks.bench_common import append_row, device_description

    per_save = {}
    for v in a.variants.split(","):
        if v not in VARIANTS:
            raise SystemExit(f"--variants: {v!r} is not one of {VARIANTS}")
        r = subprocess.run([sys.executable, __file__, f"--one={v}", f"--leaves={a.leaves}", f"--saves={a.saves}"],
                           capture_output=True, text=True, check=True)
        per_save[v] = float(r.stdout.split()[-1])
        print(f"{v}: {per_save[v]:.3f} MiB per save", flush=True)
    nbytes, objects = measure_to_json()
    print(f"KvStore.Spec.to_json: {nbytes:.0f} B and {objects:.1f} objects kept per call")
    import orbax.checkpoint
    import tensorstore  # noqa: F401
    from importlib.metadata import version

    out = a.out or os.path.join(REPO, "benchmarks", "results", "checkpoint_save_growth_cpu.md")
    append_row(out, "Host RSS per orbax checkpoint save (after 20 saves), and the tensorstore to_json leak",
               ["date, device", "orbax-checkpoint / tensorstore", "arrays", "saves"]
               + [f"{v} MiB/save" for v in per_save] + ["to_json: B, objects kept per call"],
               [device_description(), f"{orbax.checkpoint.__version__} / {version('tensorstore')}", str(a.leaves),
                str(a.saves)] + [f"{x:.3f}" for x in per_save.values()] + [f"{nbytes:.0f}, {objects:.1f}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
