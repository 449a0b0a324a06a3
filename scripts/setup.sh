#!/usr/bin/env bash
# Create (or update) the project environment at .venv in the repository root.
# Usage: scripts/setup.sh [extras]   (default extras: test,torch,experiments)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test,torch,experiments}"
if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${extras}]"
