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


def assert_same_state_dict(actual, expected):
    """Every entry of ``expected`` bit-identical in ``actual`` (same keys, dtypes, shapes), except the
    constants the converter recomputes from the config (anchors, valid mask, point scales): those
    come from this machine's float32 log, which differs by an ulp between CPUs from the fixture
    machine's, and are held to the converter's own acceptance rule (``convert._same_derived``)."""
    from deim_jax import convert

    assert sorted(actual) == sorted(expected)
    for k, v in expected.items():
        assert actual[k].dtype == v.dtype and actual[k].shape == v.shape, k
        if convert._DERIVED.match(k):
            assert convert._same_derived(actual[k], v), k
        else:
            np.testing.assert_array_equal(actual[k], v, err_msg=k)

