"""Quotas as a service (console/services/quotas.py) on real SQLite with the test clock: effective limits, the
refusal (message, audit, reset), changes (audited with old and new), roles and the bad-input battery."""

from __future__ import annotations

from datetime import timedelta

import pytest

from console.services import quotas
from console.services.errors import AccessDenied, InvalidInput, NotFound
from db import audit as audit_q
from db.tables import Conversation, Exchange


def _events(ctx, action: str) -> list:
    with ctx.db.session(readonly=True) as s:
        return list(audit_q.iter_events(s, action=action))


def _store_tokens(ctx, user_id: int, prompt_tokens: int, output_tokens: int, *, request_id: str = "chat-t",
                  synthetic: bool = False, at=None) -> None:
    """A finished exchange with token counts (the chat service stores these; the real-engine path is tested in
    test_quota_chat.py)."""
    with ctx.db.session() as s:
        conv = Conversation(user_id=user_id, title="t")
        s.add(conv)
        s.flush()
        s.add(Exchange(conversation_id=conv.id, user_id=user_id, request_id=request_id, model_version="m",
                       prompt="p", response="r", status="ok", prompt_tokens=prompt_tokens,
                       output_tokens=output_tokens, synthetic=synthetic, created_at=at or ctx.now()))


@pytest.fixture
def people(ctx, make_user):
    return make_user("ada", "admin"), make_user("olivia", "operator")


# --- effective limits -------------------------------------------------------------------------------------------


def test_shipped_defaults_apply_until_an_admin_sets_role_defaults(ctx, people) -> None:
    admin, op = people
    [row] = [q for q in quotas.quota_overview(ctx, admin) if q.username == "olivia"]
    assert (row.requests_per_minute.value, row.requests_per_minute.source) == (None, "role operator (shipped default)")
    assert (row.tokens_per_day.value, row.tokens_per_day.text) == (None, "no limit")
    quotas.set_role_limit(ctx, admin, "operator", "tokens_per_day", "50,000")
    [row] = [q for q in quotas.quota_overview(ctx, admin) if q.username == "olivia"]
    assert (row.tokens_per_day.value, row.tokens_per_day.source) == (50_000, "role operator")
    roles = {r.role: r for r in quotas.role_defaults(ctx, admin)}
    assert roles["operator"].tokens_per_day == 50_000 and roles["operator"].shipped == ("requests_per_minute",)
    assert roles["analyst"].requests_per_minute is None and set(roles["analyst"].shipped) == set(quotas.KIND_LABELS)
    quotas.enforce(ctx, op)  # no limit: counted, never refused
    assert [q.requests_this_minute for q in quotas.quota_overview(ctx, admin) if q.username == "olivia"] == [1]


def test_several_roles_give_the_most_generous_and_no_limit_beats_any_number(ctx, people, make_user) -> None:
    admin, _ = people
    both = make_user("bob", "operator", "reviewer")
    quotas.set_role_limit(ctx, admin, "operator", "requests_per_minute", 5)
    quotas.set_role_limit(ctx, admin, "reviewer", "requests_per_minute", 9)
    by_name = {q.username: q for q in quotas.quota_overview(ctx, admin)}
    assert (by_name["bob"].requests_per_minute.value, by_name["bob"].requests_per_minute.source) == (9, "role reviewer")
    quotas.set_role_limit(ctx, admin, "operator", "requests_per_minute", "no limit")
    by_name = {q.username: q for q in quotas.quota_overview(ctx, admin)}
    assert by_name["bob"].requests_per_minute.value is None
    assert by_name["bob"].requests_per_minute.source == "role operator"
    assert both.user_id == by_name["bob"].user_id


def test_a_user_override_wins_whether_higher_lower_or_no_limit(ctx, people) -> None:
    admin, op = people
    quotas.set_role_limit(ctx, admin, "operator", "requests_per_minute", 10)
    for value, expected in ((2, 2), (500, 500), ("no limit", None), (None, None)):
        row = quotas.set_user_override(ctx, admin, op.user_id, "requests_per_minute", value)
        assert (row.requests_per_minute.value, row.requests_per_minute.source) == (expected, "override")
    row = quotas.clear_user_override(ctx, admin, op.user_id, "requests_per_minute")
    assert (row.requests_per_minute.value, row.requests_per_minute.source) == (10, "role operator")


# --- enforcement ------------------------------------------------------------------------------------------------


def test_requests_over_the_limit_are_refused_with_the_limit_usage_and_reset(ctx, people, clock) -> None:
    admin, op = people
    quotas.set_user_override(ctx, admin, op.user_id, "requests_per_minute", 2)
    clock.advance(seconds=23)  # 09:00:23
    quotas.enforce(ctx, op)
    quotas.enforce(ctx, op)
    with pytest.raises(quotas.QuotaExceeded) as refused:
        quotas.enforce(ctx, op)
    message = str(refused.value)
    assert "2 requests per minute" in message and "set for your account" in message
    assert "you sent 2 this minute" in message and "not sent to the model" in message
    assert "09:01:00 UTC (in 37 s)" in message
    assert (refused.value.kind, refused.value.limit, refused.value.used) == ("requests_per_minute", 2, 2)


def test_the_rate_limit_resets_with_the_next_minute(ctx, people, clock) -> None:
    admin, op = people
    quotas.set_user_override(ctx, admin, op.user_id, "requests_per_minute", 1)
    quotas.enforce(ctx, op)
    with pytest.raises(quotas.QuotaExceeded):
        quotas.enforce(ctx, op)
    clock.advance(seconds=59)
    with pytest.raises(quotas.QuotaExceeded):
        quotas.enforce(ctx, op)
    clock.advance(seconds=1)
    quotas.enforce(ctx, op)
    [row] = [q for q in quotas.quota_overview(ctx, admin) if q.username == "olivia"]
    assert row.requests_this_minute == 1


def test_a_hammering_client_leaves_one_exceeded_event_per_limit_and_window(ctx, people, clock) -> None:
    admin, op = people
    quotas.set_user_override(ctx, admin, op.user_id, "requests_per_minute", 1)
    quotas.enforce(ctx, op)
    for _ in range(20):
        with pytest.raises(quotas.QuotaExceeded):
            quotas.enforce(ctx, op)
    [event] = _events(ctx, "quota.exceeded")
    assert (event.actor, event.object_type, event.object_id) == ("olivia", "user", str(op.user_id))
    assert event.details["kind"] == "requests_per_minute" and event.details["limit"] == 1
    assert event.details["used"] == 1 and event.details["source"] == "override"
    assert event.details["resets_at"] == "2026-11-26T09:01:00+00:00"
    clock.advance(minutes=1)
    quotas.enforce(ctx, op)
    with pytest.raises(quotas.QuotaExceeded):
        quotas.enforce(ctx, op)
    assert len(_events(ctx, "quota.exceeded")) == 2
    assert audit_q.verify_chain(ctx.db).ok


def test_tokens_per_day_count_prompt_and_answer_of_finished_chats_and_reset_at_midnight(ctx, people, clock) -> None:
    admin, op = people
    quotas.set_role_limit(ctx, admin, "operator", "tokens_per_day", 100)
    _store_tokens(ctx, op.user_id, 30, 40)
    _store_tokens(ctx, op.user_id, 500, 500, synthetic=True)  # a load test's: not counted
    _store_tokens(ctx, op.user_id, 500, 500, request_id="cmp-live-x")  # a comparison's: not counted
    _store_tokens(ctx, op.user_id, 500, 500, at=clock.now - timedelta(days=1))  # yesterday's
    quotas.enforce(ctx, op)  # 70 of 100
    _store_tokens(ctx, op.user_id, 10, 20)  # 100 of 100
    with pytest.raises(quotas.QuotaExceeded) as refused:
        quotas.enforce(ctx, op)
    message = str(refused.value)
    assert "100 tokens per day" in message and "the default of your role operator" in message
    assert "used 100 tokens" in message and "2026-11-27 00:00 UTC (in 54,000 s (15 h 0 min))" in message
    [event] = _events(ctx, "quota.exceeded")
    assert event.details["kind"] == "tokens_per_day" and event.details["used"] == 100
    clock.advance(hours=15)
    quotas.enforce(ctx, op)  # a new day
    [row] = [q for q in quotas.quota_overview(ctx, admin) if q.username == "olivia"]
    assert row.tokens_today == 0


def test_load_test_turns_are_neither_counted_nor_refused(ctx, people, make_user) -> None:
    admin, op = people
    quotas.set_user_override(ctx, admin, op.user_id, "requests_per_minute", 0)
    for _ in range(5):
        quotas.enforce(ctx, op, synthetic=True)
    [row] = [q for q in quotas.quota_overview(ctx, admin) if q.username == "olivia"]
    assert row.requests_this_minute == 0
    with pytest.raises(quotas.QuotaExceeded):
        quotas.enforce(ctx, op)
    # "synthetic" alone is no way around a limit: only someone who may run load tests is exempt.
    reviewer = make_user("rita", "reviewer")
    quotas.set_user_override(ctx, admin, reviewer.user_id, "requests_per_minute", 0)
    with pytest.raises(quotas.QuotaExceeded):
        quotas.enforce(ctx, reviewer, synthetic=True)


# --- changes ----------------------------------------------------------------------------------------------------


def test_every_change_is_audited_with_old_and_new(ctx, people) -> None:
    admin, op = people
    quotas.set_role_limit(ctx, admin, "operator", "requests_per_minute", 30)
    quotas.set_role_limit(ctx, admin, "operator", "requests_per_minute", "no limit")
    quotas.reset_role_limit(ctx, admin, "operator", "requests_per_minute")
    quotas.reset_role_limit(ctx, admin, "operator", "requests_per_minute")  # nothing to reset: no event
    quotas.set_user_override(ctx, admin, op.user_id, "tokens_per_day", 1000)
    quotas.set_user_override(ctx, admin, op.user_id, "tokens_per_day", 2000)
    quotas.clear_user_override(ctx, admin, op.user_id, "tokens_per_day")
    changes = [(e.object_type, e.object_id, e.details["kind"], e.details["old"], e.details["new"])
               for e in _events(ctx, "quota.changed")]
    assert changes == [
        ("role", "operator", "requests_per_minute", "shipped default", 30),
        ("role", "operator", "requests_per_minute", 30, "no limit"),
        ("role", "operator", "requests_per_minute", "no limit", "shipped default (no limit)"),
        ("user", str(op.user_id), "tokens_per_day", "role default", 1000),
        ("user", str(op.user_id), "tokens_per_day", 1000, 2000),
        ("user", str(op.user_id), "tokens_per_day", 2000, "role default"),
    ]
    assert {e.actor for e in _events(ctx, "quota.changed")} == {"ada"}


@pytest.mark.parametrize("role", ["operator", "reviewer", "analyst"])
def test_only_admins_see_or_change_quotas(ctx, people, make_user, role) -> None:
    admin, op = people
    user = make_user(f"u-{role}", role)
    calls = [
        lambda: quotas.quota_overview(ctx, user),
        lambda: quotas.role_defaults(ctx, user),
        lambda: quotas.set_role_limit(ctx, user, role, "requests_per_minute", 10_000),
        lambda: quotas.reset_role_limit(ctx, user, role, "requests_per_minute"),
        lambda: quotas.set_user_override(ctx, user, user.user_id, "requests_per_minute", "no limit"),
        lambda: quotas.clear_user_override(ctx, user, op.user_id, "requests_per_minute"),
    ]
    for call in calls:
        with pytest.raises(AccessDenied):
            call()
    assert _events(ctx, "quota.changed") == []


# --- the bad-input battery --------------------------------------------------------------------------------------

BAD_LIMITS = [
    ("negative", -1, "cannot be negative"),
    ("negative text", "-5", "cannot be negative"),
    ("fraction", 1.5, "is not a whole number"),
    ("fraction text", "2.5", "is not a whole number"),
    ("word", "lots", "is not a whole number"),
    ("empty", "", "is not a whole number"),
    ("boolean", True, "is not a whole number"),
    ("absurd", 10**15, "more than the largest allowed"),
    ("absurd text", "9" * 19, "more than the largest allowed"),
    ("too long", "9" * 400, "is not a whole number"),
    ("unicode digits", "١٢", "is not a whole number"),
    ("nan", float("nan"), "is not a whole number"),
    ("list", [5], "is not a whole number"),
]


@pytest.mark.parametrize("value,expected", [(v, e) for _, v, e in BAD_LIMITS], ids=[n for n, _, _ in BAD_LIMITS])
def test_bad_input_battery_limits_are_refused_with_a_clear_message_and_nothing_changes(ctx, people, value,
                                                                                       expected) -> None:
    admin, op = people
    with pytest.raises(InvalidInput, match=expected) as refused:
        quotas.set_user_override(ctx, admin, op.user_id, "requests_per_minute", value)
    assert "Requests per minute" in str(refused.value) and "'no limit'" in str(refused.value)
    with pytest.raises(InvalidInput, match=expected):
        quotas.set_role_limit(ctx, admin, "operator", "tokens_per_day", value)
    assert _events(ctx, "quota.changed") == []
    assert {r.role: r.shipped for r in quotas.role_defaults(ctx, admin)}["operator"] == tuple(quotas.KIND_LABELS)


def test_bad_input_battery_unknown_user_role_and_limit_are_refused(ctx, people) -> None:
    admin, op = people
    with pytest.raises(NotFound, match="No user with id 999"):
        quotas.set_user_override(ctx, admin, 999, "requests_per_minute", 5)
    with pytest.raises(InvalidInput, match="Choose a user"):
        quotas.set_user_override(ctx, admin, "olivia", "requests_per_minute", 5)
    with pytest.raises(InvalidInput, match="Unknown role 'superuser'. Roles are: operator"):
        quotas.set_role_limit(ctx, admin, "superuser", "requests_per_minute", 5)
    with pytest.raises(InvalidInput, match="Unknown limit 'requests_per_hour'; the limits are"):
        quotas.set_role_limit(ctx, admin, "operator", "requests_per_hour", 5)
    with pytest.raises(InvalidInput, match="Unknown limit"):
        quotas.clear_user_override(ctx, admin, op.user_id, "bogus")
    assert _events(ctx, "quota.changed") == []


def test_limits_at_the_edges_are_accepted(ctx, people) -> None:
    admin, op = people
    assert quotas.parse_limit(" 1_000 ", "tokens_per_day") == 1000
    assert quotas.parse_limit(4.0, "requests_per_minute") == 4
    assert quotas.parse_limit("Unlimited", "requests_per_minute") is None
    row = quotas.set_user_override(ctx, admin, op.user_id, "tokens_per_day", quotas.MAXIMUMS["tokens_per_day"])
    assert row.tokens_per_day.value == quotas.MAXIMUMS["tokens_per_day"]
    row = quotas.set_user_override(ctx, admin, op.user_id, "requests_per_minute", 0)
    assert row.requests_per_minute.value == 0
    with pytest.raises(quotas.QuotaExceeded, match="0 requests per minute"):
        quotas.enforce(ctx, op)


def test_a_user_sees_their_own_limits_and_usage_before_any_refusal(ctx, clock, people, make_user) -> None:
    admin, op = people
    assert quotas.usage_text(quotas.my_quota(ctx, op)) is None  # shipped defaults: nothing to show
    quotas.set_role_limit(ctx, admin, "operator", "requests_per_minute", 5)
    quotas.enforce(ctx, op)
    quotas.enforce(ctx, op)
    _store_tokens(ctx, op.user_id, 1_200, 34)
    assert quotas.usage_text(quotas.my_quota(ctx, op)) == "Your limits: 5 requests per minute (2 sent this minute)"
    quotas.set_user_override(ctx, admin, op.user_id, "tokens_per_day", 50_000)
    mine = quotas.my_quota(ctx, op)
    assert (mine.username, mine.tokens_today) == ("olivia", 1_234)
    assert quotas.usage_text(mine) == ("Your limits: 5 requests per minute (2 sent this minute) · "
                                       "50,000 tokens per day (1,234 used since 00:00 UTC)")
    clock.advance(minutes=1)  # a new minute: the request count starts again, the day's tokens stay
    assert quotas.usage_text(quotas.my_quota(ctx, op)).startswith("Your limits: 5 requests per minute (0 sent")
    analyst = make_user("ann", "analyst")  # no chat.use: not even their own quota through this service
    with pytest.raises(AccessDenied):
        quotas.my_quota(ctx, analyst)
