"""Alerts with several console replicas on one PostgreSQL store: a condition raised at the same moment by two of them
is one alert, and two dispatchers sharing the due deliveries send each one once; a condition cleared by two of them
at once queues one resolved notice."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from console.services import alerts as alerts_svc
from console.services.access import Principal
from console.services.context import AppContext
from db import alerts as alerts_q
from db import users as users_q
from db.tables import Alert, AlertDelivery
from tests.alerts.conftest import add_webhook


def _pg_ctx(ctx, pg_db) -> AppContext:
    return AppContext(ctx.settings, pg_db, clock=ctx.clock)


def _admin_with_a_webhook(pg: AppContext, receiver) -> None:
    """An admin on the PostgreSQL database, who adds the "ops" webhook to the receiver."""
    with pg.db.session() as s:
        user = users_q.create_user(s, "ada", "x", ("admin",), actor="system")
        admin = Principal(user.id, user.username, frozenset(user.roles))
    add_webhook(pg, admin, receiver)


def _run_together(n: int, work) -> list:
    barrier, results, errors = threading.Barrier(n), [None] * n, []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


def test_two_replicas_raising_one_condition_make_one_alert(ctx, pg_db):
    pg = _pg_ctx(ctx, pg_db)

    def raise_it(i: int):
        with pg.db.session() as s:
            return alerts_q.raise_alert(s, "review_overdue", "queue", "2 review items past their deadline",
                                        {"overdue": 2}, now=pg.now())

    ids = _run_together(4, raise_it)
    assert len([i for i in ids if i is not None]) == 1
    with pg.db.session(readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(Alert)) == 1


def test_two_dispatchers_send_each_delivery_once(ctx, pg_db, receiver):
    pg = _pg_ctx(ctx, pg_db)
    _admin_with_a_webhook(pg, receiver)
    for n in range(6):
        with pg.db.session() as s:
            alerts_q.raise_alert(s, "auto_rollback", f"seq:{n}", f"rollback {n}", {"n": n}, now=pg.now())
    counts = _run_together(2, lambda i: alerts_svc.dispatch(pg, holder=f"replica-{i}"))
    assert sum(c.get("delivered", 0) for c in counts) == 6
    assert sorted(r.json()["alert"]["key"] for r in receiver.requests) == [f"seq:{n}" for n in range(6)]
    with pg.db.session(readonly=True) as s:
        assert {d.status for d in s.scalars(select(AlertDelivery))} == {"delivered"}
        assert {d.attempts for d in s.scalars(select(AlertDelivery))} == {1}


def test_two_replicas_clearing_one_condition_queue_one_resolved_notice_sent_after_the_firing_one(ctx, pg_db,
                                                                                                receiver):
    pg = _pg_ctx(ctx, pg_db)
    _admin_with_a_webhook(pg, receiver)
    with pg.db.session() as s:
        alerts_q.raise_alert(s, "slo_breach", "ttft_ms/p95", "SLO missed", {"measured": 900}, now=pg.now())

    def clear_it(i: int):
        with pg.db.session() as s:
            return alerts_q.resolve_alert(s, "slo_breach", "ttft_ms/p95", now=pg.now())

    assert sorted(_run_together(4, clear_it)) == [False, False, False, True]
    with pg.db.session(readonly=True) as s:
        assert sorted(d.event for d in s.scalars(select(AlertDelivery))) == ["firing", "resolved"]
    counts = _run_together(2, lambda i: alerts_svc.dispatch(pg, holder=f"replica-{i}"))
    # Whichever replica sends the firing notice may send the resolved one next; the other cannot claim it before.
    assert sum(c.get("delivered", 0) for c in counts) == 2
    assert [r.json()["event"] for r in receiver.requests] == ["firing", "resolved"]
