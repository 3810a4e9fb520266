#!/usr/bin/env bash
# Install everything, then start the server; a fresh store is seeded with the
# starter models (smollm2:135m, all-minilm). Extra args go to `corral serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/corral serve "$@"
