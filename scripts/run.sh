#!/usr/bin/env bash
# One command: install, prepare the embedded defaults (SQLite + migrations, the served demo model, first admin)
# and start the console on http://localhost:8501. The console starts as soon as support-demo-v1 is built;
# `llm-console run` builds support-demo-v2 in the background (Models page: "building"). Re-running skips what
# is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/llm-console init
exec .venv/bin/llm-console run "$@"
