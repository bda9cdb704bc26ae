"""The same store tests on PostgreSQL, where appends are queued and chained in batches (db.audit's sequencing).

Opt-in: set LLM_CONSOLE_TEST_POSTGRES_URL to a server URL whose user may create databases, e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres`` (needs the ``psycopg`` driver). Each test gets
a fresh database that is dropped afterwards.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from db import Database
from db.audit import iter_events, verify_chain
from db.chat import TurnRecord, create_conversation, store_turn
from db.review.claims import claim_item
from db.review.decisions import record_decision, record_decisions
from db.review.items import ReviewStateError, create_review_item
from db.tables import AuditEvent, ReviewDecision, ReviewItem
from db.users import create_user
from tests.audit.test_audit_anchor import (  # noqa: F401 - every kind of damage, the triggers and erasure on PostgreSQL
    anchor,
    test_consistent_forgeries_are_caught_only_by_checkpoints,
    test_each_kind_of_damage_is_named_with_checkpoints,
    test_each_kind_of_damage_is_named_without_checkpoints,
    test_erasure_keeps_the_chain_valid_when_recorded,
    test_triggers_refuse_raw_changes_to_review_decisions,
    test_triggers_refuse_raw_updates_and_deletes,
)
from tests.audit.test_db_audit import (  # noqa: F401 - collected here again, against PostgreSQL
    test_a_fresh_chain_is_gapless_linked_and_verifies,
    test_an_error_after_the_insert_rolls_back_the_exchange_and_its_audit_event,
    test_details_are_stored_exactly_as_they_were_hashed,
    test_iter_events_filters_by_action_actor_and_time,
    test_the_orm_refuses_to_update_an_audit_event,
    test_timestamps_come_back_timezone_aware_utc,
)
from tests.conftest import postgres_database
from tests.db.test_db_concurrency import (  # noqa: F401
    test_sixteen_threads_writing_exchanges_lose_nothing_and_the_chain_verifies,
    test_two_reviewers_racing_for_one_item_exactly_one_wins,
)
from tests.db.test_db_queries import (  # noqa: F401
    test_a_claim_is_exclusive_until_it_expires_or_is_released,
    test_decisions_close_the_item_and_a_second_review_supersedes_without_editing,
    test_failed_logins_lock_the_account_at_the_threshold_and_a_login_resets,
    test_the_queue_orders_by_severity_then_age_and_pages,
)

SERVER_URL = os.environ.get("LLM_CONSOLE_TEST_POSTGRES_URL")

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not SERVER_URL, reason="set LLM_CONSOLE_TEST_POSTGRES_URL to run on PostgreSQL"),
]


@pytest.fixture
def db() -> Iterator[Database]:
    with postgres_database() as database:
        assert database.current_revision() == database.head_revision()
        yield database


# --- review races on the real server: row locks, taken in one order ----------------------------------------------
# PostgreSQL runs these transactions truly at once (SQLite serialises whole write transactions), so a decision
# must lock the item before it trusts its state, and every transaction takes review_items row locks in ascending
# id order before the audit_head lock.

ITEMS = 20
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _run_together(workers: list[Callable[[], object]]) -> tuple[list[object], list[BaseException | None]]:
    """Run every worker on its own thread, started at one barrier; each one's result or exception, in order."""
    barrier = threading.Barrier(len(workers))
    results: list[object] = [None] * len(workers)
    errors: list[BaseException | None] = [None] * len(workers)

    def run(index: int, work: Callable[[], object]) -> None:
        barrier.wait()
        try:
            results[index] = work()
        except BaseException as exc:  # every failure must reach the assertions
            errors[index] = exc

    threads = [threading.Thread(target=run, args=(i, w)) for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    return results, errors


def _people_and_items(db: Database, n: int) -> tuple[dict[str, int], list[int]]:
    with db.session() as s:
        people = {name: create_user(s, name, "hash", [role]).id
                  for name, role in (("ada", "operator"), ("alice", "reviewer"), ("bob", "reviewer"),
                                     ("carol", "reviewer"))}
        conversation = create_conversation(s, user_id=people["ada"], actor="ada")
        items = []
        for k in range(n):
            exchange = store_turn(s, TurnRecord(conversation_id=conversation.id, user_id=people["ada"],
                                                prompt=f"p{k}", response="r", model_version="m", actor="ada"))
            items.append(create_review_item(s, exchange_id=exchange.id, reason="flagged", actor="system").id)
    return people, items


def _decisions(db: Database, item_id: int) -> list[ReviewDecision]:
    with db.session(readonly=True) as s:
        return list(s.scalars(select(ReviewDecision).where(ReviewDecision.item_id == item_id)))


def _audited(db: Database, action: str, item_id: int) -> list[AuditEvent]:
    with db.session(readonly=True) as s:
        return list(iter_events(s, action=action, object_id=str(item_id)))


def test_two_reviewers_deciding_one_item_at_once_record_exactly_one_decision(db: Database) -> None:
    people, items = _people_and_items(db, 6)

    def decide(item_id: int, reviewer: str, decision: str) -> int:
        with db.session() as s:
            # As the review service does: the item is read (no lock) before the decision locks its row.
            loaded = s.get(ReviewItem, item_id)
            assert loaded is not None and loaded.status == "open"
            gate.wait()
            return record_decision(s, item_id=item_id, reviewer_id=people[reviewer], decision=decision,
                                   actor=reviewer).id

    for item_id in items:
        gate = threading.Barrier(2)  # both have read the item before either decides
        results, errors = _run_together([lambda i=item_id: decide(i, "alice", "violation"),
                                         lambda i=item_id: decide(i, "bob", "false_positive")])
        losers = [e for e in errors if e is not None]
        assert len(losers) == 1, errors
        assert isinstance(losers[0], ReviewStateError) and "already decided" in str(losers[0])
        winner = "alice" if errors[0] is None else "bob"
        (row,) = _decisions(db, item_id)
        assert row.reviewer_id == people[winner] and row.id in results
        assert [e.actor for e in _audited(db, "review.decision", item_id)] == [winner]
        with db.session(readonly=True) as s:
            item = s.get(ReviewItem, item_id)
            assert item is not None and item.status == "decided"
    assert verify_chain(db).ok


def test_two_admins_deciding_one_escalation_at_once_record_exactly_one_final_decision(db: Database) -> None:
    people, (item_id,) = _people_and_items(db, 1)
    with db.session() as s:
        record_decision(s, item_id=item_id, reviewer_id=people["alice"], decision="escalate", actor="alice")
    gate = threading.Barrier(2)

    def decide(reviewer: str, decision: str) -> int:
        with db.session() as s:
            loaded = s.get(ReviewItem, item_id)
            assert loaded is not None and loaded.status == "escalated"
            gate.wait()
            return record_decision(s, item_id=item_id, reviewer_id=people[reviewer], decision=decision,
                                   actor=reviewer, second_review=True).id

    _, errors = _run_together([lambda: decide("bob", "violation"), lambda: decide("carol", "false_positive")])
    losers = [e for e in errors if e is not None]
    assert len(losers) == 1 and isinstance(losers[0], ReviewStateError), errors
    decisions = _decisions(db, item_id)
    assert [d.decision for d in decisions][0] == "escalate" and len(decisions) == 2
    assert len(_audited(db, "review.decision", item_id)) == 2
    assert verify_chain(db).ok


def _settled(db: Database, items: list[int], bulk_reviewer: int) -> tuple[set[int], set[int]]:
    """Check every item is consistent; return (decided by the bulk, claimed by someone)."""
    decided, claimed = set(), set()
    with db.session(readonly=True) as s:
        for item_id in items:
            item = s.get(ReviewItem, item_id)
            assert item is not None
            rows = list(s.scalars(select(ReviewDecision).where(ReviewDecision.item_id == item_id)))
            events = list(iter_events(s, action="review.decision", object_id=str(item_id)))
            assert len(rows) == len(events) <= 1
            if rows:
                assert item.status == "decided" and rows[0].reviewer_id == bulk_reviewer
                decided.add(item_id)
            claims = list(iter_events(s, action="review.claim", object_id=str(item_id)))
            assert len(claims) <= 1
            if claims:
                claimed.add(item_id)
            if item.status == "claimed":
                assert claims
    return decided, claimed


def test_a_bulk_decision_and_claims_in_reverse_order_never_deadlock(db: Database) -> None:
    people, items = _people_and_items(db, 3 * ITEMS)
    for round_items in (items[:ITEMS], items[ITEMS:2 * ITEMS], items[2 * ITEMS:]):

        def bulk(ids: list[int] = round_items) -> list[int]:
            with db.session() as s:
                return [d.id for d in record_decisions(s, item_ids=ids, reviewer_id=people["alice"],
                                                       decision="violation", actor="alice", now=T0)]

        def claims(ids: list[int] = round_items) -> list[bool]:
            won = []
            for item_id in reversed(ids):  # one short transaction per claim, as the review service does
                with db.session() as s:
                    won.append(claim_item(s, item_id, people["bob"], actor="bob", now=T0))
            return won

        (decided_ids, won), (bulk_error, claims_error) = _run_together([bulk, claims])
        assert claims_error is None, claims_error
        assert bulk_error is None or isinstance(bulk_error, ReviewStateError), bulk_error
        decided, claimed = _settled(db, round_items, people["alice"])
        # All or nothing: the bulk decided every item, or (an item was claimed first) none.
        assert decided == (set(round_items) if bulk_error is None else set())
        assert claimed == {i for i, w in zip(reversed(round_items), won, strict=True) if w}  # type: ignore[arg-type]
        if bulk_error is None:
            assert decided_ids is not None and len(decided_ids) == ITEMS
    assert verify_chain(db).ok


def test_two_bulk_decisions_in_opposite_orders_never_deadlock_and_one_wins(db: Database) -> None:
    people, items = _people_and_items(db, ITEMS)

    def bulk(reviewer: str, ids: list[int]) -> int:
        with db.session() as s:
            return len(record_decisions(s, item_ids=ids, reviewer_id=people[reviewer], decision="violation",
                                        actor=reviewer))

    results, errors = _run_together([lambda: bulk("alice", items), lambda: bulk("carol", items[::-1])])
    assert sum(e is None for e in errors) == 1, errors
    loser = next(e for e in errors if e is not None)
    assert isinstance(loser, ReviewStateError) and "already decided" in str(loser)
    winner = people["alice"] if errors[0] is None else people["carol"]
    assert results[0 if errors[0] is None else 1] == ITEMS
    assert _settled(db, items, winner)[0] == set(items)
    assert verify_chain(db).ok


def test_a_decision_is_judged_by_the_item_state_under_its_lock(db: Database) -> None:
    people, (claimed, decided) = _people_and_items(db, 2)
    with db.session() as s:
        assert claim_item(s, claimed, people["bob"], actor="bob", claim_minutes=10, now=T0)
        record_decision(s, item_id=decided, reviewer_id=people["alice"], decision="violation", actor="alice")
    refusals = [
        # Another reviewer holds a live claim.
        (dict(item_id=claimed, now=T0 + timedelta(minutes=5)), "claimed by another reviewer"),
        # A final decision is for escalated items, a correction for decided ones.
        (dict(item_id=decided, second_review=True), "already decided"),
        (dict(item_id=claimed, correction=True), "only a decided item can be corrected"),
    ]
    for kwargs, message in refusals:
        with pytest.raises(ReviewStateError, match=message), db.session() as s:
            record_decision(s, reviewer_id=people["alice"], decision="violation", actor="alice", **kwargs)
    with db.session() as s:  # the claim expired: the item is anyone's again
        record_decision(s, item_id=claimed, reviewer_id=people["alice"], decision="false_positive", actor="alice",
                        now=T0 + timedelta(minutes=11))
        record_decision(s, item_id=decided, reviewer_id=people["carol"], decision="false_positive", actor="carol",
                        note="second look", correction=True)
    assert [d.decision for d in _decisions(db, claimed)] == ["false_positive"]
    assert [d.decision for d in _decisions(db, decided)] == ["violation", "false_positive"]
    assert verify_chain(db).ok
