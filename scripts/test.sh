#!/usr/bin/env bash
# Install everything the tests need, check lint and types, then run the whole test suite.
# System packages the tests start themselves (PostgreSQL, Chromium) come from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (Debian packages)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
bash scripts/install.sh "[test]"
.venv/bin/ruff check corral tests bench
.venv/bin/ruff format --check corral tests bench
.venv/bin/mypy corral
# Test files run in parallel workers, longest first (tests/conftest.py): most of the suite waits on
# servers and sockets, so three workers keep two cores busy. CORRAL_TEST_WORKERS=0 runs it in one process.
exec .venv/bin/python -m pytest -q -n "${CORRAL_TEST_WORKERS:-3}" --dist loadfile --no-loadscope-reorder "$@"
