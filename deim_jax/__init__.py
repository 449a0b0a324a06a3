"""deim_jax: DEIM (DETR with Improved Matching) training in JAX/Flax."""

__version__ = "0.1.0"
