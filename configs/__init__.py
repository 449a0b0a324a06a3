"""Experiment configs: Python files whose ``get_config(arg)`` returns an ``ml_collections.ConfigDict``.

Resolve them by name with ``deim_jax.configs.get_config('dfine_l')`` or on the
command line with ``python -m deim_jax.main --config=dfine_l``.
"""
