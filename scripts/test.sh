#!/usr/bin/env bash
# Install Corral with its test extras, check lint and types, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh "[test]"
.venv/bin/ruff check corral tests bench
.venv/bin/mypy corral
exec .venv/bin/python -m pytest -q "$@"
