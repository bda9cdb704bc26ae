"""Prompts left ``pending`` by a console process that is gone are closed as ``interrupted`` at the next start, in
one audit event; what another console on the same database is still answering stays pending (issue 21)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from console.services import chat as chat_svc
from db import audit as audit_q
from db import chat as chat_q
from db.chat import PendingRecord
from db.tables import Exchange

HOST = socket.gethostname()


def _gone_pid() -> int:
    """The id of a process that ran and ended (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def live_pid():
    """The id of another process on this host that keeps running during the test (a second console)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield child.pid
    child.kill()
    child.wait()


def _pending(ctx, user, conversation_id: int, owner: str | None, created_at: datetime) -> int:
    with ctx.db.session() as s:
        exchange = chat_q.begin_exchange(s, PendingRecord(
            conversation_id=conversation_id, user_id=user.user_id, actor=user.username, model_version="demo-v1",
            prompt="hello", request_id=f"r-{owner}", sampling={}, prompt_action="allow", created_at=created_at))
        assert exchange.owner == f"{HOST}:{os.getpid()}"  # every pending prompt records its process
        s.execute(update(Exchange).where(Exchange.id == exchange.id).values(owner=owner))
        return exchange.id


def test_only_prompts_whose_process_is_gone_are_marked_interrupted_at_start_up(ctx, make_user, live_pid):
    op = make_user("olivia", "operator")
    with ctx.db.session() as s:
        conversation = chat_q.create_conversation(s, user_id=op.user_id, actor=op.username).id
    now = datetime.now(UTC)
    started = now - timedelta(seconds=1)  # this console's start: every row below is older
    recent, old = now - timedelta(minutes=5), now - timedelta(hours=3)
    ids = {name: _pending(ctx, op, conversation, owner, created) for name, owner, created in [
        ("no owner (before 0018)", None, recent),
        ("process gone", f"{HOST}:{_gone_pid()}", recent),
        ("this pid, earlier process (restarted container)", f"{HOST}:{os.getpid()}", recent),
        ("another console here, running", f"{HOST}:{live_pid}", recent),
        ("another host, recent", "console-b.internal:4242", recent),
        ("another host, past interrupted_after_minutes", "console-b.internal:4243", old),
    ]}
    marked = chat_svc.mark_interrupted(ctx, before=started)
    gone = ["no owner (before 0018)", "process gone", "this pid, earlier process (restarted container)",
            "another host, past interrupted_after_minutes"]
    assert marked == sorted(ids[name] for name in gone)
    with ctx.db.session(readonly=True) as s:
        status = {name: s.get(Exchange, i).status for name, i in ids.items()}
    assert status == {name: "interrupted" if name in gone else "pending" for name in ids}
    with ctx.db.session(readonly=True) as s:
        [event] = list(audit_q.iter_events(s, action="chat.interrupted"))
    assert event.details["exchange_ids"] == marked and event.details["count"] == 4
    assert event.details["kept_pending_of_live_consoles"] == 2
    # The running console's prompts stay for it to complete; a second start closes nothing more, writes no event.
    assert chat_svc.mark_interrupted(ctx, before=started) == []
    with ctx.db.session(readonly=True) as s:
        assert len(list(audit_q.iter_events(s, action="chat.interrupted"))) == 1


def test_the_owner_check(live_pid):
    now = datetime.now(UTC)
    assert chat_q.owner_gone(None, now, now, None)
    assert chat_q.owner_gone(f"{HOST}:{_gone_pid()}", now, now, None)
    assert not chat_q.owner_gone(f"{HOST}:{live_pid}", now, now, None)
    assert not chat_q.owner_gone("elsewhere:1", now - timedelta(days=9), now, None)
    assert chat_q.owner_gone("elsewhere:1", now - timedelta(hours=2), now, timedelta(hours=1))
    assert not chat_q.owner_gone("elsewhere:1", now - timedelta(minutes=2), now, timedelta(hours=1))
