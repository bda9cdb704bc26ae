#!/usr/bin/env bash
# One command: install, prepare the embedded defaults (SQLite + migrations, demo models, first admin)
# and start the console on http://localhost:8501. Re-running skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/llm-console init
exec .venv/bin/llm-console run "$@"
