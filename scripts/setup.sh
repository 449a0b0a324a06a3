#!/usr/bin/env bash
# Create (or update) the project environment at .venv in the repository root.
# Usage: scripts/setup.sh [extras]   (default extras: test,torch,experiments,onnx,video)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test,torch,experiments,onnx,video}"
# oneDNN's headers and library for the CPU convolutions (deim_jax/kernels/onednn.py builds them on
# first use); optional: without them the models use XLA's convolutions
if [ ! -e /usr/include/dnnl.hpp ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq libdnnl-dev >/dev/null) || echo "setup: libdnnl-dev not installed; XLA's convolutions on CPU"
fi
if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${extras}]"
if [[ ",${extras}," == *",onnx,"* ]]; then
  # the ONNX converter, without its dependency caps (see the onnx extra in pyproject.toml)
  .venv/bin/python -m pip install -q --no-deps jax2onnx==0.17.1
fi
