"""Find experiment configs by name: ``get_config('dfine_l')``, ``get_config('dfine_l_baseline')``, or a file path.

Config files live in the repository's top-level ``configs/`` folder (loaded from there, never
installed as a package); each defines ``get_config(arg=None) -> ml_collections.ConfigDict``.
A family file declares the names it serves: ``NAMES`` (sizes) and ``RECIPES`` (variants), so
``configs/dfine.py`` with ``NAMES = ('n', ..., 'x')`` and ``RECIPES = ('baseline',)`` answers
``dfine_l`` as ``get_config('l')`` and ``dfine_l_baseline`` as ``get_config('l,baseline')``.
A file without ``NAMES`` (``demo.py``) is one name. The returned config is locked: setting a
field it does not have is an error that names the field.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import List, Optional, Tuple

import ml_collections

from deim_jax.errors import ConfigError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")


def module(stem: str):
    """The module of ``configs/<stem>.py`` (e.g. ``module("defaults")``, the block defaults)."""
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)  # config files import each other as `configs.<file>`
    return importlib.import_module(f"configs.{stem}")


def _config_files() -> List[str]:
    return sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and not f.startswith("_"))


def available() -> List[str]:
    """Every name ``get_config`` accepts."""
    names = []
    for stem in _config_files():
        m = module(stem)
        if hasattr(m, "NAMES"):
            names.extend(f"{stem}_{n}" for n in m.NAMES)
            names.extend(f"{stem}_{n}_{r}" for n in m.NAMES for r in getattr(m, "RECIPES", ()))
        elif hasattr(m, "get_config"):
            names.append(stem)
    return names


def resolve(name: str) -> Tuple[str, Optional[str]]:
    """Name or path -> (config file path, ``get_config`` argument)."""
    path, _, arg = name.partition(":")
    if os.path.isfile(path):
        return os.path.abspath(path), arg or None
    if os.path.isfile(os.path.join(CONFIG_DIR, f"{path}.py")):
        return os.path.join(CONFIG_DIR, f"{path}.py"), arg or None
    for stem in _config_files():
        if not path.startswith(stem + "_"):
            continue
        m = module(stem)
        size, *recipe = path[len(stem) + 1:].split("_", 1)
        if size in getattr(m, "NAMES", ()) and all(r in getattr(m, "RECIPES", ()) for r in recipe):
            return os.path.join(CONFIG_DIR, f"{stem}.py"), ",".join([size, *recipe])
    raise ConfigError(f"unknown config {name!r}: not a file and not one of: {', '.join(available())}")


def load_file(path: str, arg: Optional[str] = None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of a config file, locked."""
    if os.path.dirname(os.path.abspath(path)) == CONFIG_DIR:
        mod = module(os.path.basename(path)[:-3])
    else:
        if REPO_ROOT not in sys.path:
            sys.path.insert(0, REPO_ROOT)
        spec = importlib.util.spec_from_file_location(f"_deim_config_{abs(hash(path))}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    if not hasattr(mod, "get_config"):
        raise ConfigError(f"{path}: a config file must define get_config()")
    cfg = mod.get_config(arg) if arg is not None else mod.get_config()
    cfg.lock()
    return cfg


def get_config(name: str) -> ml_collections.ConfigDict:
    """Config by name (``dfine_l``, ``dfine_l_baseline``, ``demo``) or path (``path/to/cfg.py[:arg]``)."""
    return load_file(*resolve(name))
