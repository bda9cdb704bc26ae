"""The database side of quotas (db/quotas.py) on real SQLite: the per-user counter, its window, the refusal marker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from db import quotas as quotas_q

MINUTE = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


@pytest.fixture
def user_id(make_user) -> int:
    return make_user("olivia", "operator").user_id


def _take(ctx, user_id: int, window: datetime, limit: int | None) -> bool:
    with ctx.db.session() as s:
        return quotas_q.take_request(s, user_id, window, limit)


def _count(ctx, user_id: int, window: datetime) -> int:
    with ctx.db.session(readonly=True) as s:
        return quotas_q.requests_in_window(s, user_id, window)


def test_exactly_the_limit_is_counted_in_one_window_and_the_rest_refused(ctx, user_id) -> None:
    assert [_take(ctx, user_id, MINUTE, 3) for _ in range(5)] == [True, True, True, False, False]
    assert _count(ctx, user_id, MINUTE) == 3  # refusals do not count


def test_the_next_window_starts_again_from_one(ctx, user_id) -> None:
    assert [_take(ctx, user_id, MINUTE, 2) for _ in range(3)] == [True, True, False]
    later = MINUTE + timedelta(minutes=1)
    assert _take(ctx, user_id, later, 2) is True
    assert _count(ctx, user_id, later) == 1 and _count(ctx, user_id, MINUTE + timedelta(minutes=5)) == 0


def test_a_replica_with_a_lagging_clock_does_not_move_the_window_back(ctx, user_id) -> None:
    later = MINUTE + timedelta(minutes=1)
    assert [_take(ctx, user_id, later, 2) for _ in range(2)] == [True, True]
    assert _take(ctx, user_id, MINUTE, 2) is False  # the older minute is not a fresh window
    assert _count(ctx, user_id, later) == 2


def test_no_limit_counts_without_refusing_and_zero_refuses_everything(ctx, user_id, make_user) -> None:
    assert all(_take(ctx, user_id, MINUTE, None) for _ in range(100))
    assert _count(ctx, user_id, MINUTE) == 100
    other = make_user("zed", "operator").user_id
    assert _take(ctx, other, MINUTE, 0) is False and _count(ctx, other, MINUTE) == 0


def test_a_lower_limit_set_mid_window_refuses_at_once(ctx, user_id) -> None:
    assert [_take(ctx, user_id, MINUTE, 10) for _ in range(4)] == [True] * 4
    assert _take(ctx, user_id, MINUTE, 3) is False
    assert _take(ctx, user_id, MINUTE, 5) is True


@pytest.mark.parametrize("kind", ["requests_per_minute", "tokens_per_day"])
def test_a_refusal_is_marked_for_audit_once_per_user_kind_and_window(ctx, user_id, make_user, kind) -> None:
    def first(uid: int, window: datetime, k: str = kind) -> bool:
        with ctx.db.session() as s:
            return quotas_q.first_refusal(s, uid, k, window)

    assert [first(user_id, MINUTE) for _ in range(3)] == [True, False, False]
    assert first(user_id, MINUTE + timedelta(minutes=1)) is True
    other_kind = "tokens_per_day" if kind == "requests_per_minute" else "requests_per_minute"
    assert first(user_id, MINUTE + timedelta(minutes=1), other_kind) is True
    assert first(make_user("zed", "operator").user_id, MINUTE) is True


def test_limits_set_and_cleared_report_what_was_there(ctx, user_id, make_user) -> None:
    with ctx.db.session() as s:
        assert quotas_q.set_limit(s, role="operator", kind="tokens_per_day", value=500, by_id=None) == (False, None)
        assert quotas_q.set_limit(s, role="operator", kind="tokens_per_day", value=None, by_id=None) == (True, 500)
        assert quotas_q.set_limit(s, user_id=user_id, kind="requests_per_minute", value=7, by_id=None) == (False,
                                                                                                          None)
    with ctx.db.session(readonly=True) as s:
        assert quotas_q.role_limits(s) == {("operator", "tokens_per_day"): None}
        assert quotas_q.user_overrides(s) == {(user_id, "requests_per_minute"): 7}
    with ctx.db.session() as s:
        assert quotas_q.clear_limit(s, user_id=user_id, kind="requests_per_minute") == (True, 7)
        assert quotas_q.clear_limit(s, user_id=user_id, kind="requests_per_minute") == (False, None)
    with ctx.db.session(readonly=True) as s:
        assert quotas_q.user_overrides(s) == {}
