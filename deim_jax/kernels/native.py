"""Build and load this package's C++ FFI handlers: each source is compiled once per source text
and jax version into ``$DEIM_JAX_KERNEL_DIR`` (default ``~/.cache/deim_jax/kernels``)."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from typing import Optional, Sequence, Tuple

import jax

DIR_ENV = "DEIM_JAX_KERNEL_DIR"

log = logging.getLogger(__name__)


def library_path(source: str) -> str:
    """Where the compiled handlers of ``source`` (and this jax version) live."""
    with open(source, "rb") as f:
        key = hashlib.sha256(f.read() + jax.__version__.encode()).hexdigest()[:16]
    root = os.environ.get(DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "deim_jax", "kernels")
    stem = os.path.splitext(os.path.basename(source))[0]
    return os.path.join(root, f"{stem}-{key}.so")


def _build(source: str, path: str, libs: Sequence[str], missing_hint: str) -> Optional[str]:
    """Compile ``source`` to ``path`` (atomically); the reason on failure, else None."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        return "no C++ compiler (g++) found"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    os.close(fd)
    cmd = [compiler, "-O3", "-std=c++17", "-shared", "-fPIC", f"-I{jax.ffi.include_dir()}", source, "-o", tmp,
           *libs]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        os.remove(tmp)
        if missing_hint and ("No such file" in r.stderr or "cannot find" in r.stderr):
            return missing_hint
        return f"compiling {source} failed: {r.stderr.strip().splitlines()[-1:]}"
    os.replace(tmp, path)
    return None


def load(source: str, libs: Sequence[str] = (), missing_hint: str = "") -> Tuple[Optional[ctypes.CDLL], str]:
    """(the loaded library of ``source``, building it first if needed, "") or (None, the reason)."""
    path = library_path(source)
    reason = None if os.path.isfile(path) else _build(source, path, libs, missing_hint)
    if reason is not None:
        return None, reason
    try:
        return ctypes.cdll.LoadLibrary(path), ""
    except OSError as e:
        return None, f"loading {path} failed: {e}"


def enable(source: str, targets: dict, switch_env: str, off_message: str, libs: Sequence[str] = (),
           missing_hint: str = "", env_defaults: Optional[dict] = None) -> bool:
    """Build (first use), load and register ``source``'s handlers ``{ffi target: exported symbol}``;
    whether they can run here. Off where ``$switch_env`` is "0", off the CPU and with several
    devices (XLA cannot split a custom call over devices: it would gather the whole batch on each
    one); a failed build or load logs ``off_message: reason`` once. ``env_defaults``: environment
    variables set (where unset) before the library loads."""
    if os.environ.get(switch_env, "1") == "0" or jax.default_backend() != "cpu" or jax.device_count() > 1:
        return False
    for key, value in (env_defaults or {}).items():
        os.environ.setdefault(key, value)
    lib, reason = load(source, libs, missing_hint)
    if lib is None:
        log.info("%s: %s", off_message, reason)
        return False
    for name, symbol in targets.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    return True
