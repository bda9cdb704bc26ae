"""Resolved notices, against the real HTTP receiver on loopback: a condition that clears sends a signed "resolved"
notice (JSON and Slack) after its firing one, to the webhooks that had the firing one and still receive the kind;
one-off events never get one; a failed resolved notice is retried; a firing notice still waiting when the condition
clears is sent first."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from console.services import alerts as alerts_svc
from console.services import audit as audit_svc
from db import alerts as alerts_q
from db import audit as audit_q
from db.tables import Alert, AlertAttempt, AlertDelivery, ReviewItem
from tests.alerts.conftest import add_webhook
from tests.review_fixtures import flag

ALL = list(alerts_svc.SUBSCRIBABLE)
SECRET = "s3cret-shared-key"


def _hook(ctx, admin, receiver, **kw):
    return add_webhook(ctx, admin, receiver, **({"secret": SECRET} | kw))  # signed: resolved notices are too


def _deliveries(ctx):
    with ctx.db.session(readonly=True) as s:
        return [(d.webhook_name, d.event, d.status) for d in s.scalars(select(AlertDelivery).order_by(AlertDelivery.id))]


def _raise(ctx, kind="slo_breach", key="ttft_ms/p95", title="SLO missed: p95 time to first token <= 500 ms"):
    with ctx.db.session() as s:
        return alerts_q.raise_alert(s, kind, key, title, {"measured": 812.5}, now=ctx.now())


def _resolve(ctx, kind="slo_breach", key="ttft_ms/p95"):
    with ctx.db.session() as s:
        return alerts_q.resolve_alert(s, kind, key, now=ctx.now())


def _signed(got) -> bool:
    return alerts_svc.verify_signature(SECRET, got.headers["X-Console-Timestamp"], got.body,
                                       got.headers["X-Console-Signature"])


def _overdue_queue(ctx, make_user, clock) -> None:
    owner = make_user("olivia", "operator")
    flag(ctx, owner, created_at=clock.now - timedelta(days=3))


def _decide_every_item(ctx) -> None:
    with ctx.db.session() as s:
        for item in s.scalars(select(ReviewItem)):
            item.status = "decided"


def test_a_cleared_condition_sends_a_signed_json_resolved_notice_after_the_firing_one(ctx, admin, make_user,
                                                                                      receiver, clock):
    _hook(ctx, admin, receiver)
    _overdue_queue(ctx, make_user, clock)
    alerts_svc.evaluate(ctx)
    assert alerts_svc.dispatch(ctx) == {"delivered": 1}
    raised_at = clock.now
    clock.advance(minutes=12)
    _decide_every_item(ctx)
    alerts_svc.evaluate(ctx)  # the real condition clears
    assert _deliveries(ctx) == [("ops", "firing", "delivered"), ("ops", "resolved", "pending")]
    assert alerts_svc.dispatch(ctx) == {"delivered": 1}
    firing, resolved = receiver.requests
    assert firing.json()["event"] == "firing" and firing.json()["alert"]["resolved_at"] is None
    body = resolved.json()
    (alert,) = alerts_svc.recent_alerts(ctx, admin)
    assert body["event"] == "resolved" and body["console"] == "llm-console"
    assert body["alert"] == {"id": alert.id, "kind": "review_overdue", "key": "queue",
                             "title": "1 review item past its deadline", "state": "resolved",
                             "raised_at": raised_at.isoformat(), "resolved_at": clock.now.isoformat(),
                             "details": firing.json()["alert"]["details"]}
    assert _signed(firing) and _signed(resolved)
    with ctx.db.session(readonly=True) as s:
        ids = list(s.scalars(select(AlertDelivery.id).order_by(AlertDelivery.id)))
    assert [r.headers["X-Console-Delivery"] for r in receiver.requests] == [str(i) for i in ids]
    assert body["delivery"] == ids[1]
    with ctx.db.session(readonly=True) as s:
        (event,) = audit_q.events_about(s, ["alert.resolved"])
    assert event.object_id == str(alert.id) and event.details["webhooks"] == ["ops"]
    assert event.actor == "alerts"
    audit_q.integrate_pending(ctx.db)
    assert audit_svc.verify(ctx, admin).ok
    assert alerts_svc.dispatch(ctx) == {} and len(receiver.requests) == 2  # nothing more to send


def test_a_slack_webhook_gets_a_resolved_message_that_says_so(ctx, admin, receiver, clock):
    _hook(ctx, admin, receiver, name="slack", kind="slack")
    _raise(ctx, title="SLO missed: p95 <fast> & steady")
    clock.advance(minutes=7)
    assert _resolve(ctx)
    assert alerts_svc.dispatch(ctx) == {"delivered": 2}
    firing, resolved = (r.json() for r in receiver.requests)
    assert firing["text"] == "[SLO breached] SLO missed: p95 &lt;fast&gt; &amp; steady"
    assert resolved["text"] == "Resolved: [SLO breached] SLO missed: p95 &lt;fast&gt; &amp; steady"
    assert resolved["blocks"][0]["text"] == {"type": "plain_text", "text": "Resolved: SLO breached"}
    facts = resolved["blocks"][2]["text"]["text"]
    assert facts == f"*resolved_at*: {clock.now.isoformat(timespec='seconds')} (fired for 7 min)"
    assert [b["type"] for b in resolved["blocks"]] == ["header", "section", "section", "context"]
    assert all(_signed(r) for r in receiver.requests)


@pytest.mark.parametrize("kind", ["auto_rollback", "test"])
def test_a_one_off_event_never_gets_a_resolved_notice(ctx, admin, receiver, kind):
    hook = _hook(ctx, admin, receiver)
    if kind == "test":
        alert_id = alerts_svc.send_test_alert(ctx, admin, hook.id)
        with ctx.db.session(readonly=True) as s:
            key = s.get(Alert, alert_id).key
    else:
        key = "seq:5"
        _raise(ctx, kind, key, "Production rolled back automatically from v2 to v1")
    alerts_svc.dispatch(ctx)
    assert not _resolve(ctx, kind, key)
    assert _deliveries(ctx) == [("ops", "firing", "delivered")]
    assert alerts_svc.dispatch(ctx) == {} and len(receiver.requests) == 1
    assert receiver.requests[0].json()["event"] == "firing"
    assert receiver.requests[0].json()["alert"]["state"] == "event"


def test_only_webhooks_that_had_the_firing_notice_and_still_receive_the_kind_get_the_resolved_one(ctx, admin,
                                                                                                  receiver):
    _hook(ctx, admin, receiver, name="all")
    _hook(ctx, admin, receiver, name="reviews only", alert_kinds=["review_overdue"])
    leaving = _hook(ctx, admin, receiver, name="unsubscribes")
    off = _hook(ctx, admin, receiver, name="switched off")
    _raise(ctx)
    assert alerts_svc.dispatch(ctx) == {"delivered": 3}
    _hook(ctx, admin, receiver, name="added later")  # never told it fired: not told it cleared
    alerts_svc.update_webhook(ctx, admin, leaving.id, name="unsubscribes", kind="json", url=receiver.url,
                              alert_kinds=["review_overdue"], secret=SECRET)
    alerts_svc.set_webhook_enabled(ctx, admin, off.id, False)
    assert _resolve(ctx)
    assert alerts_svc.dispatch(ctx) == {"delivered": 1}
    assert [(r.json()["event"]) for r in receiver.requests] == ["firing", "firing", "firing", "resolved"]
    resolved = [d for d in _deliveries(ctx) if d[1] == "resolved"]
    assert resolved == [("all", "resolved", "delivered")]
    with ctx.db.session(readonly=True) as s:
        (event,) = audit_q.events_about(s, ["alert.resolved"])
    assert event.details["webhooks"] == ["all"]


def test_a_failed_resolved_notice_is_retried_with_the_same_delivery_id(ctx, admin, receiver, clock):
    _hook(ctx, admin, receiver)
    _raise(ctx)
    alerts_svc.dispatch(ctx)
    assert _resolve(ctx)
    receiver.answer((500, 0.0))
    assert alerts_svc.dispatch(ctx) == {"pending": 1}
    assert _deliveries(ctx)[1] == ("ops", "resolved", "pending")
    assert alerts_svc.dispatch(ctx) == {}  # not due yet
    clock.advance(minutes=1)
    assert alerts_svc.dispatch(ctx) == {"delivered": 1}
    first, retry = receiver.requests[1:]
    assert first.headers["X-Console-Delivery"] == retry.headers["X-Console-Delivery"]
    assert retry.json()["event"] == "resolved" and _signed(retry)
    with ctx.db.session(readonly=True) as s:
        resolved_id = s.scalar(select(AlertDelivery.id).where(AlertDelivery.event == "resolved"))
        attempts = list(s.scalars(select(AlertAttempt).where(AlertAttempt.delivery_id == resolved_id)
                                  .order_by(AlertAttempt.id)))
    assert [(a.attempt, a.status_code, a.ok) for a in attempts] == [(1, 500, False), (2, 200, True)]


def test_a_resolved_notice_that_gives_up_is_audited_as_such(ctx, admin, receiver, clock):
    _hook(ctx, admin, receiver)
    _raise(ctx)
    alerts_svc.dispatch(ctx)
    _resolve(ctx)
    receiver.answer(*[(503, 0.0)] * 4)
    for wait in (0, 1, 5, 30):
        clock.advance(minutes=wait)
        alerts_svc.dispatch(ctx)
    assert _deliveries(ctx)[1] == ("ops", "resolved", "failed")
    with ctx.db.session(readonly=True) as s:
        (event,) = audit_q.events_about(s, ["alert.delivery_failed"])
    assert event.details["event"] == "resolved" and event.details["attempts"] == 4


def test_a_firing_notice_still_waiting_when_the_condition_clears_goes_first(ctx, admin, receiver):
    _hook(ctx, admin, receiver)
    _raise(ctx)
    assert _resolve(ctx)  # cleared before any dispatcher round
    assert alerts_svc.dispatch(ctx) == {"delivered": 2}
    assert [r.json()["event"] for r in receiver.requests] == ["firing", "resolved"]
    assert [r.json()["alert"]["state"] for r in receiver.requests] == ["resolved", "resolved"]


def test_a_resolved_notice_waits_while_the_firing_one_is_retried(ctx, admin, receiver, clock):
    _hook(ctx, admin, receiver)
    _raise(ctx)
    receiver.answer((500, 0.0))
    assert alerts_svc.dispatch(ctx) == {"pending": 1}  # the firing notice failed once
    assert _resolve(ctx)
    with ctx.db.session(readonly=True) as s:
        resolved_id = s.scalar(select(AlertDelivery.id).where(AlertDelivery.event == "resolved"))
        assert alerts_q.due_deliveries(s, now=ctx.now()) == []
    with ctx.db.session() as s:  # a replica asking for it directly is refused too
        assert not alerts_q.claim_delivery(s, resolved_id, holder="replica-b", now=ctx.now(), lease_s=60)
    assert alerts_svc.dispatch(ctx) == {} and len(receiver.requests) == 1
    clock.advance(minutes=1)
    assert alerts_svc.dispatch(ctx) == {"delivered": 2}
    assert [r.json()["event"] for r in receiver.requests] == ["firing", "firing", "resolved"]


def test_a_resolved_notice_still_goes_when_the_firing_one_gave_up(ctx, admin, receiver, clock):
    _hook(ctx, admin, receiver)
    _raise(ctx)
    receiver.answer(*[(503, 0.0)] * 4)
    for wait in (0, 1, 5, 30):
        clock.advance(minutes=wait)
        alerts_svc.dispatch(ctx)
    assert _resolve(ctx)
    assert alerts_svc.dispatch(ctx) == {"delivered": 1}
    assert _deliveries(ctx) == [("ops", "firing", "failed"), ("ops", "resolved", "delivered")]


def test_clearing_twice_queues_the_resolved_notices_once(ctx, admin, receiver):
    _hook(ctx, admin, receiver)
    _raise(ctx)
    assert _resolve(ctx) and not _resolve(ctx)
    assert [d[1] for d in _deliveries(ctx)] == ["firing", "resolved"]
    # raised again after it cleared: a new alert, with its own firing and resolved notices
    assert _raise(ctx) is not None and _resolve(ctx)
    assert [d[1] for d in _deliveries(ctx)] == ["firing", "resolved", "firing", "resolved"]
    assert alerts_svc.dispatch(ctx) == {"delivered": 4}
    assert [r.json()["event"] for r in receiver.requests] == ["firing", "resolved", "firing", "resolved"]


def test_the_delivery_log_says_which_notice_each_delivery_carried(ctx, admin, receiver):
    _hook(ctx, admin, receiver)
    _raise(ctx)
    _resolve(ctx)
    alerts_svc.dispatch(ctx)
    log = alerts_svc.delivery_log(ctx, admin)
    assert [(d.event, d.status) for d in log] == [("resolved", "delivered"), ("firing", "delivered")]


def test_a_delivery_event_outside_firing_and_resolved_is_refused_by_the_database(ctx, admin, receiver):
    from sqlalchemy.exc import IntegrityError

    _hook(ctx, admin, receiver)
    alert_id = _raise(ctx)
    with pytest.raises(IntegrityError), ctx.db.session() as s:
        s.add(AlertDelivery(alert_id=alert_id, webhook_name="ops", status="pending", attempts=0, event="cleared"))
        s.flush()
    assert len(_deliveries(ctx)) == 1
