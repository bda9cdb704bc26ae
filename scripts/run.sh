#!/usr/bin/env bash
# One command: install, prepare the embedded defaults (SQLite + migrations, signing key, first admin; `init`
# trains nothing) and start the console on http://localhost:8501 at once. `llm-console run` builds the demo
# models in the background while the console starts: support-demo-v1 first (served as soon as it is built; the
# Chat page shows its progress and opens by itself), then support-demo-v2 at a lower CPU priority (Models page:
# "building"; log: data/demo-build.log). Re-running skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/llm-console init
exec .venv/bin/llm-console run "$@"
