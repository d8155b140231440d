#!/usr/bin/env bash
# The GPU check on one H100/H200 (~8 min): see benchmarks/gpu_check.py. Usage, from the repo
# root on the GPU machine: bash benchmarks/gpu_check.sh   (or: make gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."
make venv VENV_FLAGS=--system-site-packages TORCH_SPEC=
exec .venv/bin/python -m benchmarks.gpu_check "$@"
