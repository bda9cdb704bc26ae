"""Load battery: 16 operators chatting at once for a minute through the services (real tiny vLLM engine, real
Presidio, real SQLite), while a reviewer works the review queue and an analyst searches and exports the audit log.

Nothing may fail, every exchange a session saw answered is stored exactly once (counted by request id), and the
audit chain verifies afterwards.
"""

from __future__ import annotations

import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import func, select

from console.services import audit_search, chat, exports, latency, moderation, review
from console.services.access import Principal
from console.services.context import AppContext, utcnow
from db import audit as audit_q
from db import safety as safety_q
from db.tables import AuditEvent, Exchange, ReviewDecision
from engine.safety.policy import Policy
from engine.safety.runner import ScannerRunner

pytestmark = pytest.mark.slow

SESSIONS = 16
DURATION_S = 60.0
TURNS_PER_CONVERSATION = 3
SAMPLING = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 16}
# Every fourth prompt carries an email address: the policy flags it, so the reviewer has a queue to work.
PROMPTS = ("Where is my order {n}?", "Can I get a refund for order {n}?", "How do I reset my password?",
           "Write to me at customer{n}@example.com about order {n}.")
POLICY = textwrap.dedent("""
    version = "load"
    output_mode = "stream_then_scan"
    keep_raw_text = false
    [rules.prompt.default]
    action = "allow"
    [rules.prompt.EMAIL_ADDRESS]
    threshold = 0.5
    action = "flag"
    [rules.output.default]
    action = "allow"
""")


@dataclass
class Tally:
    """What every worker saw, filled from several threads (list appends are atomic)."""

    answered: list[tuple[str, int]] = field(default_factory=list)  # (request id, exchange id) acknowledged
    decisions: list[int] = field(default_factory=list)
    searches: int = 0
    exports: int = 0
    errors: list[tuple[str, BaseException]] = field(default_factory=list)


@pytest.fixture
def console(ctx: AppContext, engine_host: Any, make_user: Callable[..., Principal]) -> AppContext:
    from engine.safety.pii import PresidioScanner

    ctx.clock = utcnow  # a real clock: claims, deadlines and the dashboard window run on wall time
    with ctx.db.session() as s:
        version = safety_q.store_policy_version(s, POLICY, None, actor="test").version
    stack = moderation.SafetyStack(ScannerRunner([PresidioScanner()]), Policy.from_toml(POLICY), version)
    ctx.host_factory = lambda: engine_host
    ctx.safety_factory = lambda: stack
    return ctx


def _operator(ctx: AppContext, who: Principal, index: int, deadline: float, tally: Tally) -> None:
    conversation: int | None = None
    n = 0
    while time.monotonic() < deadline:
        prompt = PROMPTS[(index + n) % len(PROMPTS)].format(n=index * 1000 + n)
        turn = chat.start_turn(ctx, who, conversation, prompt, **SAMPLING)
        answer = "".join(turn.deltas())
        outcome = turn.outcome
        assert outcome is not None and outcome.status == "ok", outcome
        assert answer == outcome.text
        tally.answered.append((turn.request_id, outcome.exchange_id))
        n += 1
        conversation = None if n % TURNS_PER_CONVERSATION == 0 else turn.conversation_id


def _reviewer(ctx: AppContext, who: Principal, deadline: float, tally: Tally) -> None:
    decisions = ("false_positive", "violation")
    while time.monotonic() < deadline:
        item_id = review.claim_next(ctx, who)
        if item_id is None:
            time.sleep(0.2)
            continue
        view = review.item_view(ctx, who, item_id)
        assert view.findings, view
        decision = decisions[len(tally.decisions) % 2]
        result = review.decide(ctx, who, item_id, decision,
                               category="pii_leak" if decision == "violation" else None)
        tally.decisions.append(result.item_id)


def _analyst(ctx: AppContext, who: Principal, deadline: float, tally: Tally) -> None:
    filters = (audit_search.AuditFilter(action_prefix="chat."), audit_search.AuditFilter(action_prefix="review."),
               audit_search.AuditFilter(actor="op3"), audit_search.AuditFilter())
    n = 0
    while time.monotonic() < deadline:
        flt = filters[n % len(filters)]
        audit_search.search(ctx, who, flt)
        tally.searches += 1
        if n % 3 == 0:
            spec = audit_search.export_spec(flt, "events", "csv")
            exported = exports.run_export(ctx, who, spec, exports.default_export_path(ctx, spec))
            assert exported.path.read_bytes().startswith(b'"seq","ts","actor"')
            tally.exports += 1
        if n % 5 == 0:
            latency.latency(ctx, who, "last hour")
        n += 1
        time.sleep(0.2)


def _guarded(name: str, work: Callable[[], None], tally: Tally) -> Callable[[], None]:
    def run() -> None:
        try:
            work()
        except BaseException as exc:  # every failure must reach the assertions
            tally.errors.append((name, exc))

    return run


def test_sixteen_chatting_sessions_a_reviewer_and_an_analyst_lose_nothing_for_a_minute(
        console: AppContext, make_user: Callable[..., Principal]) -> None:
    ctx = console
    operators = [make_user(f"op{i}", "operator") for i in range(SESSIONS)]
    reviewer = make_user("rita", "reviewer")
    analyst = make_user("ana", "analyst")
    # Warm the path once (first request compiles and loads what it lazily needs) before the clock starts.
    warm = chat.start_turn(ctx, operators[0], None, "Hello", **SAMPLING)
    "".join(warm.deltas())
    assert warm.outcome is not None and warm.outcome.status == "ok"

    tally = Tally()
    deadline = time.monotonic() + DURATION_S
    workers = [_guarded(f"op{i}", lambda i=i, w=w: _operator(ctx, w, i, deadline, tally), tally)
               for i, w in enumerate(operators)]
    workers.append(_guarded("reviewer", lambda: _reviewer(ctx, reviewer, deadline, tally), tally))
    workers.append(_guarded("analyst", lambda: _analyst(ctx, analyst, deadline, tally), tally))
    threads = [threading.Thread(target=w, name=f"load-{i}") for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DURATION_S + 60)
    assert not any(t.is_alive() for t in threads), "a session hung"

    print(f"load: {len(tally.answered)} exchanges by {SESSIONS} sessions in {DURATION_S:.0f} s, "
          f"{len(tally.decisions)} review decisions, {tally.searches} audit searches, {tally.exports} exports")
    assert tally.errors == []
    answered = dict(tally.answered)
    assert len(answered) == len(tally.answered) > 5 * SESSIONS  # request ids are unique, and real work was done
    assert tally.decisions and tally.searches and tally.exports
    assert len(set(tally.decisions)) == len(tally.decisions)

    with ctx.db.session(readonly=True) as s:
        per_request = Counter(dict(s.execute(
            select(Exchange.request_id, func.count()).where(Exchange.request_id.in_(answered))
            .group_by(Exchange.request_id)).all()))
        stored = dict(s.execute(select(Exchange.request_id, Exchange.id)
                                .where(Exchange.request_id.in_(answered))).all())
        audited = Counter(s.scalars(select(AuditEvent.object_id).where(AuditEvent.action == "chat.exchange")))
        decided = Counter(s.scalars(select(ReviewDecision.item_id)))
        statuses = Counter(s.scalars(select(Exchange.status)))
    assert per_request == Counter(dict.fromkeys(answered, 1))  # every acknowledged exchange, exactly once
    assert stored == answered
    assert all(audited[str(exchange_id)] == 1 for exchange_id in answered.values())
    assert statuses == Counter({"ok": len(answered) + 1})  # and the warm-up; nothing failed or was cut
    assert all(decided[i] == 1 for i in tally.decisions)
    report = audit_q.verify_chain(ctx.db)
    assert report.ok, report
