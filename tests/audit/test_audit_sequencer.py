"""Batched sequencing of the audit chain (db.audit: queued appends, integrate_pending, hold_chain).

On PostgreSQL appends are queued in the caller's transaction and chained in batches by one integrator at a time;
on SQLite they are chained at once. The integrator's logic is also run on SQLite (``use_sequencing(engine,
"batched")``) so the fast tier covers it; the PostgreSQL tests use real writer processes and a real kill -9.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from db import Database, DbConfig
from db import audit as audit_q
from db.tables import AuditEvent, AuditHead
from tests.conftest import POSTGRES_URL, postgres_database

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pg() -> Iterator[Database]:
    """One PostgreSQL database for this module's tests (each test counts from what is there)."""
    if not POSTGRES_URL:
        pytest.skip("set LLM_CONSOLE_TEST_POSTGRES_URL to run on PostgreSQL")
    with postgres_database() as database:
        yield database


@pytest.fixture
def sqlite_batched(tmp_path: Path) -> Iterator[Database]:
    db = Database(DbConfig(f"sqlite:///{tmp_path / 'console.db'}"))
    db.migrate()
    audit_q.use_sequencing(db.engine, "batched")
    yield db
    db.dispose()


def _append(db: Database, action: str = "test.event", **details: object) -> audit_q.AppendedEvent:
    with db.session() as s:
        return audit_q.append_event(s, actor="tester", action=action, object_type="thing", object_id=1,
                                    details=dict(details))


def _chain(db: Database) -> list[tuple[int | None, str | None, str | None]]:
    with db.session(readonly=True) as s:
        return [tuple(r) for r in s.execute(select(AuditEvent.seq, AuditEvent.prev_hash, AuditEvent.hash)
                                             .order_by(AuditEvent.id))]


def _assert_whole(db: Database) -> int:
    """Every event chained once, seqs 1..N without gaps, the head on the last one, and the chain verifies."""
    audit_q.integrate_pending(db)
    assert audit_q.pending_count(db) == 0
    rows = _chain(db)
    assert sorted(seq for seq, _, _ in rows if seq is not None) == list(range(1, len(rows) + 1))
    report = audit_q.verify_chain(db)
    assert report.ok, report.reason
    assert report.checked == len(rows)
    with db.session(readonly=True) as s:
        assert s.get(AuditHead, 1).seq == len(rows)  # type: ignore[union-attr]
    return len(rows)


@pytest.fixture
def no_integrator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits in this process do not wake its integrator thread: queued events wait for whoever integrates next
    (as those of a process killed right after its commit do)."""
    monkeypatch.setattr(audit_q._Integrator, "poke", lambda self: None)


@pytest.fixture
def head_held(pg: Database) -> Iterator[None]:
    """Another transaction holds the chain's head: nothing can be integrated meanwhile."""
    with pg.engine.connect() as conn:
        conn.execute(text("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE"))
        yield
        conn.rollback()


# ---- both dialects ----


def test_sqlite_chains_every_append_at_once_by_default(tmp_path: Path) -> None:
    db = Database(DbConfig(f"sqlite:///{tmp_path / 'console.db'}"))
    db.migrate()
    first, second = _append(db, n=1), _append(db, n=2)
    assert (first.seq, second.seq) == (1, 2) and second.prev_hash == first.hash
    assert audit_q.pending_count(db) == 0
    db.dispose()


def test_a_queued_append_is_chained_by_the_integrator_and_read_before(sqlite_batched: Database) -> None:
    event = _append(sqlite_batched, n=1)
    assert event.seq is None and event.hash is None  # queued: chained after the commit
    with sqlite_batched.session(readonly=True) as s:
        assert audit_q.latest_event(s, "test.event").id == event.id  # type: ignore[union-attr]
    for n in range(2, 31):
        _append(sqlite_batched, n=n)
    assert _assert_whole(sqlite_batched) == 30
    with sqlite_batched.session(readonly=True) as s:
        assert [e.details["n"] for e in audit_q.iter_events(s)] == list(range(1, 31))  # queue order kept


def test_a_rolled_back_queued_event_never_appears(sqlite_batched: Database) -> None:
    with pytest.raises(RuntimeError), sqlite_batched.session() as s:
        audit_q.append_event(s, actor="tester", action="test.rolled_back")
        raise RuntimeError("the change failed")
    _append(sqlite_batched)
    _assert_whole(sqlite_batched)
    with sqlite_batched.session(readonly=True) as s:
        assert audit_q.latest_event(s, "test.rolled_back") is None


def test_the_triggers_allow_one_fill_in_of_a_queued_events_chain_columns_and_nothing_else(
        sqlite_batched: Database) -> None:
    _append(sqlite_batched)
    _assert_whole(sqlite_batched)
    with sqlite_batched.engine.connect() as conn:
        for statement in ("UPDATE audit_events SET seq = 7 WHERE seq = 1",
                          "UPDATE audit_events SET hash = 'x', prev_hash = 'y' WHERE seq = 1",
                          "UPDATE audit_events SET seq = NULL, hash = NULL, prev_hash = NULL WHERE seq = 1"):
            with pytest.raises(Exception, match="append-only"):
                conn.execute(text(statement))
            conn.rollback()
        conn.execute(text("INSERT INTO audit_events (ts, actor, action, details, details_hash) "
                          "VALUES ('2026-12-06 00:00:00.000000', 'x', 'y', '{}', 'z')"))
        with pytest.raises(Exception, match="append-only"):  # filled in, but its actor changed on the way
            conn.execute(text("UPDATE audit_events SET seq = 2, prev_hash = 'a', hash = 'b', actor = 'mallory' "
                              "WHERE seq IS NULL"))
        conn.rollback()


def test_hold_chain_integrates_the_queue_and_chains_the_rest_of_its_transaction_at_once(
        sqlite_batched: Database) -> None:
    with sqlite_batched.session() as s:  # queued (the integrator thread may chain them first: either way)
        for n in range(3):
            audit_q.append_event(s, actor="tester", action="test.event", details={"n": n})
    with sqlite_batched.session() as s:
        seq, _ = audit_q.hold_chain(s)
        assert audit_q.pending_count(s) == 0
        inline = audit_q.append_event(s, actor="tester", action="test.erase")
    assert inline.seq == seq + 1 and seq >= 3
    _assert_whole(sqlite_batched)


# ---- PostgreSQL: real processes, a real kill ----


@pytest.mark.postgres
def test_four_writer_processes_keep_one_chain_with_every_event_once(pg: Database) -> None:
    from bench.audit import PROCESSES, appends_4p

    before = _assert_whole(pg)
    appends_4p(pg.config.url, 100, "auto")  # 4 spawned processes, one event per transaction
    assert _assert_whole(pg) == before + PROCESSES * 100
    with pg.session(readonly=True) as s:
        pairs = s.execute(select(AuditEvent.details["worker"].as_integer(), AuditEvent.details["i"].as_integer())
                          .where(AuditEvent.action == "bench.append")).all()
    assert sorted(pairs) == sorted((w, i) for w in range(PROCESSES) for i in range(100))


@pytest.mark.postgres
def test_readers_see_a_committed_event_before_it_is_integrated(pg: Database, head_held: None) -> None:
    event = _append(pg, action="test.unchained")
    assert event.seq is None
    with pg.session(readonly=True) as s:
        latest = audit_q.latest_event(s, "test.unchained")
        assert latest is not None and latest.id == event.id and latest.seq is None
        assert [e.id for e in audit_q.events_about(s, ["test.unchained"], object_type="thing")] == [event.id]
        assert list(audit_q.iter_events(s))[-1].id == event.id  # queued events come after the chained ones
        assert audit_q.pending_count(s) >= 1


@pytest.mark.postgres
def test_checkpoints_and_verification_integrate_the_queue_first(pg: Database, tmp_path: Path,
                                                                no_integrator: None) -> None:
    anchor = audit_q.AuditAnchor.load(tmp_path / "audit.key", tmp_path / "checkpoints.jsonl")
    audit_q.integrate_pending(pg)  # (what earlier tests left queued)
    for queue_then in ("checkpoint", "verify"):
        ids = [_append(pg, n=n).id for n in range(5)]
        assert audit_q.pending_count(pg) == 5
        if queue_then == "checkpoint":
            cp = anchor.checkpoint(pg, "test")
            with pg.session(readonly=True) as s:
                assert cp.seq == s.scalar(select(func.max(AuditEvent.seq)))
        else:
            assert audit_q.verify_chain(pg, anchor).ok
        with pg.session(readonly=True) as s:
            assert None not in s.scalars(select(AuditEvent.seq).where(AuditEvent.id.in_(ids))).all()
    _assert_whole(pg)


_CRASHING_INTEGRATOR = textwrap.dedent("""
    import sys, time
    from db import Database, DbConfig
    from db.audit import _integrate_batch
    db = Database(DbConfig(sys.argv[1]))
    with db.engine.begin() as conn:
        print(_integrate_batch(conn, wait=True), flush=True)  # chained in its transaction, not committed
        time.sleep(600)
""")


@pytest.mark.postgres
def test_an_integrator_killed_mid_batch_leaves_the_chain_valid_and_its_events_queued(
        pg: Database, no_integrator: None) -> None:
    before = _assert_whole(pg)
    for n in range(20):
        _append(pg, action="test.crash", n=n)
    child = subprocess.Popen([sys.executable, "-c", _CRASHING_INTEGRATOR, pg.config.url], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout is not None
        assert int(child.stdout.readline()) == 20  # the child chained all 20 in its open transaction
        assert audit_q.pending_count(pg) == 20  # ... which nobody else sees
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert audit_q.verify_chain(pg).ok  # waits for the server to drop the dead transaction, then chains the 20
    assert _assert_whole(pg) == before + 20


@pytest.mark.postgres
def test_the_checkpointer_sweeps_events_no_integrator_took(pg_db: Database, tmp_path: Path,
                                                           no_integrator: None) -> None:
    from console.services.audit import Checkpointer
    from console.services.context import AppContext
    from console.settings import Settings
    from tests.conftest import console_env

    ctx = AppContext(Settings.from_env(console_env(tmp_path)), pg_db)
    for n in range(3):
        _append(pg_db, action="test.swept", n=n)
    assert audit_q.pending_count(pg_db) == 3
    cp = Checkpointer(ctx).run_once()
    assert cp is not None and audit_q.pending_count(pg_db) == 0
    with pg_db.session(readonly=True) as s:
        assert cp.seq == s.scalar(select(func.max(AuditEvent.seq)))
    _assert_whole(pg_db)
