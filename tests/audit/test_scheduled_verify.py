"""The audit chain verifies itself on a schedule (console.services.audit_watch): each round is recorded, a tampered
chain makes the next round fail (an audit event, and the audit_verify_failed alert once), two replicas run one round
per interval, the setting refuses bad values, and the Audit page shows the last verdict to those who may verify.

Real SQLite files; tampering is done the way someone with write access to the database would: triggers dropped, raw
SQL through the engine (as tests/audit/test_audit_anchor.py does).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import streamlit as st
from sqlalchemy import func, select, text
from streamlit.testing.v1 import AppTest

from console import app_pages
from console.services import alerts as alerts_svc
from console.services import audit as audit_svc
from console.services import audit_watch
from console.services.context import AppContext
from console.services.errors import AccessDenied, InvalidInput
from console.settings import Settings, SettingsError
from console.ui import UiSession
from db import audit as audit_q
from db import audit_verifications as verifications_q
from db.tables import Alert, AuditEvent, AuditVerification
from tests.conftest import console_env

SESSION_KEY = "llm_console_session"
TRIGGERS = ("audit_events_append_only_update", "audit_events_append_only_delete")


def _seed(ctx: AppContext, n: int) -> list[int]:
    with ctx.db.session() as s:
        seqs = [audit_q.append_event(s, actor="someone", action="seed.event", details={"n": i}).seq for i in range(n)]
    audit_svc.checkpoint(ctx, "test")
    return [int(q) for q in seqs if q is not None]


def _set_actor(ctx: AppContext, seq: int, actor: str) -> None:
    """Edit one event behind the triggers' back (and, with its first actor, put it back)."""
    with ctx.db.engine.begin() as conn:
        for name in TRIGGERS:
            conn.execute(text(f"DROP TRIGGER IF EXISTS {name}"))
        conn.execute(text("UPDATE audit_events SET actor = :a WHERE seq = :seq"), {"a": actor, "seq": seq})


def _verify_events(ctx: AppContext) -> list[AuditEvent]:
    with ctx.db.session(readonly=True) as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == "audit.verify").order_by(AuditEvent.id)))


def _runs(ctx: AppContext) -> list[AuditVerification]:
    with ctx.db.session(readonly=True) as s:
        return verifications_q.recent_runs(s, limit=100)


def _alerts(ctx: AppContext) -> list[tuple[str, str]]:
    with ctx.db.session(readonly=True) as s:
        return [(a.kind, a.state) for a in s.scalars(select(Alert).where(Alert.kind == "audit_verify_failed"))]


def test_a_round_records_an_intact_run_and_writes_no_audit_event(ctx):
    seqs = _seed(ctx, 4)
    run = audit_watch.AuditVerifier(ctx).run_once()
    assert run.ok and run.trigger == "schedule" and run.checked >= seqs[-1] and run.first_bad_seq is None
    assert run.started_at == ctx.now() and run.finished_at >= run.started_at and run.duration_ms > 0
    [row] = _runs(ctx)
    assert (row.id, row.trigger, row.ok, row.checked) == (run.id, "schedule", True, run.checked)
    assert _verify_events(ctx) == []  # a passing round is a table row, not an event in the chain it checks


def test_tampering_fails_the_next_round_audits_it_and_raises_the_alert_once(ctx):
    seqs = _seed(ctx, 5)
    alerts_svc.evaluate(ctx)  # the evaluator's first round starts reading the audit log at its head
    verifier = audit_watch.AuditVerifier(ctx)
    assert verifier.run_once().ok
    _set_actor(ctx, seqs[2], "mallory")

    failed = verifier.run_once()
    assert not failed.ok and failed.kind == audit_q.EDITED and failed.first_bad_seq == seqs[2] and failed.reason
    [event] = _verify_events(ctx)
    assert event.actor == "system" and event.details["ok"] is False and event.details["trigger"] == "schedule"
    assert event.details["first_bad_seq"] == seqs[2] and event.details["run_id"] == failed.id
    assert len(alerts_svc.evaluate(ctx)) == 1
    assert _alerts(ctx) == [("audit_verify_failed", "firing")]

    # Still broken an hour later, and someone verifies by hand too: each failure is on record, the alert stays one.
    assert not verifier.run_once().ok
    ana_report = audit_svc.verify(ctx, _analyst(ctx))
    assert not ana_report.ok
    assert [e.details["trigger"] for e in _verify_events(ctx)] == ["schedule", "schedule", "manual"]
    assert alerts_svc.evaluate(ctx) == []
    assert _alerts(ctx) == [("audit_verify_failed", "firing")]

    # Put back: the first passing round after the failures is an event (the recovery), which clears the alert.
    _set_actor(ctx, seqs[2], "someone")
    assert verifier.run_once().ok
    assert [e.details["ok"] for e in _verify_events(ctx)][-1] is True
    alerts_svc.evaluate(ctx)
    assert _alerts(ctx) == [("audit_verify_failed", "resolved")]
    assert verifier.run_once().ok
    assert len(_verify_events(ctx)) == 4  # and the next passing round is a row again
    assert [r.trigger for r in _runs(ctx)] == ["schedule", "schedule", "manual", "schedule", "schedule", "schedule"]


def _analyst(ctx: AppContext):
    from console.services.access import Principal
    from console.services.auth import hash_password
    from db import users as users_q

    with ctx.db.session() as s:
        user = users_q.create_user(s, "ana", hash_password("correct horse battery staple"), ("analyst",),
                                   actor="system")
        return Principal(user.id, user.username, frozenset(user.roles))


def test_two_verifiers_on_one_database_run_one_round_per_interval(ctx):
    _seed(ctx, 2)
    first, second = audit_watch.AuditVerifier(ctx), audit_watch.AuditVerifier(ctx)
    assert first.holder != second.holder
    ran = [first.run_round().ran, second.run_round().ran, first.run_round().ran]
    assert ran == [True, False, False]
    assert [r.trigger for r in _runs(ctx)] == ["schedule"]
    # Each replica asks every minute; the lease row (not the process) says when the hour is up.
    assert (first.interval_s, first.tick_s) == (3600.0, 60.0)


def test_manual_and_command_line_verifies_are_recorded_and_other_triggers_refused(ctx, make_user):
    ana = make_user("ana", "analyst")
    _seed(ctx, 2)
    assert audit_svc.verify(ctx, ana).ok
    assert audit_svc.verify(ctx, ana, trigger="cli").ok
    with pytest.raises(InvalidInput, match="manual or cli"):
        audit_svc.verify(ctx, ana, trigger="schedule")
    assert [r.trigger for r in _runs(ctx)] == ["cli", "manual"]
    assert [e.details["trigger"] for e in _verify_events(ctx)] == ["manual", "cli"]


def test_the_runs_table_keeps_only_the_newest_runs(ctx):
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    with ctx.db.session() as s:
        for i in range(5):
            verifications_q.record_run(s, trigger="schedule", started_at=t0 + timedelta(hours=i), duration_ms=12.5,
                                       ok=True, checked=i, keep=3)
    runs = _runs(ctx)
    assert [r.checked for r in runs] == [4, 3, 2]
    assert runs[0].finished_at - runs[0].started_at == timedelta(milliseconds=12.5)
    with ctx.db.session() as s, pytest.raises(ValueError, match="unknown verification trigger"):
        verifications_q.record_run(s, trigger="cron", started_at=t0, duration_ms=1, ok=True, checked=0)
    assert verifications_q.KEEP_RUNS == 1000
    with ctx.db.session(readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(AuditVerification)) == 3


@pytest.mark.parametrize("value", ["-1", "1.5", "hourly", "", "10081", " 6 0"])
def test_the_setting_refuses_bad_values_naming_the_variable(tmp_path, value):
    with pytest.raises(SettingsError, match=r"LLM_CONSOLE_AUDIT_VERIFY_MINUTES: expected whole minutes from 1 to "
                                            r"10,080 \(a week\), or 0 for off"):
        Settings.from_env(console_env(tmp_path, LLM_CONSOLE_AUDIT_VERIFY_MINUTES=value))


def test_the_setting_defaults_to_an_hour_and_zero_turns_it_off(tmp_path, ctx):
    assert Settings.from_env(console_env(tmp_path)).audit_verify_minutes == 60
    assert Settings.from_env(console_env(tmp_path, LLM_CONSOLE_AUDIT_VERIFY_MINUTES=" 15 ")).audit_verify_minutes == 15
    off = AppContext(Settings.from_env(console_env(tmp_path, LLM_CONSOLE_AUDIT_VERIFY_MINUTES="0")), ctx.db)
    assert off.settings.audit_verify_minutes == 0
    assert audit_watch.start(off) is None
    with pytest.raises(ValueError, match="off"):
        audit_watch.AuditVerifier(off)


@pytest.mark.parametrize("role", ["operator", "reviewer"])
def test_only_roles_that_may_verify_see_the_runs(ctx, make_user, role):
    ada = make_user("ada", "admin")
    audit_watch.run_scheduled(ctx)
    assert audit_watch.verification_status(ctx, ada).last_automatic is not None
    with pytest.raises(AccessDenied):
        audit_watch.verification_status(ctx, make_user("someone", role))


# --- the Audit page ---------------------------------------------------------------------------------------------


@pytest.fixture
def app_env(tmp_path, monkeypatch, migrated_db_file, ctx) -> Iterator[AppContext]:
    """Point the console's resources at this test's database (the same file `ctx` uses)."""
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    yield ctx
    st.cache_resource.clear()


def _page(principal) -> AppTest:
    at = AppTest.from_file(str(app_pages.PAGES_DIR / app_pages.PAGE_TABLE["audit"][3]), default_timeout=60)
    at.session_state[SESSION_KEY] = UiSession(principal=principal)
    return at


def test_the_audit_page_shows_the_last_automatic_verification_and_the_runs(app_env, make_user):
    ana = make_user("ana", "analyst")
    seqs = _seed(app_env, 4)
    at = _page(ana).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("No automatic verification yet. Schedule: every 60 minutes" in i.value for i in at.info)

    run = audit_watch.run_scheduled(app_env)
    at.run()
    line = [s.value for s in at.success if s.value.startswith("Last automatic verification")]
    assert line == [f"Last automatic verification: {run.finished_at:%Y-%m-%d %H:%M:%S} UTC, {run.checked:,} events, "
                    f"intact ({run.duration_ms:,.0f} ms). Schedule: every 60 minutes."]

    _set_actor(app_env, seqs[1], "mallory")
    audit_watch.run_scheduled(app_env)
    at.button(key="audit_verify").click().run()  # a verify from the page is listed with the scheduled runs
    assert not at.exception, [e.value for e in at.exception]
    red = [e.value for e in at.error if e.value.startswith("Last automatic verification")]
    assert len(red) == 1 and f"damaged (edited) at event {seqs[1]}" in red[0] and " UTC" in red[0]
    [table] = [d.value for d in at.dataframe if "verdict" in d.value.columns]
    assert list(table.columns) == ["started (UTC)", "by", "verdict", "events", "duration (ms)"]
    assert list(table["by"]) == ["Audit page", "automatic", "automatic"]
    assert list(table["verdict"])[:2] == [f"damaged (edited) at event {seqs[1]}"] * 2
    assert all(t.endswith(" UTC") for t in table["started (UTC)"])
