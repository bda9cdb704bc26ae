"""AppTest: every page for every role that may open it, on a POPULATED database.

tests/app/test_pages.py opens every page on an empty database, where a page never meets a concluded watch window, a
failed delivery or an erased exchange: the Promotions page crashed for everyone once a watch window had concluded
and no test saw it. Here one database per module is filled through the services, as the console fills it (direct
writes only for states that arise over time), with rows in every state the pages show; each test renders a copy of
it (pages write audit events and views), with no engine and no browser, and asserts the data is shown."""

from __future__ import annotations

import dataclasses
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from sqlalchemy import select, text
from streamlit.testing.v1 import AppTest

from console import app_pages
from console.services import access, promotion, serving, watch
from console.services.access import Principal
from console.services.context import AppContext
from console.ui import UiSession
from tests.conftest import FakeClock, console_env
from tests.models.promotion_support import StubHost, evaluate, events, register_version, traffic
from tests.review_fixtures import flag

SESSION_KEY = "llm_console_session"
ROLES = access.ALL_ROLES


@dataclass
class World:
    """The populated data directory and the people and ids the assertions name."""

    data_dir: Path
    people: dict[str, Principal]
    ids: dict[str, Any]


def _people(ctx: AppContext) -> dict[str, Principal]:
    from console.services.auth import canonical_email, hash_password
    from db import users as users_q
    from tests.conftest import STRONG_PASSWORD

    people = {}
    for name, roles, email in [
        ("ada", ("admin", "reviewer"), None), ("otto", ("admin",), None), ("rita", ("reviewer",), None),
        ("rob", ("reviewer",), None), ("olivia", ("operator",), None), ("oscar", ("operator",), None),
        ("ann", ("analyst",), None), ("root", ("admin", "reviewer", "operator", "analyst"), None),
        ("jane", ("analyst",), "jane@example.com"), ("gone", ("operator",), None),
    ]:
        with ctx.db.session() as s:
            user = users_q.create_user(s, name, hash_password(STRONG_PASSWORD), roles,
                                       email=canonical_email(email) or None, actor="system")
            people[name] = Principal(user.id, user.username, frozenset(user.roles))
    return people


def _models(ctx: AppContext, clock: FakeClock, p: dict[str, Principal], ids: dict[str, Any]) -> None:
    """v0 retired; v1 served first; v2 promoted, switched to, watched, found slower and rolled back by the watch;
    v3 promoted and its watch window concluded; canaries of v4 (ended) and v5 (running); v2 pending again, v4
    rejected and cancelled; staging (protected) points at v2."""
    from console.services import registry

    for name in ("v0", "v1", "v2", "v3", "v4"):
        register_version(ctx, name)
        # Timed against the version that holds production when each is asked for (v4's canary runs beside v3).
        evaluate(ctx, name, latency_comparison={"baseline_version": "v3" if name == "v4" else "v1"})
    registry.retire(ctx, p["otto"], "v0", "superseded")
    serving.serve(ctx, Principal.shell(ctx), "v1", "first version")
    registry.set_alias(ctx, p["otto"], "v2", "staging", "try it")
    registry.protect_alias(ctx, p["otto"], "staging", "staging is shared")

    ctx.settings = dataclasses.replace(ctx.settings, watch_min_samples=5, watch_minutes=30)
    request = promotion.request_promotion(ctx, p["ada"], "v2", "production", "faster")
    promotion.approve(ctx, p["rita"], request.id, "numbers hold up")
    reconciler = serving.Reconciler(ctx, StubHost("v1"))  # type: ignore[arg-type]
    assert (outcome := reconciler.run_once()) is not None and outcome.ok
    switch = events(ctx, "model.switch")[-1]
    traffic(ctx, p["oscar"], "v1", switch.ts - timedelta(minutes=20), 10, ttft=20.0)
    traffic(ctx, p["oscar"], "v2", switch.ts, 10, ttft=200.0, errors=3)
    clock.now = switch.ts + timedelta(minutes=31)
    finding = watch.Watcher(ctx).run_once()
    assert finding is not None and (finding.verdict, finding.action) == ("regression", "rolled_back")
    reconciler.run_once()

    # v3 promoted next: its window ends with healthy traffic and production stays on it.
    request = promotion.request_promotion(ctx, p["otto"], "v3", "production", "v3 fixes the slowness")
    promotion.approve(ctx, p["ada"], request.id, "let us watch it")
    assert (outcome := reconciler.run_once()) is not None and outcome.ok
    switch = events(ctx, "model.switch")[-1]
    traffic(ctx, p["oscar"], "v3", switch.ts + timedelta(seconds=1), 12, ttft=20.0)
    clock.now = switch.ts + timedelta(minutes=31)
    finding = watch.Watcher(ctx).run_once()
    assert finding is not None and finding.verdict == "passed" and finding.tests, finding
    clock.now = datetime.now(UTC)

    _canaries(ctx, clock, p, ids)
    ids["pending"] = promotion.request_promotion(ctx, p["ada"], "v2", "production", "v2, *second* try").id
    rejected = promotion.request_promotion(ctx, p["otto"], "v4", "production", "try v4")
    promotion.reject(ctx, p["ada"], rejected.id, "not convinced")
    cancelled = promotion.request_promotion(ctx, p["otto"], "v4", "production", "again")
    promotion.cancel(ctx, p["otto"], cancelled.id)


def _canaries(ctx: AppContext, clock: FakeClock, p: dict[str, Principal], ids: dict[str, Any]) -> None:
    """A canary of v4 whose time box ended undecided (rolled back), and a canary of v5 running now with one round;
    v1-lora, a LoRA adapter on v1."""
    from console.services.canary import CanaryJudge, CanaryPlan
    from db import model_versions as versions_q

    register_version(ctx, "v5")
    evaluate(ctx, "v5", latency_comparison={"baseline_version": "v3"})
    with ctx.db.session() as s:
        base = versions_q.get_model_version_by_name(s, "v1")
        assert base is not None
        versions_q.register_model_version(s, name="v1-lora", source="/adapters/v1-lora", actor="test",
                                          base_version_id=base.id, description="support tone adapter")
    plan = CanaryPlan(share=0.2, minutes=60, min_exchanges=50)
    ended = promotion.request_promotion(ctx, p["ada"], "v4", "production", "try v4 on a few", plan=plan)
    promotion.approve(ctx, p["rita"], ended.id, "go")
    traffic(ctx, p["oscar"], "v4", clock.now + timedelta(seconds=1), 8, ttft=25.0, step_s=1)
    clock.advance(minutes=62)
    judged = CanaryJudge(ctx).run_once()
    assert judged is not None and (judged.decision, judged.undecided) == ("rollback", True)
    clock.now = datetime.now(UTC) - timedelta(minutes=10)
    running = promotion.request_promotion(ctx, p["otto"], "v5", "production", "v5 as a canary", plan=plan)
    promotion.approve(ctx, p["ada"], running.id, "go")
    traffic(ctx, p["oscar"], "v5", clock.now + timedelta(seconds=1), 6, ttft=22.0, step_s=1)
    clock.now = datetime.now(UTC)
    first = CanaryJudge(ctx).run_once()
    assert first is not None and first.decision == "continue"
    ids["canary_ended"], ids["canary_running"] = ended.id, running.id


def _review(ctx: AppContext, clock: FakeClock, p: dict[str, Principal], ids: dict[str, Any]) -> None:
    """Open, claimed, decided and escalated review items (one overdue), a blind second review, a spot check drawn and
    decided; thumbs up and down (one sent to review with its reason)."""
    from console.services import feedback, review
    from console.services import spot_checks as spot
    from db.tables import Exchange, ReviewItem
    from tests.spot_checks.support import many

    now = clock.now
    ctx.settings = dataclasses.replace(ctx.settings, review_second_share=1.0)  # every decision is sampled
    items = [flag(ctx, p["olivia"], label=label, detector=detector, created_at=now - timedelta(hours=h),
                  severity=sev, raw_prompt="mail me at ann@example.com" if label == "EMAIL_ADDRESS" else None)
             for label, detector, sev, h in [("EMAIL_ADDRESS", "presidio", 2, 1), ("toxicity", "detoxify", 3, 2),
                                             ("PHONE_NUMBER", "presidio", 1, 3), ("threat", "detoxify", 3, 4),
                                             ("toxicity", "detoxify", 2, 30), ("EMAIL_ADDRESS", "presidio", 2, 5)]]
    ids["items"] = items
    review.claim(ctx, p["rita"], items[1])
    review.decide(ctx, p["rita"], items[1], "violation", category="harassment", note="rude")
    review.claim(ctx, p["rita"], items[2])
    review.decide(ctx, p["rita"], items[2], "false_positive", note="a support number")
    review.claim(ctx, p["rita"], items[3])
    review.decide(ctx, p["rita"], items[3], "escalate", note="needs an admin")
    review.claim(ctx, p["rob"], items[5])  # claimed, not decided
    if (blind := review.next_second_review(ctx, p["rob"])) is not None:
        review.decide_second_review(ctx, p["rob"], blind.sample_id, "false_positive")

    # Spot checks drawn from v0's answers only (all alike), so the random draw cannot change what the pages show.
    many(ctx, p["olivia"], 12, created_at=now - timedelta(hours=6), model_version="v0")
    spot.set_rule(ctx, p["otto"], share_percent=100, daily_cap=3, model_version="v0")
    spot.draw(ctx)
    with ctx.db.session(readonly=True) as s:
        checks = list(s.scalars(select(ReviewItem.id).where(ReviewItem.reason == "spot_check")))
        answers = list(s.scalars(select(Exchange.id).where(Exchange.user_id == p["oscar"].user_id,
                                                           Exchange.status == "ok").order_by(Exchange.id)))
    assert checks, "no spot check drawn"
    ids["spot_checks"] = checks
    review.claim(ctx, p["rob"], checks[0])
    review.decide(ctx, p["rob"], checks[0], "violation", category="pii_leak", note="missed an address")
    feedback.give_feedback(ctx, p["oscar"], answers[0], 1)
    feedback.give_feedback(ctx, p["oscar"], answers[1], -1)
    feedback.give_feedback(ctx, p["oscar"], answers[-1], -1, "it made up a refund policy")
    feedback.give_feedback(ctx, p["oscar"], answers[-2], 1)


def _exchanges(ctx: AppContext, clock: FakeClock, p: dict[str, Principal]) -> None:
    """A blocked exchange, one still pending, one interrupted (its console process is gone)."""
    from db import chat as chat_q
    from db.tables import Exchange

    traffic(ctx, p["olivia"], "v1", clock.now - timedelta(hours=2), 2, ttft=30.0, prompt_action="block")
    with ctx.db.session() as s:
        conv = chat_q.create_conversation(s, user_id=p["olivia"].user_id, actor="olivia", title="still answering")
        chat_q.begin_exchange(s, chat_q.PendingRecord(conversation_id=conv.id, user_id=p["olivia"].user_id,
                                                      actor="olivia", model_version="v1", prompt="are you there?"))
        gone = chat_q.begin_exchange(s, chat_q.PendingRecord(
            conversation_id=conv.id, user_id=p["olivia"].user_id, actor="olivia", model_version="v1",
            prompt="and now?", created_at=clock.now - timedelta(minutes=5)))
        s.get(Exchange, gone.id).owner = None  # type: ignore[union-attr]  # its console process stopped
    with ctx.db.session() as s:
        assert chat_q.mark_interrupted(s, clock.now - timedelta(minutes=1)) == [gone.id]


def _quotas(ctx: AppContext, p: dict[str, Principal]) -> None:
    from console.services import quotas
    from console.services.quotas import QuotaExceeded

    quotas.set_role_limit(ctx, p["otto"], "operator", "requests_per_minute", 30)
    quotas.set_role_limit(ctx, p["otto"], "analyst", "tokens_per_day", "50,000")
    quotas.set_user_override(ctx, p["otto"], p["olivia"].user_id, "requests_per_minute", 1)
    quotas.set_user_override(ctx, p["otto"], p["oscar"].user_id, "tokens_per_day", "no limit")
    quotas.enforce(ctx, p["olivia"])
    with pytest.raises(QuotaExceeded):
        quotas.enforce(ctx, p["olivia"])


def _policy(ctx: AppContext, p: dict[str, Principal]) -> None:
    """A pending change with its backtest, an approved one (which leaves an older pending one stale), a rejected
    one."""
    from console.services import policy_changes as changes
    from tests.policy.support import LOWER, install_stack, seed

    install_stack(ctx)
    now = ctx.now()
    seed(ctx.db, p["olivia"].user_id, [(now - timedelta(days=d), [("prompt", "detoxify", "toxicity", 0.4)])
                                       for d in (1, 2, 3)])
    changes.propose(ctx, p["ada"], LOWER, "catch milder insults", 7)  # goes stale when #3 is approved
    rejected = changes.propose(ctx, p["ada"], LOWER.replace("0.3", "0.2"), "even milder", 7)
    changes.reject(ctx, p["otto"], rejected.id, "too many items")
    approved = changes.propose(ctx, p["otto"], LOWER.replace("0.3", "0.35"), "a little milder", 7)
    changes.approve(ctx, p["ada"], approved.id, "fine")
    changes.propose(ctx, p["otto"], LOWER.replace("0.3", "0.45").replace('"lower"', '"newest"'), "newest", 7)


def _compliance(ctx: AppContext, p: dict[str, Principal], ids: dict[str, Any]) -> None:
    """Raw exports pending, approved, used and rejected; an erasure carried out (erased text) and one pending; audit
    verifications failed (an edited event) and passed again."""
    from console.services import audit as audit_svc
    from console.services import audit_watch, retention
    from console.services import export_approvals as approvals
    from console.services.exports import ExportSpec
    from db import audit as audit_q

    approvals.request_raw_export(ctx, p["ada"], ExportSpec("exchanges", "csv"), "legal hold 17")
    used = approvals.request_raw_export(ctx, p["ada"], ExportSpec("exchanges", "jsonl"), "regulator asked")
    approvals.decide_raw_export(ctx, p["otto"], used.id, True, "ok")
    approvals.run_approved_raw_export(ctx, p["ada"], used.id, ctx.settings.data_dir / "raw.jsonl")
    approved = approvals.request_raw_export(ctx, p["otto"], ExportSpec("exchanges", "csv"), "quarterly check")
    approvals.decide_raw_export(ctx, p["ada"], approved.id, True, "fine")
    refused = approvals.request_raw_export(ctx, p["otto"], ExportSpec("exchanges", "csv"), "just curious, really")
    approvals.decide_raw_export(ctx, p["ada"], refused.id, False, "no reason given")

    ids["erased_item"] = flag(ctx, p["gone"], prompt="my address is <ADDRESS>", raw_prompt="my address is 1 Main St")
    erased = retention.request_erasure(ctx, p["otto"], p["gone"].user_id, "erasure request #1234",
                                        "GDPR Art. 17, no hold")
    retention.decide_erasure(ctx, p["ada"], erased.id, True)
    retention.request_erasure(ctx, p["ada"], p["oscar"].user_id, "erasure request #1240", None)

    verifier = audit_watch.AuditVerifier(ctx)
    assert verifier.run_once().ok
    with ctx.db.session() as s:
        seq = audit_q.append_event(s, actor="someone", action="seed.event", details={"n": 1}).seq
    audit_svc.checkpoint(ctx, "test")
    with ctx.db.engine.begin() as conn:  # edited behind the triggers' back, as someone with file access would
        triggers = list(conn.execute(text(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_events'")))
        for name, _ in triggers:
            conn.execute(text(f"DROP TRIGGER {name}"))
        conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = :seq"), {"seq": seq})
    assert not verifier.run_once().ok
    with ctx.db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'someone' WHERE seq = :seq"), {"seq": seq})
        for _, sql in triggers:
            conn.execute(text(sql))
    assert verifier.run_once().ok


def _more(ctx: AppContext, p: dict[str, Principal], ids: dict[str, Any]) -> None:
    """Targets (one met, one missed), an evaluation running and one failed, a version on vLLM servers someone else
    runs, an open session, a locked account and a corrected review decision."""
    from console.services import auth, review, sessions, slo
    from console.services.errors import ConsoleError
    from db import model_versions as versions_q
    from db.tables import Evaluation

    slo.set_slo(ctx, p["otto"], "ttft_ms", "p95", 25)
    slo.set_slo(ctx, p["otto"], "error_rate", "rate", 0.01)
    with ctx.db.session() as s:
        for name, status, error in (("v4", "running", None), ("v2", "failed", "the engine ran out of memory")):
            version = versions_q.get_model_version_by_name(s, name)
            assert version is not None
            s.add(Evaluation(version_id=version.id, suite="standard", suite_sha256="1" * 64, n_prompts=140,
                             status=status, progress=0.4, error=error, started_at=ctx.now(),
                             finished_at=ctx.now() if status == "failed" else None))
        versions_q.register_model_version(
            s, name="remote-v1", source="support-model", actor="test", backend="server",
            server_urls=["http://vllm-1:8000", "http://vllm-2:8000"], server_model="support-model",
            server_info={"max_model_len": 4096}, max_model_len=4096)
    sessions.start(ctx, p["olivia"], client="10.0.0.7", user_agent="Firefox")

    for _ in range(ctx.settings.lockout_threshold):  # rob mistypes his password until the account locks
        with pytest.raises(ConsoleError):
            auth.login(ctx, "rob", "not his password at all", client="10.0.0.8")
    review.correct(ctx, p["ada"], ids["items"][2], "violation", category="pii_leak", note="a personal number after all")


def _alerts(ctx: AppContext, p: dict[str, Principal], receiver: Any) -> None:
    """Webhooks (one that works, one whose address refuses); alerts firing, resolved and one-off; deliveries
    delivered, failed and pending, and a resolved notice delivered."""
    from console.services import alerts as alerts_svc

    every = list(alerts_svc.SUBSCRIBABLE)
    alerts_svc.create_webhook(ctx, p["otto"], name="ops", kind="json", url=receiver.url, alert_kinds=every,
                              secret="s3cret-shared-key")
    with socket.socket() as closed:  # a loopback port nothing listens on: every attempt is refused
        closed.bind(("127.0.0.1", 0))
        refusing = f"http://127.0.0.1:{closed.getsockname()[1]}/hooks/x"
    alerts_svc.create_webhook(ctx, p["otto"], name="chat room", kind="slack", url=refusing,
                              alert_kinds=["slo_breach"])
    alerts_svc.evaluate(ctx)  # the evaluator's first round starts reading the audit log at its head


def _alerts_after(ctx: AppContext, clock: FakeClock) -> None:
    """The conditions met so far raised; an SLO alert that fired and cleared hours ago (the broken webhook used up
    its attempts on both notices); one raised now, its deliveries still waiting."""
    from console.services import alerts as alerts_svc
    from db import alerts as alerts_q

    alerts_svc.evaluate(ctx)
    alerts_svc.dispatch(ctx)

    def settle() -> None:  # every retry of a failing delivery comes due (1, 5 and 30 minutes apart)
        for _ in range(1 + len(ctx.settings.alert_retry_minutes)):
            alerts_svc.dispatch(ctx)
            clock.advance(minutes=31)

    clock.now = datetime.now(UTC) - timedelta(hours=5)
    with ctx.db.session() as s:
        alerts_q.raise_alert(s, "slo_breach", "ttft_ms/p95", "SLO missed: p95 time to first token <= 500 ms",
                             {"measured": 812.5}, now=ctx.now())
    settle()
    with ctx.db.session() as s:
        alerts_q.resolve_alert(s, "slo_breach", "ttft_ms/p95", now=ctx.now())
    settle()
    clock.now = datetime.now(UTC)
    with ctx.db.session() as s:
        alerts_q.raise_alert(s, "slo_breach", "e2e_ms/p95", "SLO missed: p95 request latency <= 2000 ms",
                             {"measured": 2500.0}, now=ctx.now())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, migrated_db_file: Path) -> Iterator[World]:
    from console.settings import Settings
    from db.config import DbConfig
    from db.database import Database
    from tests.alerts.conftest import Receiver, _handler

    data_dir = tmp_path_factory.mktemp("populated")
    shutil.copy(migrated_db_file, data_dir / "console.db")
    settings = Settings.from_env(console_env(data_dir))
    db = Database(DbConfig(url=settings.database_url))
    clock = FakeClock()
    clock.now = datetime.now(UTC)
    ctx = AppContext(settings, db, clock=clock)

    import threading
    from http.server import ThreadingHTTPServer

    rec = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rec))
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ids: dict[str, Any] = {}
    try:
        people = _people(ctx)
        _alerts(ctx, people, rec)
        _models(ctx, clock, people, ids)
        _review(ctx, clock, people, ids)
        _exchanges(ctx, clock, people)
        _quotas(ctx, people)
        _policy(ctx, people)
        _compliance(ctx, people, ids)
        _alerts_after(ctx, clock)
        _more(ctx, people, ids)  # after the alert rounds: its targets raise no SLO alert here
        from console.services import users as users_svc

        users_svc.set_disabled(ctx, people["otto"], people["gone"].user_id, True)
    finally:
        server.shutdown()
        server.server_close()
        db.dispose()
    yield World(data_dir, people, ids)


@pytest.fixture
def page_env(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A copy of the populated data directory for this test (pages write audit events and views)."""
    data_dir = tmp_path / "data"
    shutil.copytree(world.data_dir, data_dir)
    for key, value in console_env(data_dir).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    # The safety stack at our seam, as tests/policy does: the stored policies, no scanners (they are slow to load).
    from console import resources
    from console.services import moderation
    from engine.safety.policy import Policy
    from engine.safety.runner import ScannerRunner
    from tests.policy.support import BASE

    stack = moderation.SafetyStack(ScannerRunner([]), Policy.from_toml(BASE), 1)
    monkeypatch.setattr(resources, "safety_stack", lambda: stack)
    yield dataclasses.replace(world, data_dir=data_dir)
    st.cache_resource.clear()


def _open(page: str, principal: Principal) -> AppTest:
    at = AppTest.from_file(str(app_pages.PAGES_DIR / app_pages.PAGE_TABLE[page][3]), default_timeout=60)
    at.session_state[SESSION_KEY] = UiSession(principal=principal)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(at: AppTest) -> str:
    """Every text the page shows (markdown, captions, notices, tables, widgets' labels and options), one string."""
    parts: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success",
                 "text", "metric", "expander", "tabs"):
        for el in at.get(kind):
            for attr in ("value", "label"):
                v = getattr(el, attr, None)
                if isinstance(v, str):
                    parts.append(v)
    for df in at.dataframe:
        # The audit log's Details column is each event's stored JSON, shown as recorded (nulls included).
        parts.append(df.value.drop(columns=["Details"], errors="ignore").to_csv(index=False))
    for table in at.table:
        parts.append(table.value.to_csv(index=False))
    for box in list(at.selectbox) + list(at.multiselect) + list(at.radio):
        parts.extend(str(o) for o in box.options)
    return "\n".join(parts)


CASES = [(page, role) for page in app_pages.PAGE_TABLE for role in ROLES
         if access.allowed({role}, access.PAGES[page])] + [(page, "all") for page in app_pages.PAGE_TABLE]
PERSON = {"operator": "olivia", "reviewer": "rita", "admin": "otto", "analyst": "ann", "all": "root"}


@pytest.mark.parametrize("page,role", CASES, ids=[f"{p}-{r}" for p, r in CASES])
def test_every_page_renders_populated_for_every_role_that_may_open_it(page_env, page, role):
    at = _open(page, page_env.people[PERSON[role]])
    assert at.title and at.title[0].value
    assert not [e.value for e in at.error if "do not allow" in e.value]
    words = _texts(at).split()
    assert not [w for w in words if w.strip(".,;:()") in ("None", "nan", "NaN", "NaT", "null")]
    assert _missing_cells(at) == []


def _table(at: AppTest, *columns: str) -> list[dict[str, Any]]:
    """The rows of the one table with these columns (AppTest does not give a table's key)."""
    frames = [d.value for d in at.dataframe if set(columns) <= set(map(str, d.value.columns))]
    assert len(frames) == 1, (columns, [list(d.value.columns) for d in at.dataframe])
    return list(frames[0].to_dict("records"))


def _missing_cells(at: AppTest) -> list[tuple[str, str]]:
    """(table, column) of every empty cell: the browser draws one as "None"."""
    return [(str(list(d.value.columns)[:2]), str(col)) for d in at.dataframe for col in d.value.columns
            if d.value[col].isna().any()]


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_promotions_shows_the_concluded_watch_the_rollback_both_canaries_and_every_decision(page_env):
    ids = page_env.ids
    at = _open("promotions", page_env.people["rita"])
    # The window of v3 concluded: each comparison in words (this caption crashed the page once a window had ended).
    (watched,) = [c.value for c in at.caption if c.value.startswith("Watch of v3 against v1 ")]
    assert watched.startswith("Watch of v3 against v1 (passed): ") and "p95 time to first token" in watched
    assert "None" not in watched
    assert any("regression of v2 against v1" in e.value and "rolled back by itself" in e.value for e in at.error)
    assert any(s.value == f"Canary #{ids['canary_running']}: v5 beside v3" for s in at.subheader)
    assert any(e.label.startswith(f"Canary \\#{ids['canary_ended']} of v4\\: rolled back") for e in at.expander), \
        [e.label for e in at.expander]
    assert any(f"**#{ids['pending']}** · move **production** to **v2** (from v3 when asked)" in m.value for m in at.markdown)
    decided = {(r["version"], r["status"]) for r in _table(at, "decided by", "canary")}
    assert {("v2", "approved"), ("v4", "rejected"), ("v4", "cancelled"), ("v4", "rolled_back")} <= decided
    # v2 was timed against v1, not v3: its latency gate has no number and fails, saying so (not "None").
    gates = _table(at, "gate", "must be")
    (ttft,) = [g for g in gates if g["gate"].startswith("p95 TTFT")]
    assert (ttft["value"], ttft["limit"], ttft["passed"]) == ("–", "–", False) and ttft["note"]
    assert _missing_cells(at) == []


def test_alerts_shows_webhooks_alerts_in_every_state_and_every_kind_of_delivery(page_env):
    from tests.alerts.conftest import URL_TOKEN

    at = _open("alerts", page_env.people["otto"])
    hooks = {h["name"]: h for h in _table(at, "alert kinds", "signed")}
    assert hooks["chat room"]["alert kinds"] == "SLO breached" and hooks["ops"]["signed"] == "yes"
    assert URL_TOKEN not in _texts(at) and "/services/" not in _texts(at)
    states = {(a["kind"], a["state"]) for a in _table(at, "raised (UTC)", "state")}
    assert {("SLO breached", "firing"), ("SLO breached", "resolved"), ("automatic rollback", "event"),
            ("review item past its deadline", "firing"), ("promotion waiting for approval", "firing"),
            ("audit verification failed", "resolved")} <= states
    log = _table(at, "delivery", "notice")
    assert {(d["webhook"], d["notice"], d["status"]) for d in log} >= {
        ("ops", "resolved", "delivered"), ("chat room", "resolved", "failed"), ("chat room", "firing", "pending")}
    (failed, *_) = [d for d in log if d["status"] == "failed"]
    assert failed["attempts"] == "4 of 4" and "Connection refused" in failed["last error"]
    assert _missing_cells(at) == []


def test_the_review_queue_counts_every_state_and_marks_the_overdue_item(page_env):
    at = _open("review", page_env.people["rita"])
    metrics = _metrics(at)
    assert (metrics["Claimed"], metrics["Escalated"], metrics["Overdue"]) == ("1", "1", "1")
    assert int(metrics["Open"]) >= 4 and metrics["Oldest open"] == "1 d 6 h"
    queue = _table(at, "assignee", "due")
    assert [r for r in queue if str(r["due"]).startswith("🔴 overdue")]
    assert {r["reason"] for r in queue} >= {"check", "feedback"} and "rob" in {r["assignee"] for r in queue}
    precision = _table(at, "precision", "confirmed")
    # ada's correction (PHONE_NUMBER: no violation -> violation) is the decision in force.
    assert {(r["label"], r["confirmed"], r["decided"]) for r in precision} >= {("toxicity", 2, 2),
                                                                               ("PHONE_NUMBER", 1, 1)}


def test_escalations_list_the_escalated_item_with_the_reviewers_note(page_env):
    at = _open("escalations", page_env.people["otto"])
    assert any("rita" in m.value and "Escalate to admins" in m.value and "needs an admin" in m.value
               for m in at.markdown)
    assert [r["labels"] for r in _table(at, "item", "labels")] == ["threat"]


def test_review_quality_shows_the_decided_spot_check_and_the_rule(page_env):
    at = _open("review_quality", page_env.people["rita"])
    families = {r["label family"]: r for r in next(d.value.to_dict("records") for d in at.dataframe
                                                   if "label family" in d.value.columns)}
    pii = families["Personal data (PII)"]
    assert (pii["spot checks decided"], pii["judged a violation"]) == (1, 1)
    assert pii["miss rate"] == "not enough spot checks yet (1 of 30)"
    rules = next(d.value.to_dict("records") for d in at.dataframe if "scope" in d.value.columns)
    assert rules == [{"scope": "model version v0", "share": "100.0 %", "daily cap (items)": 3}]


def test_models_shows_every_stage_the_adapter_and_the_alias_history(page_env):
    at = _open("models", page_env.people["otto"])
    versions = {v["name"]: v for v in _table(at, "stage", "LoRA on")}
    assert versions["v0"]["stage"] == "retired" and versions["v3"]["stage"] == "production"
    assert versions["v2"]["aliases"] == "staging (protected: needs a promotion)"
    assert versions["v1-lora"]["LoRA on"] == "v1"
    remote = versions["remote-v1"]
    assert (remote["backend"], remote["servers"], remote["max context (tokens)"]) == (
        "vLLM server", "http://vllm-1:8000, http://vllm-2:8000", "4,096")
    history = _table(at, "alias", "from", "to")
    assert any(m["by"] == "watch" and (m["from"], m["to"]) == ("v2", "v1") for m in history)
    assert _missing_cells(at) == []


def test_users_shows_disabled_and_sso_accounts_quotas_and_the_erasure_waiting(page_env):
    at = _open("users", page_env.people["otto"])
    users = {u["username"]: u for u in next(d.value.to_dict("records") for d in at.dataframe
                                            if "last sign-in" in d.value.columns)}
    assert users["gone"]["status"] == "disabled" and users["jane"]["email"] == "jane@example.com"
    assert users["rob"]["locked until"].endswith("UTC") and users["ada"]["locked until"] == "not locked"
    quotas = {q["user"]: q for q in next(d.value.to_dict("records") for d in at.dataframe
                                         if "requests: from" in d.value.columns)}
    assert (quotas["olivia"]["requests per minute (limit)"], quotas["olivia"]["requests: from"]) == ("1", "override")
    assert any("erase the content of oscar, asked by ada" in m.value for m in at.markdown)
    assert _missing_cells(at) == []


def test_the_audit_page_shows_the_failed_and_the_passed_verifications_and_raw_exports_to_decide(page_env):
    at = _open("audit", page_env.people["otto"])
    raw = [m.value for m in at.markdown if " · CSV · asked by " in m.value]
    # ada's pending request, for otto to decide; otto's own approved one, to run; the used and refused ones are gone.
    assert [r.split(" · ")[:2] for r in raw] == [["\\#3", "approved"], ["\\#1", "pending"]]
    at = _open("audit", page_env.people["ann"])
    assert any(s.value.startswith("Last automatic verification") and "intact" in s.value for s in at.success)
    runs = _table(at, "verdict", "by")
    assert [r["verdict"] for r in runs].count("intact") == 2 and any("edited" in r["verdict"] for r in runs)


def test_the_policy_page_shows_pending_stale_and_decided_changes_with_their_backtests(page_env):
    at = _open("policy", page_env.people["rita"])
    assert any(t.label == "Pending (2)" for t in at.tabs)
    assert any(w.value.startswith("Stale: revision 1 is no longer in force") for w in at.warning)
    assert _metrics(at)["Exchanges replayed"] != "0"
    history = next(d.value.to_dict("records") for d in at.dataframe if "stored revision" in d.value.columns)
    assert {(h["status"], h["stored revision"]) for h in history} == {("approved", "2"), ("rejected", "-")}
    assert _missing_cells(at) == []


def test_the_latency_page_shows_each_versions_traffic_and_feedback(page_env):
    at = _open("dashboard", page_env.people["ann"])
    shown = _texts(at)
    assert "v1,25" in shown or "v1," in shown
    feedback = _table(at, "Thumbs up (% of rated)")
    rated = {f["Model version"]: f for f in feedback}
    assert rated["v1"]["Rated"] == 2 and rated["v1"]["Thumbs down (% of rated)"] == "50.0"
    assert "–" in {f["Thumbs up (% of rated)"] for f in feedback}
    # v1's exchanges all lie in the past (v2's and later versions' follow their switches, seconds into the future,
    # and may fall after the window's last bucket): 10 before the first switch, 2 blocked, 1 interrupted (the one
    # still pending counts once it ends).
    summary = {r["model version"]: r for r in _table(at, "requests/min (avg)", "TTFT p95")}
    assert summary["v1"]["requests"] == 13 and summary["v1"]["blocked"] == "15.38 %"  # a count, not 13.0
    met = {(r["target"], r["model version"]): r["met"] for r in _table(at, "measured over the window", "met")}
    assert met[("error rate <= 1 %", "v1")] == "yes" and met[("p95 time to first token <= 25 ms", "v1")] == "NO"
    assert _missing_cells(at) == []


def test_the_chat_shows_pending_interrupted_and_blocked_exchanges(page_env):
    at = _open("chat", page_env.people["olivia"])
    assert [w.value for w in at.warning] == ["No model is being served; ask an admin."]
    (waiting,) = [b.key for b in at.sidebar.button if b.label.startswith("still answering")]
    at.button(key=waiting).click()
    at.run()
    assert not at.exception
    captions = [c.value for c in at.caption]
    assert "v1 · pending" in captions and "v1 · interrupted" in captions
    assert "(no answer: the console stopped while the model was answering)" in _texts(at)


def test_evaluations_open_a_stored_report_and_compare_two(page_env):
    at = _open("evaluations", page_env.people["rita"])
    at.selectbox(key="eval_reports_version").select("v3")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (row,) = _table(at, "evaluation", "suite")
    at.selectbox(key="eval_report_id").select(row["evaluation"])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("v3" in h.value for h in at.subheader), [h.value for h in at.subheader]
    assert "None" not in _texts(at).split() and _missing_cells(at) == []
    at.selectbox(key="eval_reports_version").select("v2")  # one done, one failed
    at.run()
    assert {r["status"] for r in _table(at, "evaluation", "suite")} == {"done", "failed"}
    assert _missing_cells(at) == []
    first, second = at.selectbox(key="eval_compare_a").options[:2]
    at.selectbox(key="eval_compare_a").select(first)
    at.selectbox(key="eval_compare_b").select(second)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.dataframe) >= 2  # the comparison, and the table of reports
    assert _missing_cells(at) == []


def test_opening_a_version_history_a_user_and_an_erased_item(page_env):
    ids = page_env.ids
    at = _open("promotions", page_env.people["otto"])
    at.selectbox(key="history_version").select("v2")
    at.run()
    assert not at.exception
    timeline = _table(at, "what", "details")
    assert len(timeline) >= 3 and _missing_cells(at) == []

    at = _open("users", page_env.people["otto"])
    at.selectbox(key="edit_user").select("oscar")
    at.run()
    assert not at.exception
    assert any(c.value == "oscar has no open session." for c in at.caption)
    assert any(m.value.startswith("Erases the prompts and answers") for m in at.markdown)
    assert any(c.value.startswith("Approving erases now\\: 0 exchanges") for c in at.caption)

    # The erased person's flagged exchange, claimed from the queue: the item says its text was erased.
    at = _open("review", page_env.people["rita"])
    at.selectbox(key="chosen_item").select(ids["erased_item"])
    at.button(key="claim_chosen").click()
    at.run()
    assert not at.exception
    from console.widgets import ERASED_TEXT

    assert any(m.value == f"**Item {ids['erased_item']}** :violet-badge[severity 2] :gray-badge[check]"
               for m in at.markdown)
    assert ERASED_TEXT in [c.value for c in at.caption]



def test_an_emergency_rollback_waiting_for_acknowledgement_shows_on_every_page_it_touches(page_env):
    """One admin rolls production back in an emergency (v3 to v1, with v5's canary running beside v3): every page
    still renders for an admin, the models and promotions pages say who must acknowledge it, and only another admin
    gets the form."""
    from console.settings import Settings
    from db.config import DbConfig
    from db.database import Database

    settings = Settings.from_env(console_env(page_env.data_dir))
    db = Database(DbConfig(url=settings.database_url))
    try:
        rolled = promotion.rollback(AppContext(settings, db), page_env.people["otto"], "customers complain")
    finally:
        db.dispose()
    assert (rolled.from_version, rolled.to_version) == ("v3", "v1")
    for page in app_pages.PAGE_TABLE:
        at = _open(page, page_env.people["root"])
        assert _missing_cells(at) == [], page
    at = _open("promotions", page_env.people["ada"])
    [move] = [w.value for w in at.warning if "customers complain" in w.value and "acknowledges it" in w.value]
    assert "You made it" not in move
    assert [b.label for b in at.button if b.label.startswith("Acknowledge emergency move #")]
    assert any("**Production:** v1" == m.value for m in at.markdown)
    at = _open("promotions", page_env.people["otto"])
    assert any("You made it: another admin must acknowledge it." in w.value for w in at.warning)
    assert not [b for b in at.button if b.label.startswith("Acknowledge emergency move #")]
    at = _open("models", page_env.people["ada"])
    assert any("customers complain" in w.value for w in at.warning)

