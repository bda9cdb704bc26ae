"""Crash battery: a console process killed with SIGKILL in the middle of heavy writes, in a real subprocess.

After each kill the database opens, is intact, its audit chain verifies, and every exchange the killed process had
acknowledged to its client is there, exactly once; the next process writes on where the last one stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from console.services.access import Principal
from console.services.context import AppContext
from db import Database, DbConfig
from db.audit import verify_chain
from db.tables import AuditEvent, Exchange

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
WRITERS = 4
ROUNDS = 2
RUN_BEFORE_KILL_S = 2.0


class Child:
    """``tests.crash_writer`` in its own process; its stdout lines are collected as they arrive."""

    def __init__(self, data_dir: Path, operators: list[Principal], log: Path) -> None:
        self.lines: list[str] = []
        self.first_ack = threading.Event()
        self.stderr = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_writer", str(data_dir),
             *(f"{p.user_id}:{p.username}" for p in operators)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=self.stderr, text=True, bufsize=1,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if line.startswith("ack "):
                self.first_ack.set()

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


def test_a_console_killed_during_heavy_writes_reopens_verified_with_every_acknowledged_write(
        ctx: AppContext, make_user: Callable[..., Principal], tmp_path: Path) -> None:
    operators = [make_user(f"op{i}", "operator") for i in range(WRITERS)]
    url = ctx.db.config.url
    ctx.db.dispose()  # the parent holds no connection while the child writes
    acked: dict[str, int] = {}
    events_before = 0
    for round_no in range(ROUNDS):
        child = Child(tmp_path, operators, tmp_path / f"writer-{round_no}.log")
        started = child.first_ack.wait(timeout=60)
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
        finally:
            db.dispose()
