"""Find experiment configs by name: ``get_config('dfine_l')``, ``get_config('dfine_l_baseline')``, or a file path.

Config files live in the repository's top-level ``configs/`` folder; each defines
``get_config(arg=None) -> ml_collections.ConfigDict``. A name ``<file>_<arg>`` that is
not a file itself selects ``<file>.py`` with ``get_config('<arg>')`` (e.g. the
``_baseline`` recipes).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import List, Optional, Tuple

import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")
_VARIANTS = ("baseline",)


def available() -> List[str]:
    """Every name ``get_config`` accepts (files plus their variants)."""
    names = []
    for f in sorted(os.listdir(CONFIG_DIR)):
        if f.endswith(".py") and not f.startswith("_") and f != "__init__.py":
            stem = f[:-3]
            names.append(stem)
            if _has_variants(stem):
                names.extend(f"{stem}_{v}" for v in _VARIANTS)
    return names


def _has_variants(stem: str) -> bool:
    return stem.startswith(("dfine_", "rtdetrv2_"))


def resolve(name: str) -> Tuple[str, Optional[str]]:
    """Name or path -> (config file path, get_config argument)."""
    path, _, arg = name.partition(":")
    if os.path.isfile(path):
        return os.path.abspath(path), arg or None
    candidate = os.path.join(CONFIG_DIR, f"{path}.py")
    if os.path.isfile(candidate):
        return candidate, arg or None
    for v in _VARIANTS:
        stem = path[: -len(v) - 1]
        if path.endswith("_" + v) and os.path.isfile(os.path.join(CONFIG_DIR, f"{stem}.py")) and _has_variants(stem):
            return os.path.join(CONFIG_DIR, f"{stem}.py"), v
    raise ValueError(f"unknown config {name!r}: not a file and not one of: {', '.join(available())}")


def load_file(path: str, arg: Optional[str] = None) -> ml_collections.ConfigDict:
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)  # config files import their family module as `configs.<family>`
    if os.path.dirname(os.path.abspath(path)) == CONFIG_DIR:
        module = importlib.import_module(f"configs.{os.path.basename(path)[:-3]}")
    else:
        spec = importlib.util.spec_from_file_location(f"_deim_config_{abs(hash(path))}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path}: a config file must define get_config()")
    return module.get_config(arg) if arg is not None else module.get_config()


def get_config(name: str) -> ml_collections.ConfigDict:
    """Config by name (``dfine_l``, ``dfine_l_baseline``, ``demo``) or path (``path/to/cfg.py[:arg]``)."""
    return load_file(*resolve(name))
