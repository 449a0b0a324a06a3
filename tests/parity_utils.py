"""Shared helpers for tests that use the official parity fixtures."""

import functools
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY_DIR = os.environ.get("DEIM_PARITY_DIR", os.path.join(REPO, "..", "shared", "parity"))


def fixture_dir(name: str) -> str:
    path = os.path.join(PARITY_DIR, name)
    if not os.path.isdir(path):
        pytest.skip(f"parity fixtures not found at {path} (set DEIM_PARITY_DIR)")
    return path


@functools.lru_cache(maxsize=None)
def synth_state_dict(name: str):
    """Seed-0 synthetic weights of fixture ``name`` (dict torch key -> numpy array)."""
    from deim_jax.tools import parity

    sd, _ = parity.load_synth_weights(fixture_dir(name))
    return sd


def load_npz(name: str, file: str):
    return np.load(os.path.join(fixture_dir(name), file))
