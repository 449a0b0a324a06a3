#!/usr/bin/env bash
# What benchmarks/accelerator.sh needs on the accelerator image and that image lacks, fetched here
# (where pip reaches PyPI) into .whl/: ml_collections (pure Python; absl-py and PyYAML are there).
# Also copies an official DEIM tree to .official/ when DEIM_OFFICIAL_DIR names one. Both are ignored
# by git; carry them to the device with the run.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl ml_collections==1.1.0
if [ -n "${DEIM_OFFICIAL_DIR:-}" ] && [ ! -d .official ]; then
  cp -r "$DEIM_OFFICIAL_DIR" .official
fi
ls -la .whl
