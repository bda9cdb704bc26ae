"""Crash battery: a console process killed with SIGKILL in the middle of heavy writes, in a real subprocess.

After each kill the database opens, is intact, its audit chain verifies, and every exchange the killed process had
acknowledged to its client is there, exactly once; the next process writes on where the last one stopped. A prompt
the model was answering when the process died is there too: a pending exchange with its redacted prompt and its
``chat.prompt`` audit event, which the next console's start-up marks interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from console.services import chat as chat_svc
from console.services.access import Principal
from console.services.context import AppContext
from db import Database, DbConfig
from db.audit import verify_chain
from db.tables import AuditEvent, Exchange, RawText

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WRITERS = 4
ROUNDS = 2
RUN_BEFORE_KILL_S = 2.0


class Child:
    """``tests.crash_writer`` in its own process; its stdout lines are collected as they arrive."""

    def __init__(self, data_dir: Path, operators: list[Principal], log: Path) -> None:
        self.lines: list[str] = []
        self.first_ack = threading.Event()
        self.hung = threading.Event()  # the hanging operator's prompt reached the model
        self.stderr = log.open("wb")
        # The last operator's model never finishes answering: that turn is in flight when the process dies.
        specs = [f"{p.user_id}:{p.username}" for p in operators]
        specs[-1] += ":hang"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_writer", str(data_dir), *specs],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=self.stderr, text=True, bufsize=1,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.endswith("\n"):  # cut by the kill: it never reached the pipe whole
                break
            self.lines.append(line.strip())
            if line.startswith("ack "):
                self.first_ack.set()
            elif line.startswith("asked ") and line.rstrip().endswith(" hang"):
                self.hung.set()

    def kill(self) -> int:
        os.kill(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait(timeout=30)
        self.reader.join(timeout=30)  # whatever reached the pipe before the kill was acknowledged
        self.stderr.close()
        return code


def _acknowledged(lines: list[str]) -> dict[str, int]:
    """Request id -> exchange id of every ``ack`` line (a line cut by the kill never reached the pipe whole)."""
    exchanges: dict[str, int] = {}
    for line in lines:
        kind, *rest = line.split()
        if kind == "ack" and len(rest) == 2:
            exchanges[rest[0]] = int(rest[1])
    return exchanges


def _asked(lines: list[str]) -> set[str]:
    """Request ids of every prompt the model was asked (the host prints it after the prompt was stored)."""
    return {line.split()[1] for line in lines if line.startswith("asked ") and len(line.split()) >= 2}


def test_a_console_killed_during_heavy_writes_reopens_verified_with_every_acknowledged_write(
        ctx: AppContext, make_user: Callable[..., Principal], tmp_path: Path) -> None:
    operators = [make_user(f"op{i}", "operator") for i in range(WRITERS)]
    hanging = make_user("op-hang", "operator")
    url = ctx.db.config.url
    ctx.db.dispose()  # the parent holds no connection while the child writes
    acked: dict[str, int] = {}
    events_before = 0
    for round_no in range(ROUNDS):
        child = Child(tmp_path, [*operators, hanging], tmp_path / f"writer-{round_no}.log")
        started = child.first_ack.wait(timeout=60) and child.hung.wait(timeout=60)
        if not started:
            child.kill()
        assert started, (tmp_path / f"writer-{round_no}.log").read_text()
        time.sleep(RUN_BEFORE_KILL_S)
        assert child.proc.poll() is None, (tmp_path / f"writer-{round_no}.log").read_text()  # still writing
        assert child.kill() == -signal.SIGKILL
        new_exchanges = _acknowledged(child.lines)
        assert len(new_exchanges) > 20  # it was killed in the middle of real work
        acked.update(new_exchanges)

        db = Database(DbConfig(url=url))  # "after restart": a fresh engine over the file the child left
        try:
            assert db.current_revision() == db.head_revision()
            with db.engine.connect() as conn:
                assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
            report = verify_chain(db)
            assert report.ok, report
            assert report.checked > events_before  # the chain grew past the previous restart
            events_before = report.checked
            with db.session(readonly=True) as s:
                stored = dict(s.execute(select(Exchange.request_id, Exchange.id)
                                        .where(Exchange.request_id.in_(acked))).all())
                copies = s.scalar(select(func.count()).select_from(Exchange)
                                  .where(Exchange.request_id.in_(acked)))
                audited = set(s.scalars(select(AuditEvent.object_id).where(
                    AuditEvent.action == "chat.exchange",
                    AuditEvent.object_id.in_([str(i) for i in acked.values()]))))
            assert stored == acked and copies == len(acked)  # every acknowledged exchange, exactly once
            assert audited == {str(i) for i in acked.values()}
            _check_in_flight(db, child.lines, new_exchanges, hanging)
            # The next console's start-up closes what the killed one left pending; the chain still verifies.
            _check_start_up_sweep(AppContext(ctx.settings, db))
            events_before = verify_chain(db).checked
        finally:
            db.dispose()


def _check_in_flight(db: Database, lines: list[str], acked: dict[str, int], hanging: Principal) -> None:
    """Every prompt the model was asked is stored exactly once; those still unanswered are pending, redacted and
    audited (``chat.prompt``); the hanging operator's is among them."""
    asked = _asked(lines)
    in_flight = asked - set(acked)
    with db.session(readonly=True) as s:
        rows = {e.request_id: e for e in s.scalars(select(Exchange).where(Exchange.request_id.in_(asked)))}
        copies = s.scalar(select(func.count()).select_from(Exchange).where(Exchange.request_id.in_(asked)))
        pending = {rid: e for rid, e in rows.items() if e.status == "pending"}
        ids = [str(e.id) for e in pending.values()]
        prompted = set(s.scalars(select(AuditEvent.object_id).where(AuditEvent.action == "chat.prompt",
                                                                    AuditEvent.object_id.in_(ids))))
        answered = set(s.scalars(select(AuditEvent.object_id).where(AuditEvent.action == "chat.exchange",
                                                                    AuditEvent.object_id.in_(ids))))
        raw = dict(s.execute(select(RawText.exchange_id, RawText.text)
                             .where(RawText.exchange_id.in_([e.id for e in pending.values()]),
                                    RawText.direction == "prompt")).all())
        hung = [e for e in pending.values() if e.user_id == hanging.user_id]
    assert set(rows) == asked and copies == len(asked)  # each asked prompt, exactly once
    # Killed after its answer committed but before the ack was printed: stored whole. Otherwise still pending.
    assert {rows[rid].status for rid in in_flight} <= {"pending", "ok"}
    assert set(pending) <= in_flight and len(hung) == 1
    assert prompted == set(ids) and answered == set()
    for e in pending.values():
        assert e.prompt.endswith("Mail <EMAIL_ADDRESS>") and "@example.com" not in e.prompt
        assert e.response == "" and e.finished_at is None
        assert raw[e.id].endswith("@example.com")  # the raw prompt, kept apart as the policy says
    assert "Please hold on" in hung[0].prompt


def _check_start_up_sweep(ctx: AppContext) -> None:
    with ctx.db.session(readonly=True) as s:
        left = sorted(s.scalars(select(Exchange.id).where(Exchange.status == "pending")))
    assert left  # at least the hanging operator's
    assert chat_svc.mark_interrupted(ctx, before=datetime.now(UTC)) == left
    with ctx.db.session(readonly=True) as s:
        statuses = set(s.scalars(select(Exchange.status).where(Exchange.id.in_(left))))
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.action == "chat.interrupted")
                            .order_by(AuditEvent.seq.desc()).limit(1)).all()
    assert statuses == {"interrupted"} and event.details["exchange_ids"] == left
    report = verify_chain(ctx.db)
    assert report.ok, report
