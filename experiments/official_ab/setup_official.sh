#!/usr/bin/env bash
# A Python environment for the official DEIM trainer at .venv-official (repository root): torch's CPU
# wheel, torchvision 0.16.2 without its dependencies (they would pull another torch), faster-coco-eval,
# and what the official train.py imports (calflops, for its FLOPs line, needs transformers and accelerate). Usage: experiments/official_ab/setup_official.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x .venv-official/bin/python ]; then
  python3.11 -m venv .venv-official 2>/dev/null || python3 -m venv .venv-official
fi
.venv-official/bin/python -m pip install -q torch==2.13.0 numpy==2.4.6 pillow==13.0.0 pyyaml==6.0.4 scipy==1.17.1 \
  tensorboard==2.21.0 faster-coco-eval==1.8.0 requests==2.34.2 \
  calflops==0.3.2 transformers==5.24.0 accelerate==1.15.0
.venv-official/bin/python -m pip install -q --no-deps torchvision==0.16.2
