"""Alerts by webhook: admins manage the webhooks (``alerts.manage``); a leased evaluator raises alerts from the
console's state and audit log; a dispatcher sends them with retries and logs every attempt.

Conditions (one alert per condition until it clears, :mod:`db.alerts`):

- ``slo_breach``: a target measured over the last ``alert_slo_minutes`` minutes of real traffic (every version
  together, from the latency buckets) is missed; clears when it is met again (or nothing was measured).
- ``promotion_waiting``: a promotion request is pending approval; clears when it is decided or cancelled.
- ``auto_rollback``: an automatic rollback (the watch window's ``model.rollback`` with ``auto``, or a canary the
  judge rolled back), read from the audit log after a cursor; one alert per rollback.
- ``audit_verify_failed``: an ``audit.verify`` that failed; clears at the next verification that passes.
- ``review_overdue``: review items (open or claimed) past their ``due_at``; clears when none is overdue.
- ``scanner_fallback``: a console's safety stack loaded the toxicity scanner's fallback (raised where the stack is
  built, console.services.moderation); clears when a stack loads without a notice.

URLs and secrets are stored encrypted (console.services.secret_box: a Fernet key in a file outside the database)
and decrypted only here, to send (the dispatcher, the test alert) and to tell whether an edit changed them.

Notices: a ``firing`` one when an alert is raised, and a ``resolved`` one when its condition clears, to each webhook
that had the firing one and still receives the kind (never for one-off events); the resolved one is sent only after
the firing one was delivered or gave up (db.alerts).

Bodies: ``json`` webhooks get ``{"event": "firing"|"resolved", "alert": {...}, "delivery": id, "console":
"llm-console"}``; ``slack`` webhooks get ``{"text": ..., "blocks": [...]}``, a resolved notice's text starting
``Resolved:``. With a shared secret the body is signed: ``X-Console-Timestamp: <unix
seconds>`` and ``X-Console-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import func, select

from console.services import secret_box
from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import InvalidInput, NotFound
from console.services.periodic import PeriodicTask
from db import alerts as alerts_q
from db import audit as audit_q
from db import latency as latency_q
from db import latency_report
from db import slo as slo_q
from db.tables import Alert, AlertDelivery, AuditEvent, PromotionRequest, ReviewItem, Webhook

logger = logging.getLogger(__name__)

WEBHOOK_KINDS = {"json": "generic JSON", "slack": "Slack-compatible"}
# Kinds an admin may subscribe a webhook to ("test" goes only where the page sends it).
SUBSCRIBABLE = tuple(k for k in alerts_q.ALERT_KINDS if k != "test")
KIND_LABELS = {
    "slo_breach": "SLO breached",
    "promotion_waiting": "promotion waiting for approval",
    "auto_rollback": "automatic rollback",
    "scanner_fallback": "scanners on their fallback",
    "audit_verify_failed": "audit verification failed",
    "review_overdue": "review item past its deadline",
    "test": "test alert",
}
MAX_NAME_CHARS = 80
MAX_URL_CHARS = 2000
MIN_SECRET_CHARS = 8
MAX_SECRET_CHARS = 200
MAX_ERROR_CHARS = 300
SIGNATURE_HEADER = "X-Console-Signature"
TIMESTAMP_HEADER = "X-Console-Timestamp"
DELIVERY_HEADER = "X-Console-Delivery"
EVALUATOR_JOB = "alert-evaluator"
AUDIT_ACTIONS = ("model.rollback", "promotion.canary_rolled_back", "audit.verify")
AUDIT_BATCH = 1000


# --- webhooks -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookView:
    """A webhook as the page shows it: the URL as scheme and host only, whether a secret signs its bodies."""

    id: int
    name: str
    kind: str
    url_display: str
    alert_kinds: tuple[str, ...]
    signed: bool
    enabled: bool
    updated_at: datetime


def _view(hook: Webhook) -> WebhookView:
    return WebhookView(hook.id, hook.name, hook.kind, hook.url_display, tuple(hook.alert_kinds or ()),
                       bool(hook.secret), bool(hook.enabled), hook.updated_at)


def mask_url(url: str) -> str:
    """``https://hooks.slack.com/…``: scheme and host (and a port), never the path, query or user info."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}/…"


def check_url(url: str) -> str:
    """The URL stripped, or InvalidInput naming the field and what is allowed (the URL itself is never echoed:
    it may hold a token)."""
    url = (url or "").strip()
    if not url:
        raise InvalidInput("URL: enter the webhook's address (http:// or https://).")
    if len(url) > MAX_URL_CHARS:
        raise InvalidInput(f"URL: at most {MAX_URL_CHARS:,} characters.")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidInput("URL: no spaces or control characters.")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidInput("URL: only http:// and https:// addresses are allowed"
                           + (f" (not {parts.scheme}:)." if parts.scheme and len(parts.scheme) <= 10 else "."))
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise InvalidInput("URL: the port must be a number from 1 to 65535.") from None
    if not parts.hostname:
        raise InvalidInput("URL: the address needs a host name (https://host/path).")
    return url


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise InvalidInput("Name: enter a name for the webhook.")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInput(f"Name: at most {MAX_NAME_CHARS} characters.")
    if any(ord(c) < 32 for c in name):
        raise InvalidInput("Name: no control characters.")
    return name


def _check_kind(kind: str) -> str:
    if kind not in WEBHOOK_KINDS:
        raise InvalidInput(f"Body format: one of {', '.join(WEBHOOK_KINDS)} (not {str(kind)[:20]!r}).")
    return kind


def _check_alert_kinds(kinds: Any) -> list[str]:
    if isinstance(kinds, str):
        kinds = [kinds]
    chosen = [str(k) for k in (kinds or ())]
    bad = [k for k in chosen if k not in SUBSCRIBABLE]
    if bad:
        raise InvalidInput(f"Alert kinds: unknown kind {bad[0][:40]!r}; choose from {', '.join(SUBSCRIBABLE)}.")
    if not chosen:
        raise InvalidInput("Alert kinds: choose at least one kind of alert for this webhook.")
    return [k for k in SUBSCRIBABLE if k in chosen]


def _check_secret(secret: str | None) -> str | None:
    secret = (secret or "").strip()
    if not secret:
        return None
    if not MIN_SECRET_CHARS <= len(secret) <= MAX_SECRET_CHARS:
        raise InvalidInput(f"Signing secret: {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} characters, or leave it empty "
                           f"for unsigned bodies.")
    return secret


def _audit_details(hook: Webhook) -> dict[str, Any]:
    # Never the URL or the secret: the host, and whether bodies are signed.
    return {"name": hook.name, "kind": hook.kind, "host": hook.url_display, "alert_kinds": list(hook.alert_kinds),
            "signed": bool(hook.secret), "enabled": bool(hook.enabled)}


@requires("alerts.manage")
def list_webhooks(ctx: AppContext, actor: Principal) -> list[WebhookView]:
    """Every webhook, its URL masked."""
    with ctx.db.session(readonly=True) as s:
        return [_view(h) for h in alerts_q.list_webhooks(s)]


@requires("alerts.manage")
def create_webhook(ctx: AppContext, actor: Principal, *, name: str, kind: str, url: str, alert_kinds: Any,
                   secret: str | None = None, enabled: bool = True) -> WebhookView:
    """Add a webhook; audited as ``webhook.created`` (host only, never the URL or secret)."""
    name, kind, url = _check_name(name), _check_kind(kind), check_url(url)
    chosen, secret = _check_alert_kinds(alert_kinds), _check_secret(secret)
    now = ctx.now()
    with ctx.db.session() as s:
        if alerts_q.webhook_by_name(s, name) is not None:
            raise InvalidInput(f"Name: a webhook named {name!r} exists already; choose another name.")
        hook = Webhook(name=name, kind=kind, url_display=mask_url(url), alert_kinds=chosen, enabled=bool(enabled),
                       created_by_id=actor.user_id, created_at=now, updated_at=now,
                       **secret_box.seal(ctx, url, secret))
        s.add(hook)
        s.flush()
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="webhook.created",
                             object_type="webhook", object_id=hook.id, details=_audit_details(hook))
        return _view(hook)


@requires("alerts.manage")
def update_webhook(ctx: AppContext, actor: Principal, webhook_id: int, *, name: str, kind: str, url: str,
                   alert_kinds: Any, secret: str | None = None, enabled: bool = True) -> WebhookView:
    """Change a webhook. The URL must be entered again (it is never shown back), and so must the secret (empty:
    bodies are no longer signed). Audited as ``webhook.changed`` with what changed (never the URL or secret)."""
    name, kind, url = _check_name(name), _check_kind(kind), check_url(url)
    chosen, secret = _check_alert_kinds(alert_kinds), _check_secret(secret)
    with ctx.db.session() as s:
        hook = alerts_q.get_webhook(s, int(webhook_id))
        if hook is None:
            raise NotFound(f"No webhook with id {webhook_id}.")
        other = alerts_q.webhook_by_name(s, name)
        if other is not None and other.id != hook.id:
            raise InvalidInput(f"Name: a webhook named {name!r} exists already; choose another name.")
        before = _audit_details(hook)
        try:
            old_url, old_secret = secret_box.open_hook(ctx, hook)
            url_changed, secret_changed = old_url != url, old_secret != secret
        except secret_box.SecretsKeyWrong:  # entered again with the key there is now: it is readable from here on
            url_changed = secret_changed = True
        sealed = secret_box.seal(ctx, url, secret)
        hook.name, hook.kind, hook.url_display = name, kind, mask_url(url)
        hook.alert_kinds, hook.enabled, hook.updated_at = chosen, bool(enabled), ctx.now()
        alerts_q.store_webhook_secrets(s, hook, **sealed)
        after = _audit_details(hook)
        changed = {k: after[k] for k in after if after[k] != before[k]}
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="webhook.changed",
                             object_type="webhook", object_id=hook.id,
                             details={"name": hook.name, "changed": changed, "url_changed": url_changed,
                                      "secret_changed": secret_changed})
        return _view(hook)


@requires("alerts.manage")
def set_webhook_enabled(ctx: AppContext, actor: Principal, webhook_id: int, enabled: bool) -> WebhookView:
    """Turn a webhook on or off (no URL needed); audited as ``webhook.changed``."""
    with ctx.db.session() as s:
        hook = alerts_q.get_webhook(s, int(webhook_id))
        if hook is None:
            raise NotFound(f"No webhook with id {webhook_id}.")
        if hook.enabled != bool(enabled):
            hook.enabled, hook.updated_at = bool(enabled), ctx.now()
            s.flush()
            audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="webhook.changed",
                                 object_type="webhook", object_id=hook.id,
                                 details={"name": hook.name, "changed": {"enabled": bool(enabled)},
                                          "url_changed": False, "secret_changed": False})
        return _view(hook)


@requires("alerts.manage")
def delete_webhook(ctx: AppContext, actor: Principal, webhook_id: int) -> str:
    """Delete a webhook (its deliveries stay in the log under its name; unsent ones fail). Audited as
    ``webhook.deleted``. Returns its name."""
    with ctx.db.session() as s:
        hook = alerts_q.get_webhook(s, int(webhook_id))
        if hook is None:
            raise NotFound(f"No webhook with id {webhook_id}.")
        details = _audit_details(hook)
        name, hook_id = hook.name, hook.id
        details["unsent_deliveries_failed"] = alerts_q.delete_webhook(s, hook, now=ctx.now())
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="webhook.deleted",
                             object_type="webhook", object_id=hook_id, details=details)
        return name


@requires("alerts.manage")
def send_test_alert(ctx: AppContext, actor: Principal, webhook_id: int) -> int:
    """Queue a test alert to this one webhook (sent by the dispatcher's next round, or :func:`dispatch_now`);
    returns the alert's id. The alert is audited (``alert.raised``, kind ``test``)."""
    with ctx.db.session() as s:
        hook = alerts_q.get_webhook(s, int(webhook_id))
        if hook is None:
            raise NotFound(f"No webhook with id {webhook_id}.")
        secret_box.open_hook(ctx, hook)  # a webhook the key cannot decrypt says so here, before anything is queued
        alert_id = alerts_q.raise_alert(
            s, "test", f"{hook.id}:{secrets.token_hex(6)}", f"Test alert from the console, sent by {actor.username}",
            {"webhook": hook.name, "requested_by": actor.username}, now=ctx.now(), webhook_ids=[hook.id])
        assert alert_id is not None  # the key is new
        return alert_id


@requires("alerts.manage")
def secrets_problem(ctx: AppContext, actor: Principal) -> str | None:
    """None when every webhook's URL and secret can be decrypted with the secrets key; else what is wrong and how
    to fix it (the page shows it above the webhooks)."""
    with ctx.db.session(readonly=True) as s:
        return secret_box.readable(ctx, alerts_q.list_webhooks(s))


@requires("alerts.manage")
def dispatch_now(ctx: AppContext, actor: Principal, alert_id: int | None = None) -> dict[str, int]:
    """Send what is due now, of one alert when given (the page sends its test alert at once instead of waiting for
    the dispatcher's round)."""
    return dispatch(ctx, alert_id=alert_id)


# --- what the page shows ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertView:
    id: int
    kind: str
    title: str
    state: str
    raised_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True)
class DeliveryView:
    id: int
    alert_id: int
    alert_kind: str
    alert_title: str
    webhook: str
    event: str  # the notice it carries: "firing" or "resolved"
    status: str
    attempts: int
    max_attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    finished_at: datetime | None


@requires("alerts.manage")
def recent_alerts(ctx: AppContext, actor: Principal, limit: int = 50) -> list[AlertView]:
    with ctx.db.session(readonly=True) as s:
        return [AlertView(a.id, a.kind, a.title, a.state, a.raised_at, a.resolved_at)
                for a in alerts_q.recent_alerts(s, limit)]


@requires("alerts.manage")
def delivery_log(ctx: AppContext, actor: Principal, limit: int = 100) -> list[DeliveryView]:
    """The newest deliveries: status, attempts, the next retry, the last HTTP status and error."""
    attempts = max_attempts(ctx)
    with ctx.db.session(readonly=True) as s:
        return [DeliveryView(d.id, a.id, a.kind, a.title, d.webhook_name, d.event, d.status, d.attempts, attempts,
                             d.last_status_code, d.last_error, d.next_attempt_at if d.status == "pending" else None,
                             d.created_at, d.finished_at)
                for d, a in alerts_q.deliveries(s, limit)]


# --- bodies and signatures ----------------------------------------------------------------------------------------


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn treats &, < and > as control characters (links, mentions): escaped as Slack documents.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def alert_payload(alert: Any, delivery_id: int, event: str = "firing") -> dict[str, Any]:
    """The generic JSON body of ``alert`` (a db.tables.Alert) for the notice ``event`` ("firing" or "resolved").
    ``state`` and ``resolved_at`` are the alert's when sent (a firing notice sent after the condition cleared
    says "resolved" there)."""
    return {"console": "llm-console", "delivery": delivery_id, "event": event,
            "alert": {"id": alert.id, "kind": alert.kind, "key": alert.key, "title": alert.title,
                      "state": alert.state, "raised_at": alert.raised_at.isoformat(),
                      "resolved_at": _iso(alert.resolved_at), "details": alert.details}}


def _lasted(alert: Any) -> str:
    seconds = max(0, int((alert.resolved_at - alert.raised_at).total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def slack_payload(alert: Any, event: str = "firing") -> dict[str, Any]:
    """A Slack-compatible body (incoming webhooks): ``text`` for notifications, ``blocks`` for the message; a
    resolved notice says "Resolved:" first, and when and after how long."""
    label = KIND_LABELS.get(alert.kind, alert.kind)
    title = _slack_escape(alert.title)
    if event == "resolved" and alert.resolved_at is not None:
        resolved = alert.resolved_at.isoformat(timespec="seconds")
        return {"text": f"Resolved: [{label}] {title}"[:3000], "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": f"Resolved: {label}"[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": title[:2900]}},
            {"type": "section", "text": {"type": "mrkdwn",
                                         "text": f"*resolved_at*: {resolved} (fired for {_lasted(alert)})"}},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"llm-console · {alert.kind} · resolved · {resolved}"}]}]}
    facts = [f"*{_slack_escape(str(k))}*: {_slack_escape(json.dumps(v, default=str)[:200])}"
             for k, v in list((alert.details or {}).items())[:8]]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{label}"[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": title[:2900]}},
    ]
    if facts:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(facts)[:2900]}})
    blocks.append({"type": "context", "elements": [
        {"type": "mrkdwn", "text": f"llm-console · {alert.kind} · {alert.raised_at.isoformat(timespec='seconds')}"}]})
    return {"text": f"[{label}] {title}"[:3000], "blocks": blocks}


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 with the shared secret over ``<timestamp>.<body>``."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """What a receiver does: recompute the signature and compare in constant time."""
    return hmac.compare_digest(sign(secret, timestamp, body), header)


# --- sending ------------------------------------------------------------------------------------------------------

_sending = threading.local()


class _QuietWhileSending(logging.Filter):
    """httpx logs every request with its full URL at INFO; a webhook's URL may hold a token, so those lines are
    dropped while this module sends (other requests of the process log as before)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_sending, "active", False)


_quiet = _QuietWhileSending()
for _name in ("httpx", "httpcore"):
    if _quiet not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_quiet)


def _scrub(text: str, url: str) -> str:
    """``text`` without the URL or any of its identifying parts (path, query, user info), cut short."""
    parts = urlsplit(url)
    for piece in sorted({url, url.rstrip("/"), parts.path, parts.query, parts.netloc,
                         f"{parts.netloc}{parts.path}"}, key=len, reverse=True):
        if piece and len(piece) >= 4 and piece != "/":
            text = text.replace(piece, "…")
    return text[:MAX_ERROR_CHARS]


@dataclass(frozen=True)
class SendResult:
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: float


def send(client: httpx.Client, url: str, body: bytes, headers: dict[str, str], *, timeout_s: float) -> SendResult:
    """POST ``body`` to ``url`` with ``client``; 2xx is success. Errors name what happened, never the URL."""
    started = time.perf_counter()
    _sending.active = True
    try:
        response = client.post(url, content=body, headers=headers)
        ms = (time.perf_counter() - started) * 1000
        if 200 <= response.status_code < 300:
            return SendResult(True, response.status_code, None, ms)
        snippet = " ".join(response.text[:200].split())
        return SendResult(False, response.status_code,
                          _scrub(f"HTTP {response.status_code}" + (f": {snippet}" if snippet else ""), url), ms)
    except httpx.TimeoutException:
        return SendResult(False, None, f"timed out after {timeout_s:g} s", (time.perf_counter() - started) * 1000)
    except (httpx.HTTPError, OSError, ValueError) as exc:
        return SendResult(False, None, _scrub(f"{type(exc).__name__}: {exc}", url),
                          (time.perf_counter() - started) * 1000)
    finally:
        _sending.active = False


def max_attempts(ctx: AppContext) -> int:
    return len(ctx.settings.alert_retry_minutes) + 1


def _retry_at(ctx: AppContext, attempts: int, now: datetime) -> datetime | None:
    schedule = ctx.settings.alert_retry_minutes
    if attempts > len(schedule):
        return None
    return now + timedelta(minutes=schedule[attempts - 1])


def dispatch(ctx: AppContext, *, holder: str | None = None, limit: int = 50,
             alert_id: int | None = None) -> dict[str, int]:
    """Attempt every delivery due now (of ``alert_id`` only, when given), each claimed first in the database;
    returns counts by outcome."""
    holder = holder or f"dispatch:{secrets.token_hex(6)}"
    timeout_s = ctx.settings.alert_timeout_seconds
    counts: dict[str, int] = {}
    with ctx.db.session(readonly=True) as s:
        due = alerts_q.due_deliveries(s, now=ctx.now(), limit=limit, alert_id=alert_id)
    if not due:
        return counts
    # One client per round (building one costs more than a loopback request: its TLS context).
    with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
        for delivery_id in due:
            outcome = _attempt(ctx, client, delivery_id, holder, timeout_s)
            if outcome is not None:
                counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def _attempt(ctx: AppContext, client: httpx.Client, delivery_id: int, holder: str, timeout_s: float) -> str | None:
    """Claim, send and record one attempt of ``delivery_id``; None when another sender holds it."""
    with ctx.db.session() as s:
        if not alerts_q.claim_delivery(s, delivery_id, holder=holder, now=ctx.now(), lease_s=timeout_s + 60):
            return None  # another replica sends it
    with ctx.db.session(readonly=True) as s:
        delivery = s.get(AlertDelivery, delivery_id)
        assert delivery is not None
        alert = s.get(Alert, delivery.alert_id)
        hook = alerts_q.get_webhook(s, delivery.webhook_id) if delivery.webhook_id is not None else None
        problem: str | None = None
        if hook is None or not hook.enabled or alert is None:
            request = None
        else:
            try:
                url, secret = secret_box.open_hook(ctx, hook)
            except secret_box.SecretsKeyError as exc:  # retried on the schedule: restoring the key file fixes it
                problem, url, secret = str(exc)[:MAX_ERROR_CHARS], "", None
            payload = (slack_payload(alert, delivery.event) if hook.kind == "slack"
                       else alert_payload(alert, delivery_id, delivery.event))
            body = json.dumps(payload, default=str, separators=(",", ":")).encode("utf-8")
            headers = {"Content-Type": "application/json", "User-Agent": "llm-console-alerts",
                       DELIVERY_HEADER: str(delivery_id)}
            if secret:
                stamp = str(int(time.time()))
                headers[TIMESTAMP_HEADER] = stamp
                headers[SIGNATURE_HEADER] = sign(secret, stamp, body)
            request = None if problem else (url, body, headers)
    if problem is not None:
        return _record(ctx, delivery_id, holder, SendResult(False, None, problem, 0.0), final_if_failed=False)
    if request is None:
        result = SendResult(False, None, "webhook disabled or deleted before sending", 0.0)
    else:
        result = send(client, *request, timeout_s=timeout_s)
    return _record(ctx, delivery_id, holder, result, final_if_failed=request is None)


def _record(ctx: AppContext, delivery_id: int, holder: str, result: SendResult, *, final_if_failed: bool) -> str:
    now = ctx.now()
    with ctx.db.session() as s:
        delivery = s.get(AlertDelivery, delivery_id)
        assert delivery is not None
        retry_at = None if result.ok or final_if_failed else _retry_at(ctx, delivery.attempts, now)
        status = alerts_q.record_attempt(s, delivery, holder=holder, now=now, ok=result.ok,
                                         status_code=result.status_code, error=result.error,
                                         duration_ms=result.duration_ms, retry_at=retry_at)
        if status == "failed":
            # Decided: a delivery that gave up is audited (someone was not told); every attempt is in the log.
            alert = s.get(Alert, delivery.alert_id)
            audit_q.append_event(s, actor=alerts_q.ALERTS_ACTOR, action="alert.delivery_failed",
                                 object_type="alert_delivery", object_id=delivery.id,
                                 details={"webhook": delivery.webhook_name, "alert_id": delivery.alert_id,
                                          "kind": alert.kind if alert else None, "event": delivery.event,
                                          "attempts": delivery.attempts,
                                          "last_status_code": result.status_code, "last_error": result.error})
            logger.warning("alert delivery %s to webhook %s failed after %s attempts: %s", delivery.id,
                           delivery.webhook_name, delivery.attempts, result.error)
        return status


# --- the evaluator ------------------------------------------------------------------------------------------------


def evaluate(ctx: AppContext) -> list[int]:
    """One round: raise (and clear) alerts from the console's state and the audit log; returns the ids raised."""
    now = ctx.now()
    raised: list[int | None] = []
    with ctx.db.session() as s:
        raised += _promotions(s, now)
        raised += _review_overdue(s, now)
        raised += _audit_events(s, now)
    with ctx.db.session() as s:
        raised += _slo_breaches(ctx, s, now)
    return [i for i in raised if i is not None]


def _promotions(s: Any, now: datetime) -> list[int | None]:
    from db import model_versions as versions_q

    pending = list(s.scalars(select(PromotionRequest).where(PromotionRequest.status == "pending")))
    keys = {str(r.id) for r in pending}
    for alert in alerts_q.firing(s, "promotion_waiting"):
        if alert.key not in keys:
            alerts_q.resolve_alert(s, "promotion_waiting", alert.key, now=now)
    out: list[int | None] = []
    for r in pending:
        version = versions_q.get_model_version(s, r.version_id)
        name = version.name if version is not None else f"version {r.version_id}"
        out.append(alerts_q.raise_alert(
            s, "promotion_waiting", str(r.id), f"Promotion request #{r.id} waits for approval: {name} to {r.alias}",
            {"request_id": r.id, "alias": r.alias, "version": name, "requested_at": r.created_at}, now=now))
    return out


def _review_overdue(s: Any, now: datetime) -> list[int | None]:
    overdue = s.execute(select(func.count(), func.min(ReviewItem.due_at))
                        .where(ReviewItem.status.in_(("open", "claimed")), ReviewItem.due_at < now)).one()
    n, oldest = int(overdue[0] or 0), overdue[1]
    if not n:
        alerts_q.resolve_alert(s, "review_overdue", "queue", now=now)
        return []
    return [alerts_q.raise_alert(s, "review_overdue", "queue",
                                 f"{n} review item{'s' if n != 1 else ''} past {'their' if n != 1 else 'its'} deadline",
                                 {"overdue": n, "oldest_due_at": oldest}, now=now)]


def _audit_events(s: Any, now: datetime) -> list[int | None]:
    cursor = alerts_q.audit_cursor(s)
    head = audit_q.head_seq(s)  # read first: events chained after it are read next round
    if cursor is None:  # the first round anywhere: start at the head, history raises nothing
        alerts_q.set_audit_cursor(s, head)
        return []
    out: list[int | None] = []
    stmt = (select(AuditEvent).where(AuditEvent.seq > cursor, AuditEvent.seq <= head,
                                     AuditEvent.action.in_(AUDIT_ACTIONS))
            .order_by(AuditEvent.seq).limit(AUDIT_BATCH))
    events = list(s.scalars(stmt))
    for event in events:
        out.append(_from_event(s, event, now))
    # A full batch: continue after its last event next round; else everything up to the head has been read.
    alerts_q.set_audit_cursor(s, int(events[-1].seq) if len(events) == AUDIT_BATCH else max(head, cursor))
    return out


def _from_event(s: Any, event: AuditEvent, now: datetime) -> int | None:
    d = event.details or {}
    if event.action == "model.rollback" and d.get("auto"):
        return alerts_q.raise_alert(
            s, "auto_rollback", f"seq:{event.seq}",
            f"Production rolled back automatically from {d.get('from')} to {d.get('to')}",
            {"from": d.get("from"), "to": d.get("to"), "reason": d.get("reason"), "by": event.actor,
             "audit_seq": event.seq}, now=now)
    if event.action == "promotion.canary_rolled_back" and event.actor_id is None:
        return alerts_q.raise_alert(
            s, "auto_rollback", f"seq:{event.seq}",
            f"Canary of {d.get('version')} (promotion request #{event.object_id}) rolled back automatically",
            {"request_id": event.object_id, "version": d.get("version"), "reason": d.get("reason"),
             "audit_seq": event.seq}, now=now)
    if event.action == "audit.verify" and d.get("ok") is False:
        return alerts_q.raise_alert(
            s, "audit_verify_failed", "chain",
            f"Audit verification failed: {d.get('kind')} at seq {d.get('first_bad_seq')}",
            {"kind": d.get("kind"), "first_bad_seq": d.get("first_bad_seq"), "checked": d.get("checked"),
             "verified_by": event.actor, "audit_seq": event.seq}, now=now)
    if event.action == "audit.verify" and d.get("ok") is True:
        alerts_q.resolve_alert(s, "audit_verify_failed", "chain", now=now)
    return None


def _slo_breaches(ctx: AppContext, s: Any, now: datetime) -> list[int | None]:
    minutes = ctx.settings.alert_slo_minutes
    targets = slo_q.list_slos(s)
    query = latency_report.MetricsQuery(since=now - timedelta(minutes=minutes), until=now + timedelta(microseconds=1),
                                        bucket_s=60, synthetic=False, now=now)
    slos = [latency_report.SloTarget(t.metric, t.stat, t.threshold) for t in targets]
    report = latency_q.bucket_report(s, query, slos) if slos else None
    missed: dict[str, Any] = {}
    for c in (report.compliance if report is not None else []):
        if c.model_version is None and c.met is False and c.measured is not None and math.isfinite(c.measured):
            missed[f"{c.metric}/{c.stat}"] = c
    for alert in alerts_q.firing(s, "slo_breach"):
        if alert.key not in missed:
            alerts_q.resolve_alert(s, "slo_breach", alert.key, now=now)
    from console.services.slo import slo_label

    out: list[int | None] = []
    for key, c in missed.items():
        unit = (f"{c.measured * 100:.2f} %" if c.stat == "rate" else f"{c.measured:,.0f} ms")
        out.append(alerts_q.raise_alert(
            s, "slo_breach", key,
            f"SLO missed over the last {minutes:g} minutes: {slo_label(c.metric, c.stat, c.threshold)} "
            f"(measured {unit})",
            {"metric": c.metric, "stat": c.stat, "threshold": c.threshold, "measured": c.measured,
             "minutes": minutes}, now=now))
    return out


def note_safety_stack(session: Any, notice: str | None) -> None:
    """Called where a console builds its safety stack: a fallback notice raises ``scanner_fallback`` (once until
    it clears); a stack without one clears it."""
    if notice:
        alerts_q.raise_alert(session, "scanner_fallback", "toxicity",
                             f"Safety scanners on their fallback: {notice}"[:500], {"notice": notice[:500]})
    else:
        alerts_q.resolve_alert(session, "scanner_fallback", "toxicity")


class AlertEvaluator(PeriodicTask):
    """Raises alerts every ``alert_check_seconds``, in one replica per interval (the ``alert-evaluator`` lease)."""

    def __init__(self, ctx: AppContext, *, interval_s: float | None = None) -> None:
        super().__init__(interval_s or ctx.settings.alert_check_seconds, name="alert-evaluator", job=EVALUATOR_JOB,
                         db=ctx.db)
        self.ctx = ctx

    def run_once(self) -> list[int]:
        return evaluate(self.ctx)


class AlertDispatcher(PeriodicTask):
    """Sends due deliveries every ``alert_check_seconds`` in every replica; each attempt is claimed in the database
    first, so replicas share the work without sending one attempt twice."""

    def __init__(self, ctx: AppContext, *, interval_s: float | None = None) -> None:
        super().__init__(interval_s or ctx.settings.alert_check_seconds, name="alert-dispatcher")
        self.ctx = ctx

    def run_once(self) -> dict[str, int]:
        return dispatch(self.ctx, holder=self.holder)

