"""Benchmark: ``llm-console db copy`` on a database of 200,000 audit events and 50,000 exchanges.

    python -m bench.copy --to postgresql+psycopg://USER@HOST/postgres [--events 200000] [--exchanges 50000] [--json]

Seeds a temporary SQLite file as the other benchmarks do (the exchanges, their findings and latency buckets from
``bench.latency``, the chained events from ``bench.audit``, one signed checkpoint), creates an empty database on the
PostgreSQL server given by ``--to`` (dropped afterwards), and runs ``llm-console db copy --json`` into it in a fresh
interpreter: migration, the copy, sequences and the verification (counts and the whole chain against the
checkpoint). Prints rows, the command's seconds and rows/s, and the command's peak memory (rows are streamed in
batches: it should not grow with the tables; compare two sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.audit import seed_events
from bench.latency import _seed as seed_exchanges
from db import audit as audit_q
from db.config import DbConfig
from db.database import Database, scratch_postgres_database


def _watch_peak(pid: int, proc: subprocess.Popen[str]) -> int:
    """The child's peak resident memory in kB (VmHWM of its own address space, read until it exits: rusage would
    count the pages it shared with this process before its exec)."""
    peak = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
        time.sleep(0.05)
    return peak


def run_copy_bench(server_url: str, *, events: int = 200_000, exchanges: int = 50_000) -> dict[str, Any]:
    """Seed, copy into a new database on ``server_url``'s server, drop it; the copy's figures."""
    with tempfile.TemporaryDirectory(prefix="bench-copy-") as tmp:
        data = Path(tmp)
        source = Database(DbConfig(url=f"sqlite:///{data / 'console.db'}"))
        source.migrate()
        started = time.perf_counter()
        seed_exchanges(source, exchanges)
        seed_events(source, events)
        anchor = audit_q.AuditAnchor.load(data / "audit.key", data / "audit-checkpoints.jsonl")
        anchor.checkpoint(source, "bench")
        source.dispose()
        seed_s = time.perf_counter() - started
        with scratch_postgres_database(server_url, prefix="llm_console_bench_copy") as target:
            # The real command in a fresh interpreter, so its peak memory is the copy's own.
            env = {**os.environ, "LLM_CONSOLE_DATA_DIR": str(data), "LLM_CONSOLE_DATABASE_URL": str(source.url)}
            proc = subprocess.Popen([sys.executable, "-m", "console.cli", "db", "copy", "--json", "--to", target],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            peak_kb = _watch_peak(proc.pid, proc)
            stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the copy failed: {stderr.strip()}")
    report = json.loads(stdout)
    return {"events": events, "exchanges": exchanges, "rows": report["rows"], "tables": report["tables"],
            "seed_s": round(seed_s, 1), "command_s": report["seconds"],
            "copy_s": report["copy_seconds"], "rows_per_s": report["rows_per_s"],
            "events_verified": report["events_verified"], "checkpoints_checked": report["checkpoints_checked"],
            "copy_peak_rss_mb": round(peak_kb / 1024, 1)}

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.copy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--to", required=True, metavar="URL",
                        help="a PostgreSQL server (any database on it; a new one is created and dropped)")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--exchanges", type=int, default=50_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run_copy_bench(args.to, events=args.events, exchanges=args.exchanges)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
