"""Quotas in real chat turns: the chat service on the tiny vLLM engine (module-scoped), real SQLite; load tests
through the load-test service are exempt."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import func, select

from console.services import chat as chat_svc
from console.services import loadtest, quotas
from db import audit as audit_q
from db import quotas as quotas_q
from db.tables import Exchange

SAMPLING = {"temperature": 0.0, "top_p": 0.95, "max_tokens": 8}


class CountingHost:
    """Our own seam around the real host: counts what the model was asked."""

    def __init__(self, host) -> None:
        self.host, self.calls = host, 0

    @property
    def serving(self):
        return self.host.serving

    def status(self):
        return self.host.status()

    def stream_chat(self, messages, sampling, *, request_id=None):
        self.calls += 1
        return self.host.stream_chat(messages, sampling, request_id=request_id)


@pytest.fixture
def chatting(ctx, engine_host, make_user):
    host = CountingHost(engine_host)
    ctx.host_factory = lambda: host
    ctx.settings = dataclasses.replace(ctx.settings, loadtest_cooldown_seconds=0)
    admin, op = make_user("ada", "admin"), make_user("olivia", "operator")
    yield ctx, host, admin, op
    running = loadtest._current
    if running is not None and running.final is None:
        running.stop("test teardown")
        loadtest.wait_for_load(timeout=120)


def _exchanges(ctx, user_id: int) -> list[Exchange]:
    with ctx.db.session(readonly=True) as s:
        return list(s.scalars(select(Exchange).where(Exchange.user_id == user_id)))


def _exceeded(ctx) -> list:
    with ctx.db.session(readonly=True) as s:
        return list(audit_q.iter_events(s, action="quota.exceeded"))


def test_tokens_of_a_finished_turn_count_and_the_next_turn_is_refused_before_the_model(chatting) -> None:
    ctx, host, admin, op = chatting
    quotas.set_user_override(ctx, admin, op.user_id, "tokens_per_day", 5)
    turn = chat_svc.start_turn(ctx, op, None, "Where is my order?", **SAMPLING)
    "".join(turn.deltas())  # the turn in flight finishes: it may overshoot the quota by its answer
    [first] = _exchanges(ctx, op.user_id)
    used = first.prompt_tokens + first.output_tokens
    assert first.status == "ok" and used > 5 and host.calls == 1
    with pytest.raises(quotas.QuotaExceeded) as refused:
        chat_svc.start_turn(ctx, op, turn.conversation_id, "And my refund?", **SAMPLING)
    assert f"used {used:,} tokens" in str(refused.value) and "5 tokens per day" in str(refused.value)
    assert host.calls == 1 and len(_exchanges(ctx, op.user_id)) == 1  # not stored, not sent
    [event] = _exceeded(ctx)
    assert event.details["kind"] == "tokens_per_day" and event.details["used"] == used
    [row] = [q for q in quotas.quota_overview(ctx, admin) if q.username == "olivia"]
    assert row.tokens_today == used and row.requests_this_minute == 1


def test_the_second_prompt_in_a_minute_over_a_limit_of_one_is_refused(chatting, clock) -> None:
    ctx, host, admin, op = chatting
    quotas.set_user_override(ctx, admin, op.user_id, "requests_per_minute", 1)
    turn = chat_svc.start_turn(ctx, op, None, "Hello", **SAMPLING)
    "".join(turn.deltas())
    with pytest.raises(quotas.QuotaExceeded, match="Rate limit reached: 1 request per minute"):
        chat_svc.start_turn(ctx, op, turn.conversation_id, "Hello again", **SAMPLING)
    assert host.calls == 1 and len(_exchanges(ctx, op.user_id)) == 1
    clock.advance(minutes=1)
    "".join(chat_svc.start_turn(ctx, op, turn.conversation_id, "Hello again", **SAMPLING).deltas())
    assert host.calls == 2


def test_load_test_chats_are_neither_counted_nor_refused(chatting) -> None:
    ctx, host, admin, op = chatting
    quotas.set_user_override(ctx, admin, op.user_id, "requests_per_minute", 0)
    quotas.set_user_override(ctx, admin, op.user_id, "tokens_per_day", 0)
    loadtest.start_load(ctx, op, "support", 1, 2)
    report = loadtest.wait_for_load(timeout=180)
    assert report is not None and report.requests >= 1 and report.errors == 0
    assert len(_exchanges(ctx, op.user_id)) == report.requests
    with ctx.db.session(readonly=True) as s:
        assert quotas_q.requests_now(s, quotas.minute_start(ctx.now())) == {}
        assert s.scalar(select(func.count()).select_from(Exchange).where(Exchange.synthetic.is_(False))) == 0
    assert _exceeded(ctx) == []
    with pytest.raises(quotas.QuotaExceeded):  # the same person's own chat is still limited
        chat_svc.start_turn(ctx, op, None, "Hello", **SAMPLING)
