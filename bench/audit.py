"""``llm-console bench audit``: chained appends per second, verifying and exporting a million events.

Everything runs on a throwaway SQLite database in a temporary directory:

- ``append_per_s``: events appended with ``db.audit.append_event``, each in its own transaction (what every click
  does), one writer; ``append_per_s_8t``: the same from 8 threads at once (they queue on the chain's lock);
  ``append_per_s_batch100``: one writer, 100 events per transaction (bulk decisions, retention batches).
- ``append_per_s_4p`` (PostgreSQL only, on a throwaway database of the server at ``--postgres-url``): 4 writer
  processes, each event in its own transaction, with batched sequencing (the default there), timed until every
  event is integrated and the chain verifies; ``append_per_s_4p_inline``: the same with every append chained at
  once under the head lock (the sequencing before issue 24), for the ratio; ``insert_per_s_4p``: the same 4
  processes inserting rows of the same size into an unchained table, one per transaction (the server's ceiling).
- ``verify_1m_s``: ``verify_chain`` over ``--events`` events (default 1,000,000) with a signed checkpoint to check.
- ``verify_round_ms``: one round of the console's scheduled verification over the same events
  (``console.services.audit_watch.AuditVerifier.run_round``: the lease, the full verify, the recorded run).
- ``export_csv_1m_s``, ``export_parquet_1m_s``: exporting them all (the CLI's path), each in a fresh child process
  whose peak resident memory is ``export_peak_mb`` (the larger of the two; the interpreter and pyarrow included).

The events are seeded in bulk (their chain computed the same way ``append_event`` does) so the run takes minutes,
not hours.
"""

from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, insert, text, update

from db import Database, DbConfig
from db.audit import (
    AuditAnchor,
    append_event,
    canonical_json,
    compute_hash,
    integrate_pending,
    pending_count,
    use_sequencing,
    verify_chain,
)
from db.database import scratch_postgres_database
from db.tables import AuditEvent, AuditHead

_EVENTS = cast(Table, AuditEvent.__table__)
_HEAD = cast(Table, AuditHead.__table__)
ACTIONS = ("chat.exchange", "safety.findings", "review.item", "auth.login", "review.decide", "model.switch")


def _database(path: Path) -> Database:
    db = Database(DbConfig(f"sqlite:///{path}"))
    db.migrate()
    return db


def _appends(db: Database, n: int, threads: int, per_transaction: int = 1) -> float:
    """Appends per second: ``n`` events, ``per_transaction`` per transaction, spread over ``threads`` writers."""
    per_thread = n // threads // per_transaction * per_transaction

    def work(worker: int) -> None:
        for start in range(0, per_thread, per_transaction):
            with db.session() as s:
                for i in range(start, start + per_transaction):
                    append_event(s, actor=f"user{worker}", action="bench.append", object_type="exchange",
                                 object_id=i, details={"worker": worker, "i": i, "status": "ok", "ttft_ms": 12.5})

    started = time.perf_counter()
    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return per_thread * threads / (time.perf_counter() - started)


PROCESSES = 4


@contextmanager
def throwaway_postgres(server_url: str) -> Iterator[str]:
    """The URL of a new, migrated database on the server at ``server_url`` (a role that may create databases);
    the database is dropped afterwards."""
    with scratch_postgres_database(server_url, prefix="llm_console_bench") as url:
        db = Database(DbConfig(url))
        db.migrate()
        db.dispose()
        yield url


def _writer_process(url: str, mode: str, worker: int, n: int) -> None:
    """One writer (``python -m bench.audit --writer``): says "ready" once connected, starts at "go" on stdin, then
    writes ``n`` events, one per transaction (``mode`` "plain": rows into an unchained table instead)."""
    db = Database(DbConfig(url))
    with db.session() as s:
        s.execute(text("SELECT 1"))  # connected before the clock starts
    if mode != "plain":
        use_sequencing(db.engine, mode)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    for i in range(n):
        details = {"worker": worker, "i": i, "status": "ok", "ttft_ms": 12.5}
        with db.session() as s:
            if mode == "plain":
                s.execute(text("INSERT INTO bench_plain (actor, action, object_id, details) VALUES (:a, :b, :c, :d)"),
                          {"a": f"user{worker}", "b": "bench.append", "c": str(i), "d": canonical_json(details)})
            else:
                append_event(s, actor=f"user{worker}", action="bench.append", object_type="exchange", object_id=i,
                             details=details)
    db.dispose()


def appends_4p(url: str, per_process: int, mode: str = "auto") -> float:
    """Events per second from ``PROCESSES`` writer processes on the PostgreSQL database at ``url``, each event in
    its own transaction, timed until every event is integrated and the chain verifies (``mode``: sequencing, or
    "plain" for unchained inserts)."""
    db = Database(DbConfig(url))
    try:
        if mode == "plain":
            with db.session() as s:
                s.execute(text("CREATE TABLE IF NOT EXISTS bench_plain (id serial PRIMARY KEY, ts timestamptz "
                               "DEFAULT now(), actor text, action text, object_id text, details json)"))
        with db.session(readonly=True) as s:
            before = verify_chain(s).checked
        # Fresh interpreters (not multiprocessing: its children re-import the parent's main module, which a test
        # runner or a -c script does not have on disk).
        root = Path(__file__).resolve().parents[1]
        procs = [subprocess.Popen([sys.executable, "-m", "bench.audit", "--writer", url, mode, str(w),
                                   str(per_process)], cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True) for w in range(PROCESSES)]
        try:
            for proc in procs:  # every writer connected before the clock starts
                assert proc.stdout is not None and proc.stdin is not None
                if proc.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"an audit append writer process did not start (exit code {proc.wait()})")
            started = time.perf_counter()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            if any(proc.wait() != 0 for proc in procs):
                raise RuntimeError("an audit append writer process failed")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if mode != "plain":
            integrate_pending(db)
            report = verify_chain(db)
        elapsed = time.perf_counter() - started
        if mode != "plain":
            if not report.ok or report.checked != before + PROCESSES * per_process or pending_count(db):
                raise RuntimeError(f"after {PROCESSES} writer processes the chain holds {report.checked} events "
                                   f"(expected {before + PROCESSES * per_process}): {report.reason}")
        return PROCESSES * per_process / elapsed
    finally:
        db.dispose()


def run_postgres_appends(server_url: str | None, appends: int) -> dict[str, Any]:
    """``append_per_s_4p`` (batched), ``append_per_s_4p_inline`` and ``insert_per_s_4p`` on a throwaway database,
    or a note saying why they were not measured."""
    if not server_url:
        return {"append_per_s_4p": None, "append_per_s_4p_note": "no PostgreSQL server: pass --postgres-url "
                "postgresql+psycopg://... (or set LLM_CONSOLE_TEST_POSTGRES_URL) to measure 4 writer processes"}
    per_process = max(appends // PROCESSES, 1)
    with throwaway_postgres(server_url) as url:
        return {"append_per_s_4p": round(appends_4p(url, per_process, "auto"), 1),
                "append_per_s_4p_inline": round(appends_4p(url, per_process, "inline"), 1),
                "insert_per_s_4p": round(appends_4p(url, per_process, "plain"), 1)}


def _seed_rows(start_seq: int, prev: str, count: int, t0: datetime) -> Iterator[dict[str, Any]]:
    for k in range(count):
        seq = start_seq + k
        action = ACTIONS[seq % len(ACTIONS)]
        details = {"conversation_id": seq // 7, "status": "ok", "model_version": f"v{seq % 3}",
                   "ttft_ms": 10.0 + seq % 90, "e2e_ms": 200.0 + seq % 900, "note": "düt, \"quoted\"\nline"}
        rendered = canonical_json(details)
        dh = hashlib.sha256(rendered.encode("utf-8")).hexdigest()
        ts = t0 + timedelta(milliseconds=seq * 50)
        actor = f"user{seq % 40}"
        digest = compute_hash(ts=ts, actor=actor, actor_id=seq % 40 + 1, action=action, object_type="exchange",
                              object_id=str(seq), details_hash=dh, prev_hash=prev)
        yield {"seq": seq, "ts": ts, "actor": actor, "actor_id": seq % 40 + 1, "action": action,
               "object_type": "exchange", "object_id": str(seq), "details": details, "details_hash": dh,
               "prev_hash": prev, "hash": digest}
        prev = digest


def seed_events(db: Database, total: int, *, chunk: int = 20_000) -> None:
    """Grow the chain to ``total`` events in bulk (hashes computed exactly as ``append_event`` does)."""
    with db.session() as s:
        head = s.get(AuditHead, 1)
        assert head is not None
        seq, prev = head.seq, head.hash
    t0 = datetime.now(UTC) - timedelta(days=30)
    while seq < total:
        n = min(chunk, total - seq)
        rows = list(_seed_rows(seq + 1, prev, n, t0))
        with db.session() as s:
            s.execute(insert(_EVENTS), rows)
            s.execute(update(_HEAD).where(_HEAD.c.id == 1).values(seq=rows[-1]["seq"], hash=rows[-1]["hash"]))
        seq, prev = rows[-1]["seq"], rows[-1]["hash"]


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def _scheduled_round_ms(root: Path, db: Database) -> float:
    """Milliseconds of one round of the console's scheduled verification over the seeded chain."""
    import os

    from console.services.audit_watch import AuditVerifier
    from console.services.context import AppContext
    from console.settings import Settings

    settings = Settings.from_env({**os.environ, "LLM_CONSOLE_DATA_DIR": str(root),
                                  "LLM_CONSOLE_DATABASE_URL": f"sqlite:///{root / 'audit.db'}",
                                  "LLM_CONSOLE_AUDIT_KEY_FILE": str(root / "audit.key"),
                                  "LLM_CONSOLE_AUDIT_CHECKPOINT_FILE": str(root / "checkpoints.jsonl")})
    seconds, done = _timed(lambda: AuditVerifier(AppContext(settings, db)).run_round())
    if not done.ran or not getattr(done.result, "ok", False):
        raise RuntimeError(f"the scheduled verification round did not pass: {done}")
    return seconds * 1000


def _export_in_child(db_path: Path, fmt: str, out: Path) -> tuple[float, float]:
    """Seconds and peak MB of one export run in a fresh interpreter (``python -m bench.audit --export-child``)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-m", "bench.audit", "--export-child", str(db_path), fmt, str(out)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"export child failed: {proc.stderr.strip()[-2000:]}")
    seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return float(seconds), max(peak_kb, before) / 1024


def run_audit_bench(*, events: int = 1_000_000, appends: int = 2_000, export: bool = True,
                    postgres_url: str | None = None,
                    progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Run every measurement and return the figures (see the module docstring)."""
    progress(f"appending {appends} events from {PROCESSES} processes on PostgreSQL" if postgres_url else
             "no PostgreSQL server given: append_per_s_4p is not measured")
    on_postgres = run_postgres_appends(postgres_url, appends)
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        root = Path(tmp)
        db = _database(root / "audit.db")
        try:
            progress(f"appending {appends} events, one writer")
            one = _appends(db, appends, 1)
            progress(f"appending {appends} events, 8 threads")
            eight = _appends(db, appends, 8)
            progress(f"appending {appends} events, one writer, 100 per transaction")
            batched = _appends(db, appends, 1, per_transaction=100)
            progress(f"seeding {events:,} events")
            seed_events(db, events)
            anchor = AuditAnchor.load(root / "audit.key", root / "checkpoints.jsonl")
            anchor.checkpoint(db, "bench")
            progress("verifying")
            verify_s, report = _timed(lambda: verify_chain(db, anchor))
            if not report.ok:
                raise RuntimeError(f"the seeded chain did not verify: {report.reason}")
            result: dict[str, Any] = {
                "events": report.checked, "append_per_s": round(one, 1), "append_per_s_8t": round(eight, 1),
                "append_per_s_batch100": round(batched, 1), **on_postgres,
                "verify_1m_s": round(verify_s * 1_000_000 / max(report.checked, 1), 2),
                "verify_s": round(verify_s, 2),
            }
            progress("one scheduled verification round")
            result["verify_round_ms"] = round(_scheduled_round_ms(root, db))
        finally:
            db.dispose()
        if export:
            peaks = []
            for fmt in ("csv", "parquet"):
                progress(f"exporting as {fmt} in a child process")
                seconds, peak = _export_in_child(root / "audit.db", fmt, root / f"events.{fmt}")
                result[f"export_{fmt}_1m_s"] = round(seconds * 1_000_000 / max(result["events"], 1), 2)
                result[f"export_{fmt}_s"] = round(seconds, 2)
                result[f"export_{fmt}_mb"] = round((root / f"events.{fmt}").stat().st_size / 1e6, 1)
                peaks.append(peak)
            result["export_peak_mb"] = round(max(peaks), 1)
        result["targets"] = {"append_per_s": ">= 5000", "append_per_s_4p": ">= 5000", "verify_1m_s": "<= 10", "export_csv_1m_s": "<= 10",
                             "export_parquet_1m_s": "<= 10", "export_peak_mb": "<= 200"}
        return result


def _export_child(db_path: str, fmt: str, out: str) -> None:
    """One export exactly as ``llm-console audit export`` runs it (checkpoint, stream, manifest, audit event)."""
    import os

    from console.services.context import AppContext
    from console.services.exports import ExportSpec, check_out_path, validated_spec, write_export
    from console.settings import Settings

    root = Path(db_path).parent
    settings = Settings.from_env({**os.environ, "LLM_CONSOLE_DATA_DIR": str(root),
                                  "LLM_CONSOLE_DATABASE_URL": f"sqlite:///{db_path}",
                                  "LLM_CONSOLE_AUDIT_KEY_FILE": str(root / "audit.key"),
                                  "LLM_CONSOLE_AUDIT_CHECKPOINT_FILE": str(root / "checkpoints.jsonl")})
    db = Database(DbConfig(settings.database_url))
    started = time.perf_counter()
    spec = validated_spec(ExportSpec(what="events", format=fmt))
    result = write_export(AppContext(settings, db), "bench", None, spec, check_out_path(Path(out)))
    print(json.dumps({"seconds": time.perf_counter() - started, "rows": result.rows}))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--export-child":
        _export_child(*sys.argv[2:])
    elif len(sys.argv) == 6 and sys.argv[1] == "--writer":
        _writer_process(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        print(json.dumps(run_audit_bench(events=int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000,
                                         progress=lambda m: print(m, file=sys.stderr)), indent=2))
