#!/usr/bin/env bash
# The GPU figures of the README: plain CFG vs S-CFG on whole generations with random weights (bench/gpu.py).
# One H100: about 4-6 minutes. `bench/gpu.sh --small` runs small networks on the CPU (a check that it works).
# PYTHON: an interpreter with CUDA torch, stable-diffusion-sdkit (ldm) and this repository's requirements
# (default: the repository's .venv when there is one).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" bench/gpu.py "$@"
