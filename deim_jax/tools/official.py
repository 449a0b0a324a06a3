"""Run the official DEIM code beside deim_jax: the official config of each of ours, and a runner for
the standalone scripts (``official_forward.py``, ``official_train_step.py``) that execute in a Python
with torch and the official tree's requirements (``experiments/official_ab/setup_official.sh``)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Dict, List, Optional

import numpy as np

from deim_jax import convert
from deim_jax.errors import UserError

OFFICIAL_YAML = {
    **{f"dfine_{s}": f"deim_dfine/deim_hgnetv2_{s}_coco.yml" for s in "nsmlx"},
    "rtdetrv2_r18": "deim_rtdetrv2/deim_r18vd_120e_coco.yml", "rtdetrv2_r34": "deim_rtdetrv2/deim_r34vd_120e_coco.yml",
    "rtdetrv2_r50": "deim_rtdetrv2/deim_r50vd_60e_coco.yml", "rtdetrv2_r50m": "deim_rtdetrv2/deim_r50vd_m_60e_coco.yml",
    "rtdetrv2_r101": "deim_rtdetrv2/deim_r101vd_60e_coco.yml",
}


def check(official: str, config_name: str) -> None:
    """A one-line ``UserError`` unless ``official`` is an official DEIM tree with a config for ours
    (call it before the long deim_jax measurement, not only when the official run starts)."""
    if config_name not in OFFICIAL_YAML:
        raise UserError(f"--official: no official config for --config={config_name} (one of {', '.join(OFFICIAL_YAML)})")
    if not os.path.isfile(os.path.join(official, "engine", "core", "__init__.py")):
        raise UserError(f"--official={official}: not an official DEIM source tree (no engine/core)")


def run(script: str, cfg, official: str, python: str, variables, size, args: List[str],
        arrays: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """Run ``script`` (``official_forward.py`` or ``official_train_step.py``, beside this file) in
    ``python`` on the official model of ``cfg`` with ``variables``; returns its result arrays.
    ``arrays`` go to the script as ``--batch=FILE.npz``."""
    check(official, cfg.name)
    cfg = cfg.copy_and_resolve_references()
    cfg.eval_spatial_size = tuple(size)  # the state dict's anchors are made for the benchmark's size
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(os.path.join(tmp, "state.npz"), **convert.to_torch_state_dict(variables, cfg))
        cmd = [python, os.path.join(os.path.dirname(__file__), script), f"--official={official}",
               f"--yaml={OFFICIAL_YAML[cfg.name]}", f"--state={tmp}/state.npz", f"--out={tmp}/out.npz", *args]
        if arrays is not None:
            np.savez(os.path.join(tmp, "batch.npz"), **arrays)
            cmd.append(f"--batch={tmp}/batch.npz")
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise UserError(f"--official: {script} failed in {python}: {r.stderr.strip().splitlines()[-1:]}")
        return dict(np.load(f"{tmp}/out.npz"))
