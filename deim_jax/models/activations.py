"""Activations by the names the configs use (PyTorch's definitions)."""

from __future__ import annotations

from typing import Callable, Optional

import jax


def gelu_exact(x):
    """GELU with erf, as torch.nn.GELU() (jax.nn.gelu defaults to the tanh form)."""
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS = {
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "gelu": gelu_exact,
    "identity": lambda x: x,
    None: lambda x: x,
}


def get_activation(name: Optional[str]) -> Callable:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(k for k in ACTIVATIONS if k)}")
    return ACTIVATIONS[name]
