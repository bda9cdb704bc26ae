"""Reads take no write lock: while another connection holds the SQLite write lock longer than the busy timeout,
every read-only service still answers (only writers wait for the lock)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from console.services import audit_search, evaluation, latency, promotion, registry, serving, users, watch
from console.services.access import Principal
from console.services.context import AppContext
from console.services.errors import StorageUnavailable
from db import Database, DbConfig
from db import audit as audit_q
from db import chat as chat_q
from db import model_versions as versions_q

BUSY_TIMEOUT_MS = 300  # short, so that a read which did wait for the lock would fail fast and loudly


@dataclass
class Seeded:
    ctx: AppContext  # over a database whose busy timeout is BUSY_TIMEOUT_MS
    path: Path
    operator: Principal
    analyst: Principal
    admin: Principal


@pytest.fixture
def seeded(ctx: AppContext, make_user: Callable[..., Principal], clock: Any) -> Iterator[Seeded]:
    operator = make_user("olivia", "operator")
    analyst = make_user("ana", "analyst")
    admin = make_user("adam", "admin", "reviewer")
    with ctx.db.session() as s:
        conversation = chat_q.create_conversation(s, user_id=operator.user_id, actor=operator.username)
        for n in range(3):
            chat_q.store_turn(s, chat_q.TurnRecord(
                conversation_id=conversation.id, user_id=operator.user_id, actor=operator.username,
                model_version="v1", prompt=f"p{n}", response="r", created_at=clock.now - timedelta(minutes=n),
                timings=chat_q.ExchangeTimings(ttft_ms=10.0, e2e_ms=100.0, output_tokens=5),
            ))
        version = versions_q.register_model_version(s, name="v1", source="hub/model", actor="adam")
        versions_q.move_alias(s, "production", version, actor="adam", actor_id=admin.user_id, reason="first")
    path = Path(ctx.db.url.database or "")
    short = Database(DbConfig(url=ctx.db.config.url, busy_timeout_ms=BUSY_TIMEOUT_MS))
    yield Seeded(AppContext(ctx.settings, short, clock=ctx.clock), path, operator, analyst, admin)
    short.dispose()


class WriteLockHeld:
    """Another connection in a write transaction (BEGIN IMMEDIATE) on the same file until the block ends."""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None, timeout=0)

    def __enter__(self) -> WriteLockHeld:
        self.connection.execute("BEGIN IMMEDIATE")
        self.connection.execute("UPDATE app_state SET key = key WHERE 0")  # a write statement, to be sure
        return self

    def __exit__(self, *exc: object) -> None:
        self.connection.execute("ROLLBACK")
        self.connection.close()


# Each read calls the service body: the access check in front of it (``requires``) re-reads the user in
# ``access.refresh_principal``, which is not part of this table (see the test at the end).
def _body(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn.__wrapped__  # type: ignore[no-any-return, attr-defined]


READS: dict[str, Callable[[Seeded], Any]] = {
    "dashboard latency": lambda d: _body(latency.latency)(d.ctx, d.operator, "last 24 hours"),
    # The search's read (the search itself then records an audit event: a write, see the test at the end).
    "audit search": lambda d: audit_search._read_page(d.ctx, audit_search.AuditFilter(actor="olivia"), None, 100),
    "audit actions": lambda d: _body(audit_search.actions)(d.ctx, d.analyst),
    "audit verify chain": lambda d: audit_q.verify_chain(d.ctx.db),
    "models listing": lambda d: _body(registry.list_versions)(d.ctx, d.admin),
    "serving desired state": lambda d: serving.desired_state(d.ctx),
    "serving status": lambda d: serving.serving_status(d.ctx),
    "serving alias history": lambda d: _body(registry.alias_history)(d.ctx, d.admin),
    "serving last switch problem": lambda d: serving.last_switch_problem(d.ctx),
    "promotion requests": lambda d: _body(promotion.list_requests)(d.ctx, d.admin),
    "promotion production state": lambda d: _body(watch.production_state)(d.ctx, d.admin),
    "evaluation listing": lambda d: _body(evaluation.list_evaluations)(d.ctx, d.admin, "v1"),
    "users listing": lambda d: _body(users.list_users)(d.ctx, d.admin),  # issue 21: it read through a write session
}


def _expect_ok(name: str, result: Any) -> None:
    if name == "audit verify chain":
        assert result.ok, result
    if name == "dashboard latency":
        assert list(result.summary["requests"]) == [3]
    if name == "models listing":
        assert [(v.name, v.aliases) for v in result] == [("v1", ("production",))]
    if name == "serving desired state":
        assert result.version == "v1"
    if name == "audit search":
        assert result.rows and all(r["actor"] == "olivia" for r in result.rows)
    if name == "audit actions":
        assert "chat.exchange" in result
    if name == "users listing":
        assert {u.username for u in result} == {"olivia", "ana", "adam"}


@pytest.mark.parametrize("name", list(READS))
def test_a_read_answers_while_another_connection_holds_the_write_lock(seeded: Seeded, name: str) -> None:
    with WriteLockHeld(seeded.path):
        result = READS[name](seeded)  # a read that waited for the lock would raise "database is locked"
        _expect_ok(name, result)
        # The lock really is held past the busy timeout: a writer gives up while the reads above answered.
        with pytest.raises(OperationalError, match="locked"), seeded.ctx.db.session() as s:
            audit_q.append_event(s, actor="test", action="test.write")
    assert audit_q.verify_chain(seeded.ctx.db).ok


def test_the_dashboard_answers_through_its_access_check_while_the_write_lock_is_held_and_a_search_waits(
        seeded: Seeded) -> None:
    with WriteLockHeld(seeded.path):
        report = latency.latency(seeded.ctx, seeded.operator, "last 24 hours")
        # A search is recorded in the audit log (a write): without that record it shows nothing.
        with pytest.raises(StorageUnavailable, match="could not record"):
            audit_search.search(seeded.ctx, seeded.analyst, audit_search.AuditFilter(actor="olivia"))
    assert list(report.summary["requests"]) == [3]
    page = audit_search.search(seeded.ctx, seeded.analyst, audit_search.AuditFilter(actor="olivia"))
    assert page.rows and all(r["actor"] == "olivia" for r in page.rows)
