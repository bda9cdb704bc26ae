"""Webhook URLs and signing secrets encrypted at rest (console.services.secret_box), against real SQLite files and
the real loopback receiver: the stored row and the database file hold neither; deliveries still arrive signed; rows
stored in plaintext before 0029 are encrypted at start-up, once, even by two consoles at once; a missing or wrong key
fails deliveries with a clear error (and never makes a new key); the key file is owner-only; rotating the key."""

from __future__ import annotations

import re
import stat
import threading

import pytest
import streamlit as st
from cryptography.fernet import Fernet
from sqlalchemy import select, text
from streamlit.testing.v1 import AppTest

from console import app_pages
from console.services import alerts as alerts_svc
from console.services import secret_box
from console.services.context import AppContext
from console.ui import UiSession
from db import alerts as alerts_q
from db import audit as audit_q
from db.config import DbConfig
from db.database import Database
from db.tables import AlertDelivery
from tests.alerts.conftest import URL_TOKEN
from tests.conftest import console_env

ALL = list(alerts_svc.SUBSCRIBABLE)
SECRET = "s3cret-shared-key"
WRONG_KEY = "the secrets key cannot decrypt this webhook: was LLM_CONSOLE_SECRETS_KEY_FILE changed?"


def _raw_rows(ctx) -> list[dict]:
    with ctx.db.session(readonly=True) as s:
        return [dict(r._mapping) for r in s.execute(
            text("SELECT name, url, secret, secret_format, secret_key_id FROM webhooks ORDER BY id"))]


def _db_bytes(ctx) -> bytes:
    data = ctx.settings.data_dir
    return b"".join(p.read_bytes() for p in data.glob("console.db*"))


def _send(ctx, key="k"):
    with ctx.db.session() as s:
        alerts_q.raise_alert(s, "review_overdue", key, "t", {"n": 1}, now=ctx.now())
    return alerts_svc.dispatch(ctx)


def _deliveries(ctx):
    with ctx.db.session(readonly=True) as s:
        return list(s.scalars(select(AlertDelivery).order_by(AlertDelivery.id)))


def _assert_signed(got):
    assert alerts_svc.verify_signature(SECRET, got.headers["X-Console-Timestamp"], got.body,
                                       got.headers["X-Console-Signature"])


def _insert_plaintext(ctx, name, url, secret):
    """A row as the console stored it before 0029_webhook_secrets (after 0029, the column's default says plain)."""
    with ctx.db.session() as s:
        s.execute(text("INSERT INTO webhooks (name, kind, url, url_display, alert_kinds, secret, enabled, created_at, "
                       "updated_at) VALUES (:n, 'json', :u, 'http://127.0.0.1/…', '[\"review_overdue\"]', :s, true, "
                       ":t, :t)"), {"n": name, "u": url, "s": secret, "t": ctx.now()})


def test_the_row_and_the_database_file_hold_no_url_or_secret_and_deliveries_still_verify(ctx, admin, receiver):
    alerts_svc.create_webhook(ctx, admin, name="ops", kind="json", url=receiver.url, alert_kinds=ALL, secret=SECRET)
    (row,) = _raw_rows(ctx)
    key_id = secret_box.box(ctx).key_id
    assert row["secret_format"] == "fernet" and row["secret_key_id"] == key_id
    for plain in (receiver.url, URL_TOKEN, "/services/", SECRET):
        assert plain not in row["url"] and plain not in row["secret"]
    ctx.db.dispose()  # everything in the file, nothing only in the WAL
    for plain in (URL_TOKEN, SECRET):
        assert plain.encode() not in _db_bytes(ctx)
    assert _send(ctx) == {"delivered": 1}
    (got,) = receiver.requests
    assert got.path == f"/services/{URL_TOKEN}"
    _assert_signed(got)


def test_the_key_file_is_made_owner_only_and_a_readable_one_is_refused(ctx, admin, receiver):
    path = ctx.settings.secrets_key_file
    assert not path.exists()
    alerts_svc.create_webhook(ctx, admin, name="ops", kind="json", url=receiver.url, alert_kinds=ALL)
    assert path.parent == ctx.settings.audit_key_file.parent and path.name == "secrets.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    with pytest.raises(secret_box.SecretsKeyError, match=f"{path} is readable by other users: chmod 600"):
        alerts_svc.create_webhook(ctx, admin, name="two", kind="json", url=receiver.url, alert_kinds=ALL)
    assert [h.name for h in alerts_svc.list_webhooks(ctx, admin)] == ["ops"]


def test_a_row_stored_before_0029_is_encrypted_once_at_startup_and_still_delivers(ctx, admin, receiver):
    # A database at 0028 with a webhook and a delivery to it (the table is rebuilt on SQLite: the rows stay).
    ctx.db.dispose()
    for old in ctx.settings.data_dir.glob("console.db*"):
        old.unlink()
    ctx.db.migrate("0028_audit_verifications")
    _insert_plaintext(ctx, "old", receiver.url, SECRET)
    with ctx.db.session() as s:
        s.execute(text("INSERT INTO alerts (kind, key, title, details, state, raised_at) "
                       "VALUES ('test', 'x', 't', '{}', 'event', :t)"), {"t": ctx.now()})
        s.execute(text("INSERT INTO alert_deliveries (alert_id, webhook_id, webhook_name, status, attempts, "
                       "created_at) VALUES (1, 1, 'old', 'delivered', 1, :t)"), {"t": ctx.now()})
    ctx.db.migrate()
    assert [(r["name"], r["url"], r["secret"], r["secret_format"]) for r in _raw_rows(ctx)] == [
        ("old", receiver.url, SECRET, "plain")]
    assert secret_box.encrypt_stored_secrets(ctx) == 1
    assert secret_box.encrypt_stored_secrets(ctx) == 0  # the second start changes nothing
    (row,) = _raw_rows(ctx)
    assert row["secret_format"] == "fernet" and URL_TOKEN not in row["url"] and SECRET not in row["secret"]
    with ctx.db.session(readonly=True) as s:
        assert secret_box.open_hook(ctx, alerts_q.webhook_by_name(s, "old")) == (receiver.url, SECRET)
        (event,) = audit_q.events_about(s, ["webhook.secrets_encrypted"])
    assert event.details == {"webhooks": ["old"], "key_id": row["secret_key_id"]}
    assert [d.webhook_id for d in _deliveries(ctx)] == [1]
    assert _send(ctx) == {"delivered": 1}
    _assert_signed(receiver.requests[0])


def test_two_consoles_starting_at_once_encrypt_each_row_once(ctx, receiver):
    for i in range(5):
        _insert_plaintext(ctx, f"old{i}", f"{receiver.url}/{i}", SECRET if i % 2 else None)
    replicas = [AppContext(ctx.settings, Database(DbConfig(url=ctx.settings.database_url)), clock=ctx.clock)
                for _ in range(2)]
    barrier, counts = threading.Barrier(2), []

    def start(replica):
        barrier.wait()
        counts.append(secret_box.encrypt_stored_secrets(replica))

    threads = [threading.Thread(target=start, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for r in replicas:
        r.db.dispose()
    assert len(counts) == 2 and sum(counts) == 5  # each row by one of them
    assert [p.name for p in ctx.settings.data_dir.glob("*secrets.key*")] == ["secrets.key"]  # one key, no leftovers
    with ctx.db.session(readonly=True) as s:
        opened = [secret_box.open_hook(ctx, h) for h in alerts_q.list_webhooks(s)]  # decrypts once: not twice
    assert opened == [(f"{receiver.url}/{i}", SECRET if i % 2 else None) for i in range(5)]


def test_a_missing_key_file_fails_deliveries_clearly_and_makes_no_new_key(ctx, admin, receiver):
    hook = alerts_svc.create_webhook(ctx, admin, name="ops", kind="json", url=receiver.url, alert_kinds=ALL,
                                     secret=SECRET)
    path = ctx.settings.secrets_key_file
    saved = path.read_bytes()
    path.unlink()
    with pytest.raises(secret_box.SecretsKeyMissing, match=f"secrets key file {path} is missing, but 1 webhook"):
        secret_box.box(ctx)
    with pytest.raises(secret_box.SecretsKeyMissing):
        alerts_svc.create_webhook(ctx, admin, name="two", kind="json", url=receiver.url, alert_kinds=ALL)
    with pytest.raises(secret_box.SecretsKeyMissing, match=WRONG_KEY):
        alerts_svc.send_test_alert(ctx, admin, hook.id)
    assert not path.exists()  # never a silent new key
    problem = alerts_svc.secrets_problem(ctx, admin)
    assert problem is not None and WRONG_KEY in problem and str(path) in problem
    assert _send(ctx) == {"pending": 1}  # retried on the schedule, nothing crashed
    (delivery,) = _deliveries(ctx)
    assert delivery.last_error.startswith(WRONG_KEY) and receiver.requests == []
    # The key restored: the retry arrives.
    path.write_bytes(saved)
    path.chmod(0o600)
    ctx.clock.advance(minutes=ctx.settings.alert_retry_minutes[0])
    assert alerts_svc.dispatch(ctx) == {"delivered": 1}
    _assert_signed(receiver.requests[0])
    assert alerts_svc.secrets_problem(ctx, admin) is None


def test_a_wrong_key_fails_deliveries_with_the_clear_error(ctx, admin, receiver):
    alerts_svc.create_webhook(ctx, admin, name="ops", kind="json", url=receiver.url, alert_kinds=ALL)
    old_id = secret_box.box(ctx).key_id
    path = ctx.settings.secrets_key_file
    path.write_text(Fernet.generate_key().decode() + "\n")
    assert _send(ctx) == {"pending": 1}
    (delivery,) = _deliveries(ctx)
    assert delivery.last_error.startswith(WRONG_KEY) and f"encrypted with key {old_id}" in delivery.last_error
    assert receiver.requests == []
    # Entering the URL again stores it with the key there is now.
    hook = alerts_svc.list_webhooks(ctx, admin)[0]
    alerts_svc.update_webhook(ctx, admin, hook.id, name="ops", kind="json", url=receiver.url, alert_kinds=ALL)
    assert alerts_svc.secrets_problem(ctx, admin) is None
    ctx.clock.advance(minutes=ctx.settings.alert_retry_minutes[0])
    assert alerts_svc.dispatch(ctx) == {"delivered": 1}


def test_rotating_the_key_re_encrypts_every_webhook_and_keeps_the_old_key(ctx, admin, receiver):
    alerts_svc.create_webhook(ctx, admin, name="ops", kind="json", url=receiver.url, alert_kinds=ALL, secret=SECRET)
    alerts_svc.create_webhook(ctx, admin, name="two", kind="slack", url=receiver.url + "/2", alert_kinds=ALL)
    before = _raw_rows(ctx)
    old = secret_box.box(ctx)
    details = secret_box.rotate_key(ctx, admin, "the yearly rotation")
    new = secret_box.box(ctx)
    assert new.key != old.key and details == {"old_key_id": old.key_id, "new_key_id": new.key_id, "webhooks": 2,
                                             "retired_file": "secrets.key.retired", "reason": "the yearly rotation"}
    retired = secret_box.retired_file(ctx.settings.secrets_key_file)
    assert retired.read_text().split() == [old.key.decode()] and stat.S_IMODE(retired.stat().st_mode) == 0o600
    after = _raw_rows(ctx)
    assert {r["secret_key_id"] for r in after} == {new.key_id}
    assert all(a["url"] != b["url"] for a, b in zip(after, before, strict=True))
    with ctx.db.session(readonly=True) as s:
        (event,) = audit_q.events_about(s, ["secrets.key_rotated"])
    assert event.actor == admin.username and event.details == details
    assert _send(ctx) == {"delivered": 2}
    _assert_signed(next(r for r in receiver.requests if r.path.endswith(URL_TOKEN)))


def test_a_rotation_that_cannot_read_a_webhook_changes_nothing(ctx, admin, receiver):
    alerts_svc.create_webhook(ctx, admin, name="ops", kind="json", url=receiver.url, alert_kinds=ALL)
    path = ctx.settings.secrets_key_file
    path.write_text(Fernet.generate_key().decode() + "\n")
    key_before, rows_before = path.read_text(), _raw_rows(ctx)
    with pytest.raises(secret_box.SecretsKeyWrong, match="was LLM_CONSOLE_SECRETS_KEY_FILE changed"):
        secret_box.rotate_key(ctx, admin)
    assert path.read_text() == key_before and _raw_rows(ctx) == rows_before
    assert not secret_box.retired_file(path).exists()


def test_only_admins_rotate_the_key(ctx, make_user):
    from console.services.errors import AccessDenied

    with pytest.raises(AccessDenied):
        secret_box.rotate_key(ctx, make_user("olga", "operator"))
    assert not ctx.settings.secrets_key_file.exists()



def test_the_page_says_when_the_key_cannot_decrypt_a_webhook(ctx, admin, receiver, tmp_path, monkeypatch):
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    alerts_svc.create_webhook(ctx, admin, name="ops", kind="json", url=receiver.url, alert_kinds=ALL)
    ctx.settings.secrets_key_file.unlink()
    at = AppTest.from_file(str(app_pages.PAGES_DIR / "alerts.py"), default_timeout=60)
    at.session_state["llm_console_session"] = UiSession(principal=admin)
    at.run()
    st.cache_resource.clear()
    assert not at.exception
    (warning,) = [re.sub(r"\\(.)", r"\1", w.value) for w in at.warning]  # as typed, without Markdown's escapes
    assert warning.startswith(f"1 webhook(s) cannot be sent to (ops): {WRONG_KEY}")
    assert str(ctx.settings.secrets_key_file) in warning
    assert not ctx.settings.secrets_key_file.exists()


def test_four_replicas_on_postgresql_encrypt_each_plaintext_row_once(ctx, pg_db, receiver):
    from tests.alerts.test_alerts_postgres import _pg_ctx, _run_together

    pg = _pg_ctx(ctx, pg_db)
    for i in range(4):
        _insert_plaintext(pg, f"old{i}", f"{receiver.url}/{i}", SECRET)
    counts = _run_together(4, lambda i: secret_box.encrypt_stored_secrets(pg))
    assert sum(counts) == 4
    with pg.db.session(readonly=True) as s:
        hooks = alerts_q.list_webhooks(s)
        assert {h.secret_format for h in hooks} == {"fernet"}
        assert [secret_box.open_hook(pg, h) for h in hooks] == [(f"{receiver.url}/{i}", SECRET) for i in range(4)]
        events = audit_q.events_about(s, ["webhook.secrets_encrypted"])
    assert sorted(n for e in events for n in e.details["webhooks"]) == [f"old{i}" for i in range(4)]
