"""The audit chain: written with each change, append-only, and tamper-evident."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import StatementError

from db import Database, DbConfig
from db.audit import GENESIS_HASH, append_event, integrate_pending, iter_events, verify_chain
from db.chat import ExchangeTimings, TurnRecord, create_conversation, store_turn
from db.review.decisions import record_decision
from db.review.items import create_review_item
from db.tables import AppendOnlyError, AuditEvent, Exchange, ReviewDecision
from db.users import create_user


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(DbConfig(f"sqlite:///{tmp_path / 'console.db'}"))
    database.migrate()
    yield database
    database.dispose()


def _seed(db: Database) -> tuple[int, int]:
    with db.session() as s:
        user = create_user(s, "ada", "hash", ["operator"])
        conversation = create_conversation(s, user_id=user.id, actor="ada")
        return user.id, conversation.id


def _events(db: Database) -> list[AuditEvent]:
    integrate_pending(db)  # PostgreSQL queues appends and chains them just after (a no-op on SQLite)
    with db.session(readonly=True) as s:
        return list(iter_events(s))


class Boom(Exception):
    pass


def test_an_exchange_and_its_audit_event_commit_together(db: Database) -> None:
    user_id, conversation_id = _seed(db)
    with db.session() as s:
        exchange = store_turn(
            s,
            TurnRecord(
                conversation_id=conversation_id,
                user_id=user_id,
                prompt="secret prompt",
                response="secret answer",
                model_version="demo-v1",
                actor="ada",
                request_id="req-1",
                timings=ExchangeTimings(ttft_ms=12.0),
            ),
        )
    last = _events(db)[-1]
    assert last.action == "chat.exchange"
    assert last.object_type == "exchange" and last.object_id == str(exchange.id)
    assert last.details["request_id"] == "req-1" and last.details["model_version"] == "demo-v1"
    assert last.details["ttft_ms"] == 12.0
    # The audit log records that an exchange happened, never its text.
    assert "secret" not in str(last.details)


def test_an_error_after_the_insert_rolls_back_the_exchange_and_its_audit_event(db: Database) -> None:
    user_id, conversation_id = _seed(db)
    before = _events(db)
    with pytest.raises(Boom), db.session() as s:
        store_turn(
            s,
            TurnRecord(
                conversation_id=conversation_id,
                user_id=user_id,
                prompt="p",
                response="r",
                model_version="demo-v1",
                actor="ada",
            ),
        )
        assert s.scalar(select(func.count()).select_from(Exchange)) == 1
        raise Boom
    with db.session(readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(Exchange)) == 0
    assert [e.seq for e in _events(db)] == [e.seq for e in before]
    assert verify_chain(db).ok


def test_a_fresh_chain_is_gapless_linked_and_verifies(db: Database) -> None:
    _seed(db)
    with db.session() as s:
        for i in range(5):
            append_event(s, actor="system", action="test.event", details={"i": i})
    events = _events(db)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in zip(events, events[1:], strict=False))
    report = verify_chain(db)
    assert report.ok and report.checked == len(events) == 7
    assert report.first_bad_seq is None and report.reason is None


def test_an_empty_chain_verifies(db: Database) -> None:
    report = verify_chain(db)
    assert report.ok and report.checked == 0


def test_details_are_stored_exactly_as_they_were_hashed(db: Database) -> None:
    when = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
    with db.session() as s:
        append_event(
            s, actor="ünïcødé", action="test.details", details={"when": when, "roles": {"b", "a"}, "n": 1.5}
        )
    (event,) = _events(db)
    assert event.details == {"when": "2026-05-04T03:02:01+00:00", "roles": ["a", "b"], "n": 1.5}
    with db.session(readonly=True) as s:
        assert verify_chain(s).ok


def test_details_that_are_not_json_are_refused(db: Database) -> None:
    with pytest.raises(TypeError), db.session() as s:
        append_event(s, actor="system", action="test.bad", details={"x": object()})
    assert _events(db) == []


# Tampering (every kind of damage, with and without checkpoints) is tested in tests/audit/test_audit_anchor.py.


# ---- append-only guards ----


def test_the_orm_refuses_to_update_an_audit_event(db: Database) -> None:
    with db.session() as s:
        append_event(s, actor="system", action="test.event")
    with pytest.raises(AppendOnlyError), db.session() as s:
        event = s.scalars(select(AuditEvent)).one()
        event.actor = "mallory"
        s.flush()
    assert _events(db)[0].actor == "system"


def test_the_orm_refuses_to_delete_an_audit_event(db: Database) -> None:
    with db.session() as s:
        append_event(s, actor="system", action="test.event")
    with pytest.raises(AppendOnlyError), db.session() as s:
        s.delete(s.scalars(select(AuditEvent)).one())
        s.flush()
    assert len(_events(db)) == 1


def test_the_orm_refuses_bulk_updates_of_audit_events(db: Database) -> None:
    with db.session() as s:
        append_event(s, actor="system", action="test.event")
    with pytest.raises(AppendOnlyError), db.session() as s:
        s.execute(update(AuditEvent).values(actor="mallory"))
    assert _events(db)[0].actor == "system"


def test_review_decisions_cannot_be_edited(db: Database) -> None:
    user_id, conversation_id = _seed(db)
    with db.session() as s:
        exchange = store_turn(
            s,
            TurnRecord(
                conversation_id=conversation_id,
                user_id=user_id,
                prompt="p",
                response="r",
                model_version="m",
                actor="ada",
            ),
        )
        item = create_review_item(s, exchange_id=exchange.id, reason="flagged", actor="system")
        record_decision(s, item_id=item.id, reviewer_id=user_id, decision="violation", actor="ada")
    with pytest.raises(AppendOnlyError), db.session() as s:
        s.scalars(select(ReviewDecision)).one().decision = "false_positive"
        s.flush()


# ---- timestamps ----


def test_timestamps_come_back_timezone_aware_utc(db: Database) -> None:
    user_id, conversation_id = _seed(db)
    cest = timezone(timedelta(hours=2))
    started = datetime(2026, 6, 1, 14, 0, 0, 123456, tzinfo=cest)
    with db.session() as s:
        store_turn(
            s,
            TurnRecord(
                conversation_id=conversation_id,
                user_id=user_id,
                prompt="p",
                response="r",
                model_version="m",
                actor="ada",
                created_at=started,
            ),
        )
    with db.session(readonly=True) as s:
        exchange = s.scalars(select(Exchange)).one()
        assert exchange.created_at.tzinfo is not None and exchange.created_at.utcoffset() == timedelta(0)
        assert exchange.created_at == started
        assert exchange.created_at.hour == 12 and exchange.created_at.microsecond == 123456
        assert exchange.finished_at is not None and exchange.finished_at.utcoffset() == timedelta(0)
    event = _events(db)[-1]
    assert event.ts.utcoffset() == timedelta(0)


def test_naive_datetimes_are_refused(db: Database) -> None:
    user_id, conversation_id = _seed(db)
    with pytest.raises(StatementError, match="naive datetime"), db.session() as s:
        store_turn(
            s,
            TurnRecord(
                conversation_id=conversation_id,
                user_id=user_id,
                prompt="p",
                response="r",
                model_version="m",
                actor="ada",
                created_at=datetime(2026, 6, 1, 12, 0),
            ),
        )


def test_iter_events_filters_by_action_actor_and_time(db: Database) -> None:
    _seed(db)
    with db.session() as s:
        append_event(s, actor="bob", action="review.claim", object_type="review_item", object_id=5)
        append_event(s, actor="bob", action="review.decision", object_type="review_item", object_id=5)
    integrate_pending(db)  # after_seq reads chained events only (PostgreSQL chains them just after the commit)
    with db.session(readonly=True) as s:
        assert [e.action for e in iter_events(s, actor="bob")] == ["review.claim", "review.decision"]
        assert [e.action for e in iter_events(s, action_prefix="review.")] == [
            "review.claim",
            "review.decision",
        ]
        assert [e.actor for e in iter_events(s, action="user.create")] == ["system"]
        assert [e.seq for e in iter_events(s, object_type="review_item", object_id="5", after_seq=3)] == [4]
        future = datetime.now(UTC) + timedelta(hours=1)
        assert list(iter_events(s, since=future)) == []
        assert len(list(iter_events(s, until=future, limit=2))) == 2
