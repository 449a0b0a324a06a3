"""deim_jax: DEIM (DETR with Improved Matching) training in JAX/Flax."""

import os as _os

# TensorFlow (the input pipeline) is chatty at import time; keep its C++ log to warnings and errors.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
