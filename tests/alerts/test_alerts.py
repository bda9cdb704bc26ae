"""Alerts by webhook, against a real HTTP receiver on loopback: bodies and signatures, retries after 500s and a
timeout, giving up, secrets never shown back or logged, each alert kind raised by its real condition, dedup, roles
and bad input."""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from console.services import alerts as alerts_svc
from console.services import audit as audit_svc
from console.services import moderation
from console.services import promotion as promotion_svc
from console.services import slo as slo_svc
from console.services.errors import AccessDenied, InvalidInput, NotFound
from db import alerts as alerts_q
from db import audit as audit_q
from db import latency as latency_q
from db import model_versions as versions_q
from db import promotions as promotions_q
from db.tables import Alert, AlertAttempt, AlertDelivery, AuditEvent, ReviewItem
from tests.alerts.conftest import URL_TOKEN, add_webhook
from tests.review_fixtures import flag

ALL = list(alerts_svc.SUBSCRIBABLE)


def _deliveries(ctx):
    with ctx.db.session(readonly=True) as s:
        return list(s.scalars(select(AlertDelivery).order_by(AlertDelivery.id)))


def _attempts(ctx):
    with ctx.db.session(readonly=True) as s:
        return list(s.scalars(select(AlertAttempt).order_by(AlertAttempt.id)))


def _alerts(ctx, kind=None):
    with ctx.db.session(readonly=True) as s:
        stmt = select(Alert).order_by(Alert.id)
        return list(s.scalars(stmt.where(Alert.kind == kind) if kind else stmt))


def _raise(ctx, kind="review_overdue", key="k", title="t", details=None):
    with ctx.db.session() as s:
        return alerts_q.raise_alert(s, kind, key, title, details or {"n": 1}, now=ctx.now())


# --- bodies, signatures, delivery -------------------------------------------------------------------------------


def test_a_json_webhook_gets_the_alert_signed_with_its_secret(ctx, admin, receiver):
    add_webhook(ctx, admin, receiver, secret="s3cret-shared-key")
    alert_id = _raise(ctx, "review_overdue", "queue", "3 review items past their deadline", {"overdue": 3})
    assert alerts_svc.dispatch(ctx) == {"delivered": 1}
    (got,) = receiver.requests
    body = got.json()
    assert got.path == f"/services/{URL_TOKEN}"
    assert body["console"] == "llm-console" and body["delivery"] == _deliveries(ctx)[0].id
    assert body["event"] == "firing"
    assert body["alert"] | {"raised_at": None} == {"id": alert_id, "kind": "review_overdue", "key": "queue",
                                                    "title": "3 review items past their deadline", "state": "firing",
                                                    "raised_at": None, "resolved_at": None, "details": {"overdue": 3}}
    stamp, signature = got.headers["X-Console-Timestamp"], got.headers["X-Console-Signature"]
    assert signature.startswith("sha256=")
    assert alerts_svc.verify_signature("s3cret-shared-key", stamp, got.body, signature)
    assert not alerts_svc.verify_signature("another-key-entirely", stamp, got.body, signature)
    assert not alerts_svc.verify_signature("s3cret-shared-key", stamp, got.body + b" ", signature)
    (delivery,) = _deliveries(ctx)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)


def test_a_slack_webhook_gets_text_and_blocks_unsigned_without_a_secret(ctx, admin, receiver):
    add_webhook(ctx, admin, receiver, name="slack", kind="slack")
    _raise(ctx, "promotion_waiting", "7", "Promotion request #7 waits for approval: <v2> & co to production",
           {"request_id": 7})
    alerts_svc.dispatch(ctx)
    (got,) = receiver.requests
    body = got.json()
    assert set(body) == {"text", "blocks"}
    assert body["text"] == ("[promotion waiting for approval] Promotion request #7 waits for approval: "
                            "&lt;v2&gt; &amp; co to production")
    assert [b["type"] for b in body["blocks"]] == ["header", "section", "section", "context"]
    assert body["blocks"][0]["text"] == {"type": "plain_text", "text": "promotion waiting for approval"}
    assert "*request_id*: 7" in body["blocks"][2]["text"]["text"]
    assert "X-Console-Signature" not in got.headers


def test_failed_attempts_are_retried_with_backoff_until_one_succeeds(ctx, admin, receiver, clock):
    ctx.settings = dataclasses.replace(ctx.settings, alert_timeout_seconds=0.5)
    add_webhook(ctx, admin, receiver)
    receiver.answer((500, 0.0), (200, 1.5))  # a server error, then an answer too slow for the timeout
    _raise(ctx)
    assert alerts_svc.dispatch(ctx) == {"pending": 1}
    (d,) = _deliveries(ctx)
    assert (d.status, d.attempts, d.last_status_code) == ("pending", 1, 500)
    assert d.last_error == "HTTP 500: server trouble"
    assert d.next_attempt_at == clock.now + timedelta(minutes=1)
    assert alerts_svc.dispatch(ctx) == {}  # not due yet
    clock.advance(minutes=1)
    assert alerts_svc.dispatch(ctx) == {"pending": 1}
    (d,) = _deliveries(ctx)
    assert (d.attempts, d.last_status_code, d.last_error) == (2, None, "timed out after 0.5 s")
    assert d.next_attempt_at == clock.now + timedelta(minutes=5)
    clock.advance(minutes=5)
    assert alerts_svc.dispatch(ctx) == {"delivered": 1}
    assert [(a.attempt, a.status_code, a.ok) for a in _attempts(ctx)] == [(1, 500, False), (2, None, False),
                                                                         (3, 200, True)]
    assert all(a.duration_ms >= 0 for a in _attempts(ctx))
    assert len(receiver.requests) == 3
    assert len({r.headers["X-Console-Delivery"] for r in receiver.requests}) == 1


def test_a_delivery_gives_up_after_its_attempts_and_the_failure_is_audited(ctx, admin, receiver, clock):
    add_webhook(ctx, admin, receiver)
    receiver.answer(*[(503, 0.0)] * 4)
    _raise(ctx)
    for wait in (0, 1, 5, 30):
        clock.advance(minutes=wait)
        alerts_svc.dispatch(ctx)
    (d,) = _deliveries(ctx)
    assert (d.status, d.attempts, d.next_attempt_at) == ("failed", 4, None)
    clock.advance(days=1)
    assert alerts_svc.dispatch(ctx) == {}
    assert len(receiver.requests) == 4
    with ctx.db.session(readonly=True) as s:
        (event,) = audit_q.events_about(s, ["alert.delivery_failed"])
    assert event.details["attempts"] == 4 and event.details["last_status_code"] == 503
    assert event.details["webhook"] == "ops"


def test_an_unreachable_webhook_fails_with_an_error_that_does_not_hold_the_url(ctx, admin, receiver):
    port = receiver.port
    add_webhook(ctx, admin, receiver, url=f"http://127.0.0.1:1/hooks/{URL_TOKEN}?token={URL_TOKEN}")
    _raise(ctx)
    alerts_svc.dispatch(ctx)
    (d,) = _deliveries(ctx)
    assert d.status == "pending" and d.last_status_code is None and d.last_error
    assert "ConnectError" in d.last_error
    assert URL_TOKEN not in d.last_error and "/hooks" not in d.last_error and str(port) not in d.last_error


def test_a_claimed_attempt_is_not_sent_by_a_second_dispatcher(ctx, admin, receiver):
    add_webhook(ctx, admin, receiver)
    _raise(ctx)
    (d,) = _deliveries(ctx)
    with ctx.db.session() as s:
        assert alerts_q.claim_delivery(s, d.id, holder="replica-a", now=ctx.now(), lease_s=60)
    with ctx.db.session() as s:
        assert not alerts_q.claim_delivery(s, d.id, holder="replica-b", now=ctx.now(), lease_s=60)
    assert alerts_svc.dispatch(ctx) == {}  # replica-a holds it
    assert receiver.requests == []
    # replica-a died mid-send: once its claim runs out the delivery is sent again (at-least-once)
    ctx.clock.advance(seconds=61)
    assert alerts_svc.dispatch(ctx) == {"delivered": 1}
    assert _deliveries(ctx)[0].attempts == 2


def test_a_disabled_webhook_gets_nothing_and_its_queued_deliveries_fail(ctx, admin, receiver):
    hook = add_webhook(ctx, admin, receiver)
    _raise(ctx)
    alerts_svc.set_webhook_enabled(ctx, admin, hook.id, False)
    alerts_svc.dispatch(ctx)
    assert receiver.requests == []
    assert _deliveries(ctx)[0].status == "failed"
    _raise(ctx, key="other")
    assert len(_deliveries(ctx)) == 1  # disabled webhooks are not queued


def test_webhooks_get_only_the_kinds_they_chose(ctx, admin, receiver):
    add_webhook(ctx, admin, receiver, name="slo only", alert_kinds=["slo_breach"])
    _raise(ctx, "review_overdue", "queue")
    _raise(ctx, "slo_breach", "ttft_ms/p95")
    assert [d.webhook_name for d in _deliveries(ctx)] == ["slo only"]
    assert alerts_svc.dispatch(ctx) == {"delivered": 1}
    assert receiver.requests[0].json()["alert"]["kind"] == "slo_breach"


def test_send_test_alert_goes_to_that_webhook_only(ctx, admin, receiver):
    a = add_webhook(ctx, admin, receiver, name="a", alert_kinds=["slo_breach"])
    add_webhook(ctx, admin, receiver, name="b")
    _raise(ctx, "slo_breach", "ttft_ms/p95")  # due for both, but not sent by the test's dispatch
    test_id = alerts_svc.send_test_alert(ctx, admin, a.id)
    assert alerts_svc.dispatch_now(ctx, admin, test_id) == {"delivered": 1}
    (got,) = receiver.requests
    assert got.json()["alert"]["kind"] == "test" and got.json()["alert"]["details"]["webhook"] == "a"
    with pytest.raises(NotFound):
        alerts_svc.send_test_alert(ctx, admin, 999)


# --- dedup --------------------------------------------------------------------------------------------------------


def test_one_alert_per_condition_until_it_clears(ctx, admin, receiver):
    add_webhook(ctx, admin, receiver)
    first = _raise(ctx, "slo_breach", "ttft_ms/p95")
    assert first is not None and _raise(ctx, "slo_breach", "ttft_ms/p95") is None
    assert _raise(ctx, "slo_breach", "e2e_ms/p95") is not None  # another condition
    with ctx.db.session() as s:
        assert alerts_q.resolve_alert(s, "slo_breach", "ttft_ms/p95", now=ctx.now())
        assert not alerts_q.resolve_alert(s, "slo_breach", "ttft_ms/p95", now=ctx.now())
    again = _raise(ctx, "slo_breach", "ttft_ms/p95")
    assert again is not None and again != first
    assert [a.state for a in _alerts(ctx, "slo_breach")] == ["resolved", "firing", "firing"]
    # a one-off event is raised once, ever
    assert _raise(ctx, "auto_rollback", "seq:5") is not None and _raise(ctx, "auto_rollback", "seq:5") is None
    with ctx.db.session() as s:
        assert not alerts_q.resolve_alert(s, "auto_rollback", "seq:5")
    with ctx.db.session(readonly=True) as s:
        raised = audit_q.events_about(s, ["alert.raised"])
    assert len(raised) == 4 and all(e.actor == "alerts" for e in raised)
    # four firing notices, and the resolved one of the condition that cleared
    assert sorted(d.event for d in _deliveries(ctx)) == ["firing"] * 4 + ["resolved"]


def test_an_unknown_alert_kind_is_refused(ctx):
    with ctx.db.session() as s, pytest.raises(ValueError, match="unknown alert kind 'nope'"):
        alerts_q.raise_alert(s, "nope", "k", "t", {})


# --- each condition, for real ----------------------------------------------------------------------------------


def test_an_slo_missed_over_the_window_raises_slo_breach_and_clears_when_met(ctx, admin, clock):
    slo_svc.set_slo(ctx, admin, "ttft_ms", "p95", 500)
    alerts_svc.evaluate(ctx)  # the first round sets the audit cursor
    for minute in range(1, 6):
        with ctx.db.session() as s:
            for ttft in (900, 1200, 1500):
                latency_q.record_exchange(s, minute=clock.now - timedelta(minutes=minute), model_version="v1",
                                          synthetic=False, status="ok", prompt_action=None, output_action=None,
                                          timings={"ttft_ms": ttft}, overhead={})
    raised = alerts_svc.evaluate(ctx)
    (alert,) = _alerts(ctx, "slo_breach")
    assert raised == [alert.id] and alert.key == "ttft_ms/p95" and alert.state == "firing"
    assert alert.title.startswith("SLO missed over the last 10 minutes: p95 time to first token <= 500 ms")
    assert alert.details["measured"] > 500 and alert.details["minutes"] == 10
    assert alerts_svc.evaluate(ctx) == []  # still firing: no second alert
    clock.advance(minutes=11)  # the slow minutes leave the window
    alerts_svc.evaluate(ctx)
    assert [a.state for a in _alerts(ctx, "slo_breach")] == ["resolved"]


def test_synthetic_traffic_and_met_targets_raise_nothing(ctx, admin, clock):
    slo_svc.set_slo(ctx, admin, "ttft_ms", "p95", 500)
    with ctx.db.session() as s:
        latency_q.record_exchange(s, minute=clock.now - timedelta(minutes=1), model_version="v1", synthetic=True,
                                  status="ok", prompt_action=None, output_action=None, timings={"ttft_ms": 9000},
                                  overhead={})
        latency_q.record_exchange(s, minute=clock.now - timedelta(minutes=1), model_version="v1", synthetic=False,
                                  status="ok", prompt_action=None, output_action=None, timings={"ttft_ms": 100},
                                  overhead={})
    assert alerts_svc.evaluate(ctx) == []


def _versions(ctx, admin):
    with ctx.db.session() as s:
        v1 = versions_q.register_model_version(s, name="v1", source="/m/v1", actor="ada", actor_id=admin.user_id)
        v2 = versions_q.register_model_version(s, name="v2", source="/m/v2", actor="ada", actor_id=admin.user_id)
        return v1.id, v2.id


def test_a_pending_promotion_request_raises_promotion_waiting_until_decided(ctx, admin, make_user):
    v1, v2 = _versions(ctx, admin)
    with ctx.db.session() as s:
        request = promotions_q.create_request(s, alias="production", version_id=v2, from_version_id=v1,
                                              evaluation_id=None, report=None, baseline_report=None, gates=[],
                                              reason="better answers", actor="ada", actor_id=admin.user_id)
        request_id = request.id
    alerts_svc.evaluate(ctx)
    (alert,) = _alerts(ctx, "promotion_waiting")
    assert alert.title == f"Promotion request #{request_id} waits for approval: v2 to production"
    assert alerts_svc.evaluate(ctx) == []
    reviewer = make_user("rita", "reviewer")
    promotion_svc.reject(ctx, reviewer, request_id, "not yet")
    alerts_svc.evaluate(ctx)
    assert [a.state for a in _alerts(ctx, "promotion_waiting")] == ["resolved"]


def test_an_automatic_rollback_raises_auto_rollback_once(ctx, admin):
    v1_id, v2_id = _versions(ctx, admin)
    alerts_svc.evaluate(ctx)  # cursor at the head: older events raise nothing
    with ctx.db.session() as s:
        v1, v2 = versions_q.get_model_version(s, v1_id), versions_q.get_model_version(s, v2_id)
        versions_q.move_alias(s, "production", v2, actor="ada", actor_id=admin.user_id, reason="promote")
        promotion_svc.apply_rollback(s, v2, v1, actor="watch", actor_id=None, reason="errors rose", auto=True)
        promotion_svc.apply_rollback(s, v1, v2, actor="ada", actor_id=admin.user_id, reason="by hand", auto=False)
    audit_q.integrate_pending(ctx.db)
    alerts_svc.evaluate(ctx)
    (alert,) = _alerts(ctx, "auto_rollback")
    assert alert.title == "Production rolled back automatically from v2 to v1" and alert.state == "event"
    assert alert.details["reason"] == "errors rose"
    assert alerts_svc.evaluate(ctx) == []


@pytest.mark.slow  # the real toxicity loader (about 14 s here) gives the fallback notice
def test_a_fallback_toxicity_scanner_raises_scanner_fallback_until_a_stack_loads_without_one(ctx, monkeypatch,
                                                                                             tmp_path):
    import engine.safety.runner as runner_mod
    from engine.safety.runner import ScannerRunner
    from engine.safety.toxicity import ToxicityConfig, load_toxicity

    # The notice the real loader gives when Detoxify's weights are missing (offline model or profanity fallback).
    notice = load_toxicity(ToxicityConfig(model_type="original", allow_download=False)).notice
    assert notice
    monkeypatch.setattr(runner_mod, "build_runner", lambda *a, **k: (ScannerRunner([]), notice))
    moderation.build_safety_stack(ctx.settings, ctx.db)
    moderation.build_safety_stack(ctx.settings, ctx.db)  # a second replica on the fallback: still one alert
    (alert,) = _alerts(ctx, "scanner_fallback")
    assert alert.state == "firing" and notice in alert.title
    monkeypatch.setattr(runner_mod, "build_runner", lambda *a, **k: (ScannerRunner([]), None))
    moderation.build_safety_stack(ctx.settings, ctx.db)
    assert [a.state for a in _alerts(ctx, "scanner_fallback")] == ["resolved"]


def test_a_tampered_audit_chain_raises_audit_verify_failed_and_a_passing_verify_clears_it(ctx, admin):
    with ctx.db.session() as s:
        for i in range(3):
            audit_q.append_event(s, actor="system", action="test.event", details={"i": i})
    audit_q.integrate_pending(ctx.db)
    alerts_svc.evaluate(ctx)
    assert audit_svc.verify(ctx, admin).ok
    with ctx.db.engine.begin() as conn:
        for name in ("audit_events_append_only_update", "audit_events_append_only_delete"):
            conn.execute(text(f"DROP TRIGGER IF EXISTS {name}"))
        conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE action = 'test.event'"))
    report = audit_svc.verify(ctx, admin)
    assert not report.ok
    alerts_svc.evaluate(ctx)
    (alert,) = _alerts(ctx, "audit_verify_failed")
    assert alert.state == "firing" and alert.details["first_bad_seq"] == report.first_bad_seq
    assert alert.title.startswith("Audit verification failed")


def test_review_items_past_their_deadline_raise_review_overdue_until_none_is(ctx, make_user, clock):
    owner = make_user("olivia", "operator")
    first = flag(ctx, owner, created_at=clock.now - timedelta(days=3))
    flag(ctx, owner, created_at=clock.now - timedelta(days=3))
    flag(ctx, owner, created_at=clock.now)  # due later
    alerts_svc.evaluate(ctx)
    (alert,) = _alerts(ctx, "review_overdue")
    assert alert.title == "2 review items past their deadline" and alert.details["overdue"] == 2
    with ctx.db.session() as s:
        for item in s.scalars(select(ReviewItem).where(ReviewItem.due_at < clock.now)):
            item.status = "decided"
    assert first
    alerts_svc.evaluate(ctx)
    assert [a.state for a in _alerts(ctx, "review_overdue")] == ["resolved"]


def test_the_evaluator_runs_in_one_replica_per_interval(ctx):
    a, b = alerts_svc.AlertEvaluator(ctx, interval_s=60), alerts_svc.AlertEvaluator(ctx, interval_s=60)
    assert a.run_round().ran
    assert not b.run_round().ran


# --- secrets, roles, bad input ------------------------------------------------------------------------------------


def test_the_url_and_secret_are_never_shown_audited_or_logged(ctx, admin, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    hook = add_webhook(ctx, admin, receiver, secret="s3cret-shared-key")
    assert hook.url_display == f"http://127.0.0.1:{receiver.port}/…" and hook.signed
    alerts_svc.update_webhook(ctx, admin, hook.id, name="ops", kind="slack", url=receiver.url + "?x=1",
                              alert_kinds=ALL, secret="another-secret-key")
    alerts_svc.send_test_alert(ctx, admin, hook.id)
    receiver.answer((500, 0.0))
    alerts_svc.dispatch(ctx)
    views = alerts_svc.list_webhooks(ctx, admin)
    shown = json.dumps([dataclasses.asdict(v) for v in views], default=str)
    shown += json.dumps([dataclasses.asdict(d) for d in alerts_svc.delivery_log(ctx, admin)], default=str)
    with ctx.db.session(readonly=True) as s:
        audit = json.dumps([audit_q.event_to_dict(e) for e in s.scalars(select(AuditEvent))], default=str)
    for secret in (URL_TOKEN, "s3cret-shared-key", "another-secret-key", "/services/"):
        assert secret not in shown and secret not in audit and secret not in caplog.text
    with ctx.db.session(readonly=True) as s:
        (changed,) = audit_q.events_about(s, ["webhook.changed"])
    assert changed.details["url_changed"] and changed.details["secret_changed"]
    assert changed.details["changed"] == {"kind": "slack"}


@pytest.mark.parametrize("role", ["operator", "reviewer", "analyst"])
def test_only_admins_manage_webhooks(ctx, make_user, admin, receiver, role):
    hook = add_webhook(ctx, admin, receiver)
    other = make_user("someone", role)
    for call in (lambda: alerts_svc.list_webhooks(ctx, other),
                 lambda: add_webhook(ctx, other, receiver, name="mine"),
                 lambda: alerts_svc.update_webhook(ctx, other, hook.id, name="x", kind="json", url=receiver.url,
                                                   alert_kinds=ALL),
                 lambda: alerts_svc.set_webhook_enabled(ctx, other, hook.id, False),
                 lambda: alerts_svc.delete_webhook(ctx, other, hook.id),
                 lambda: alerts_svc.send_test_alert(ctx, other, hook.id),
                 lambda: alerts_svc.delivery_log(ctx, other),
                 lambda: alerts_svc.recent_alerts(ctx, other)):
        with pytest.raises(AccessDenied):
            call()
    assert [h.name for h in alerts_svc.list_webhooks(ctx, admin)] == ["ops"]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("url", "ftp://files.example.com/hook", "URL: only http:// and https:// addresses are allowed (not ftp:)."),
    ("url", "file:///etc/passwd", "URL: only http:// and https:// addresses are allowed (not file:)."),
    ("url", "javascript:alert(1)", "URL: only http:// and https:// addresses are allowed"),
    ("url", "hooks.example.com/x", "URL: only http:// and https:// addresses are allowed."),
    ("url", "", "URL: enter the webhook's address"),
    ("url", "https:///path-only", "URL: the address needs a host name"),
    ("url", "https://example.com:99999/x", "URL: the port must be a number from 1 to 65535."),
    ("url", "https://exa mple.com/x", "URL: no spaces or control characters."),
    ("url", "https://example.com/" + "a" * 2000, "URL: at most 2,000 characters."),
    ("name", "", "Name: enter a name for the webhook."),
    ("name", "   ", "Name: enter a name for the webhook."),
    ("name", "x" * 81, "Name: at most 80 characters."),
    ("kind", "teams", "Body format: one of json, slack"),
    ("alert_kinds", ["slo_breach", "everything"], "Alert kinds: unknown kind 'everything'"),
    ("alert_kinds", [], "Alert kinds: choose at least one kind of alert"),
    ("alert_kinds", ["test"], "Alert kinds: unknown kind 'test'"),
    ("alert_kinds", "everything", "Alert kinds: unknown kind 'everything'"),
    ("secret", "short", "Signing secret: 8 to 200 characters"),
], ids=lambda v: str(v)[:30])
def test_bad_webhook_input_is_refused_with_a_clear_message_and_nothing_is_stored(ctx, admin, receiver, field, value,
                                                                                message):
    args = {"name": "ops", "kind": "json", "url": receiver.url, "alert_kinds": ALL, "secret": None} | {field: value}
    with pytest.raises(InvalidInput) as info:
        alerts_svc.create_webhook(ctx, admin, **args)
    assert str(info.value).startswith(message)
    assert alerts_svc.list_webhooks(ctx, admin) == []
    with ctx.db.session(readonly=True) as s:
        assert audit_q.events_about(s, ["webhook.created"]) == []


def test_a_refused_url_is_not_echoed_in_the_message(ctx, admin):
    with pytest.raises(InvalidInput) as info:
        alerts_svc.create_webhook(ctx, admin, name="x", kind="json", url=f"gopher://h/{URL_TOKEN}", alert_kinds=ALL)
    assert URL_TOKEN not in str(info.value)


def test_names_are_unique_and_edits_need_the_url_again(ctx, admin, receiver):
    add_webhook(ctx, admin, receiver)
    other = add_webhook(ctx, admin, receiver, name="other")
    with pytest.raises(InvalidInput, match="Name: a webhook named 'ops' exists already"):
        add_webhook(ctx, admin, receiver)
    with pytest.raises(InvalidInput, match="Name: a webhook named 'ops' exists already"):
        alerts_svc.update_webhook(ctx, admin, other.id, name="ops", kind="json", url=receiver.url, alert_kinds=ALL)
    with pytest.raises(InvalidInput, match="URL: enter the webhook's address"):
        alerts_svc.update_webhook(ctx, admin, other.id, name="other", kind="json", url="", alert_kinds=ALL)
    with pytest.raises(NotFound):
        alerts_svc.update_webhook(ctx, admin, 999, name="z", kind="json", url=receiver.url, alert_kinds=ALL)


def test_deleting_a_webhook_keeps_its_log_and_fails_what_it_had_not_sent(ctx, admin, receiver):
    hook = add_webhook(ctx, admin, receiver)
    _raise(ctx, key="one")
    alerts_svc.dispatch(ctx)
    _raise(ctx, key="two")
    assert alerts_svc.delete_webhook(ctx, admin, hook.id) == "ops"
    log = alerts_svc.delivery_log(ctx, admin)
    assert [(d.webhook, d.status, d.last_error) for d in log] == [("ops", "failed", "webhook deleted"),
                                                                  ("ops", "delivered", None)]
    with ctx.db.session(readonly=True) as s:
        (deleted,) = audit_q.events_about(s, ["webhook.deleted"])
    assert deleted.details["unsent_deliveries_failed"] == 1
    assert alerts_svc.list_webhooks(ctx, admin) == []


def test_the_retry_setting_is_checked(tmp_path):
    from console.settings import Settings, SettingsError
    from tests.conftest import console_env

    assert Settings.from_env(console_env(tmp_path)).alert_retry_minutes == (1.0, 5.0, 30.0)
    with pytest.raises(SettingsError, match="LLM_CONSOLE_ALERT_RETRY_MINUTES"):
        Settings.from_env(console_env(tmp_path, LLM_CONSOLE_ALERT_RETRY_MINUTES="1,-5"))
