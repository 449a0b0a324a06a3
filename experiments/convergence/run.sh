#!/usr/bin/env bash
# Rerun (or resume) the whole convergence study, then write its report; arguments go to run.py
# (e.g. --seeds=0,1,2, --report). Needs the experiments extra: scripts/setup.sh test,torch,experiments
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-.venv/bin/python}" experiments/convergence/run.py "$@"
