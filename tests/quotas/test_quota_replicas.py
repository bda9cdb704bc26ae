"""One limit across console replicas: concurrent chat turns through two Database objects (two consoles) on one
PostgreSQL database, and threads on one SQLite file; exactly ``limit`` turns pass."""

from __future__ import annotations

import threading
from pathlib import Path

from console.services import quotas
from console.services.access import Principal
from console.services.context import AppContext
from console.settings import Settings
from db import Database, DbConfig
from db import audit as audit_q
from db import users as users_q
from tests.conftest import FakeClock, console_env

LIMIT = 5
CALLERS = 24


def _race(contexts: list[AppContext], who: Principal) -> list[str]:
    """CALLERS threads, spread over ``contexts``, released together; each tries one turn's quota check."""
    gate = threading.Barrier(CALLERS)
    outcomes: list[str] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        gate.wait()
        try:
            quotas.enforce(contexts[i % len(contexts)], who)
            result = "ok"
        except quotas.QuotaExceeded:
            result = "refused"
        except Exception as exc:  # noqa: BLE001 - reported in the assertion below
            result = f"error: {exc!r}"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return outcomes


def _setup(ctx: AppContext) -> Principal:
    with ctx.db.session() as s:
        user = users_q.create_user(s, "olivia", None, ["operator"], email="o@example.com", actor="system")
        who = Principal(user.id, user.username, frozenset(user.roles))
    with ctx.db.session() as s:
        from db import quotas as quotas_q

        quotas_q.set_limit(s, user_id=who.user_id, kind="requests_per_minute", value=LIMIT, by_id=None)
    return who


def _check(ctx: AppContext, outcomes: list[str]) -> None:
    assert sorted(outcomes) == ["ok"] * LIMIT + ["refused"] * (CALLERS - LIMIT)
    with ctx.db.session(readonly=True) as s:
        exceeded = list(audit_q.iter_events(s, action="quota.exceeded"))
    assert len(exceeded) == 1  # one event for the window, however many replicas refused
    assert audit_q.verify_chain(ctx.db).ok


def test_two_replicas_on_postgresql_let_exactly_the_limit_through(pg_db: Database, tmp_path: Path) -> None:
    clock = FakeClock()
    settings = Settings.from_env(console_env(tmp_path))
    other = Database(DbConfig(pg_db.config.url))
    try:
        first, second = AppContext(settings, pg_db, clock=clock), AppContext(settings, other, clock=clock)
        who = _setup(first)
        _check(first, _race([first, second], who))
        clock.advance(minutes=1)  # the next window, on either replica
        quotas.enforce(second, who)
        quotas.enforce(first, who)
    finally:
        other.dispose()


def test_threads_on_one_sqlite_file_let_exactly_the_limit_through(ctx) -> None:
    who = _setup(ctx)
    _check(ctx, _race([ctx], who))


def test_two_database_objects_on_one_sqlite_file_share_the_limit(ctx) -> None:
    who = _setup(ctx)
    second = Database(DbConfig(ctx.db.config.url))
    try:
        _check(ctx, _race([ctx, AppContext(ctx.settings, second, clock=ctx.clock)], who))
    finally:
        second.dispose()
