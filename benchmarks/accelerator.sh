#!/usr/bin/env bash
# The accelerator suite in one command: train and eval speed of D-FINE N and L in float32 and
# bfloat16, the matcher's share of the step, TFLOP/s against the measured bf16 peak, and the official
# PyTorch code (AMP train step, eval latency) on the same device in the same run; one table, also
# written to benchmarks/results/accelerator_<platform>.md (benchmarks/accelerator.py says what each
# row is). Sized for at most 8 minutes on one H200.
#
#   benchmarks/accelerator.sh [--dry-run] [--find_max_batch] [other benchmarks/accelerator.py flags]
#
# The official tree is taken from .official/ (or DEIM_OFFICIAL_DIR), when there, and run in
# DEIM_OFFICIAL_PYTHON (default: the same Python, which has torch on the accelerator image). On an image without
# ml_collections (the accelerator image), the wheels in .whl/ are installed to /tmp first: fetch them
# here with benchmarks/accelerator_wheels.sh and carry .whl and .official to the device.
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
if ! "$py" -c "import ml_collections" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "error: ml_collections is not installed and .whl/ holds no wheels (run benchmarks/accelerator_wheels.sh)" >&2
    exit 2
  fi
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/deim_site .whl/*.whl
  export PYTHONPATH=/tmp/deim_site${PYTHONPATH:+:$PYTHONPATH}
fi
official="${DEIM_OFFICIAL_DIR:-.official}"
args=()
[ -d "$official/engine" ] && args+=(--official="$official")
[ -n "${DEIM_OFFICIAL_PYTHON:-}" ] && args+=(--official_python="$DEIM_OFFICIAL_PYTHON")
export PYTHONUNBUFFERED=1
exec "$py" benchmarks/accelerator.py "${args[@]}" "$@"
