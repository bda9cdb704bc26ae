#!/usr/bin/env bash
# One command: install (with test tools) and run the whole test suite: lint, unit, integration, browser.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test

# The end-to-end tests drive Debian's Chromium through Playwright (Playwright's own browser download
# cannot work offline). Install it when missing and we are allowed to.
if ! command -v chromium >/dev/null 2>&1; then
    if [[ "$(id -u)" == "0" ]]; then
        echo "test: installing chromium (apt-get)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
            || echo "test: could not install chromium; browser tests will report it" >&2
    else
        echo "test: chromium is missing and we are not root; browser tests will report it" >&2
    fi
fi

echo "test: ruff"
.venv/bin/ruff check console engine db tests
echo "test: pytest"
exec .venv/bin/pytest "$@"
