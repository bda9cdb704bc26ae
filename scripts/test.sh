#!/usr/bin/env bash
# One command: install (with test tools) and run the whole test suite: lint, unit, integration, browser.
#   scripts/test.sh                   # everything (what .ci/run runs): PostgreSQL and Chromium set up when possible
#   scripts/test.sh --fast            # ruff, mypy and the fast tier: no browser, no PostgreSQL, no engine start,
#                                     # nothing marked slow (markers in pyproject.toml, tiers in tests/conftest.py)
#   scripts/test.sh --fast tests/chat # other arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

fast=""
for arg in "$@"; do
    if [[ "$arg" == "--fast" ]]; then fast=1; fi  # pytest itself takes --fast too (tests/conftest.py)
done

scripts/setup.sh --test

if [[ -n "$fast" ]]; then
    echo "test: ruff"
    .venv/bin/ruff check console engine db tests bench
    echo "test: mypy"
    .venv/bin/mypy
    echo "test: pytest (fast tier)"
    # No PostgreSQL here even when the shell has its URL: its tests are marked and left out anyway. One worker per
    # core (pytest-xdist), each test file on one worker so module-scoped fixtures are built once.
    exec env -u LLM_CONSOLE_TEST_POSTGRES_URL .venv/bin/pytest -n auto --dist loadfile "$@"
fi

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

# The store's tests also run on PostgreSQL when a server is at hand: LLM_CONSOLE_TEST_POSTGRES_URL, or a
# throwaway cluster started here from the machine's PostgreSQL binaries (stopped when the tests end).
pg_dir=""
stop_pg() { [[ -n "$pg_dir" ]] && $as_pg pg_ctl -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true; }
if [[ -z "${LLM_CONSOLE_TEST_POSTGRES_URL:-}" ]] && command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    as_pg=""
    if [[ "$(id -u)" == "0" ]]; then as_pg="runuser -u postgres --"; fi  # postgres refuses to run as root
    pg_dir="$(mktemp -d)"
    pg_port="$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    [[ -n "$as_pg" ]] && chown postgres "$pg_dir"
    if $as_pg initdb -D "$pg_dir/data" -A trust -U postgres >"$pg_dir/initdb.log" 2>&1 \
        && $as_pg pg_ctl -D "$pg_dir/data" -l "$pg_dir/server.log" -w \
            -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1" start >/dev/null; then
        export LLM_CONSOLE_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:${pg_port}/postgres"
        echo "test: PostgreSQL for the store tests on port ${pg_port}"
        trap stop_pg EXIT
    else
        echo "test: could not start PostgreSQL (see $pg_dir); its store tests will be skipped" >&2
        pg_dir=""
    fi
fi

echo "test: ruff"
.venv/bin/ruff check console engine db tests bench
echo "test: mypy"
.venv/bin/mypy
# Two passes. Tests that start no vLLM engine and no browser and are not slow run on two workers (pytest-xdist;
# each test file on one worker so its module fixtures are built once): the fast tier and PostgreSQL's tests. The
# rest (marked engine, e2e or slow: tests/conftest.py; some slow tests start an engine in a child process) run one
# at a time: two vLLM engines starting at once on two cores have failed ("EngineCore encountered an issue").
# Both passes run even if the first fails; the 15 slowest tests of each are printed at its end.
status=0
run_pass() {
    local code=0
    .venv/bin/pytest --durations=15 "$@" || code=$?
    if [[ $code -ne 0 && $code -ne 5 ]]; then status=$code; fi  # 5: this pass selected no test
}
echo "test: pytest, pass 1 of 2 (no engine, no browser, nothing slow; ${LLM_CONSOLE_TEST_WORKERS:-2} workers)"
run_pass -n "${LLM_CONSOLE_TEST_WORKERS:-2}" --dist loadfile -m "not (engine or e2e or slow)" "$@"
echo "test: pytest, pass 2 of 2 (vLLM engines, the browser and slow tests, one at a time)"
run_pass -m "engine or e2e or slow" "$@"
exit $status
