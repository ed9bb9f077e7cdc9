#!/usr/bin/env bash
# Creates .venv with everything the demo, the benchmark and the tests need. Idempotent; needs only
# python3 (3.10+), pip access to PyPI and, for the browser test, Debian's chromium (installed when root).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${PIP[@]}" torch==2.13.0  # the CPU wheel; a CUDA torch already in .venv is kept only if it is this version
# ldm (the U-Net code A1111 runs for SD1/SD2) and k-diffusion declare ancient or heavy pins: no deps
"${PIP[@]}" --no-deps stable-diffusion-sdkit==2.1.5 k-diffusion==0.1.1.post1
"${PIP[@]}" -r requirements-test.txt
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "dev/setup.sh: could not install chromium; the browser test will be skipped" >&2
fi
# Forge's gradio 4.40 (its pins) in a second venv, for tests/test_forge_ui.py; its own .gitignore keeps it out of
# git and ruff
[ -x .venv-gradio4/bin/python ] || "$PY" -m venv .venv-gradio4
echo '*' > .venv-gradio4/.gitignore
G4=(.venv-gradio4/bin/python -m pip install -q --disable-pip-version-check)
"${G4[@]}" torch==2.13.0
"${G4[@]}" -r requirements-gradio4.txt
