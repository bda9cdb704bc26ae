"""Concurrent writers on one SQLite file: nothing lost, no "database is locked", one claim winner."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db import Database, DbConfig
from db.audit import integrate_pending, iter_events, verify_chain
from db.chat import TurnRecord, create_conversation, get_conversation, store_turn
from db.review.claims import claim_item
from db.review.items import create_review_item
from db.tables import Exchange, ReviewItem
from db.users import create_user

THREADS = 16
EXCHANGES_PER_THREAD = 10


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(DbConfig(f"sqlite:///{tmp_path / 'console.db'}"))
    database.migrate()
    yield database
    database.dispose()


def _run_together(workers: list[Callable[[], object]]) -> tuple[list[object], list[BaseException]]:
    """Start every worker at the same moment; collect results and exceptions."""
    barrier = threading.Barrier(len(workers))
    results: list[object] = [None] * len(workers)
    errors: list[BaseException] = []

    def run(index: int, work: Callable[[], object]) -> None:
        barrier.wait()
        try:
            results[index] = work()
        except BaseException as exc:  # every failure must reach the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, w)) for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_sixteen_threads_writing_exchanges_lose_nothing_and_the_chain_verifies(db: Database) -> None:
    with db.session() as s:
        users = [create_user(s, f"user{i}", "hash", ["operator"]) for i in range(THREADS)]
        conversations = [create_conversation(s, user_id=u.id, actor=u.username) for u in users]
    pairs = [(u.id, u.username, c.id) for u, c in zip(users, conversations, strict=True)]

    def writer(user_id: int, username: str, conversation_id: int) -> list[int]:
        ids = []
        for n in range(EXCHANGES_PER_THREAD):
            with db.session() as s:
                # Read first, then write: the pattern that fails to upgrade a deferred SQLite transaction.
                assert get_conversation(s, conversation_id) is not None
                exchange = store_turn(
                    s,
                    TurnRecord(
                        conversation_id=conversation_id,
                        user_id=user_id,
                        prompt=f"prompt {n}",
                        response=f"answer {n}",
                        model_version="demo-v1",
                        actor=username,
                        request_id=f"{username}-{n}",
                    ),
                )
                ids.append(exchange.id)
        return ids

    results, errors = _run_together([lambda p=p: writer(*p) for p in pairs])

    assert errors == []
    written = sorted(i for ids in results for i in ids)  # type: ignore[union-attr]
    assert len(written) == THREADS * EXCHANGES_PER_THREAD == len(set(written))
    integrate_pending(db)  # PostgreSQL queues appends and chains them just after (a no-op on SQLite)
    with db.session(readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(Exchange)) == THREADS * EXCHANGES_PER_THREAD
        audited = [e.object_id for e in iter_events(s, action="chat.exchange")]
        seqs = [e.seq for e in iter_events(s)]
    assert sorted(int(i) for i in audited if i is not None) == written
    assert seqs == list(range(1, len(seqs) + 1))
    report = verify_chain(db)
    assert report.ok, report
    assert report.checked == 2 * THREADS + THREADS * EXCHANGES_PER_THREAD


def test_two_reviewers_racing_for_one_item_exactly_one_wins(db: Database) -> None:
    with db.session() as s:
        alice = create_user(s, "alice", "hash", ["reviewer"])
        bob = create_user(s, "bob", "hash", ["reviewer"])
        conversation = create_conversation(s, user_id=alice.id, actor="alice")
        items = []
        for n in range(8):
            exchange = store_turn(
                s,
                TurnRecord(
                    conversation_id=conversation.id,
                    user_id=alice.id,
                    prompt=f"p{n}",
                    response="r",
                    model_version="m",
                    actor="alice",
                ),
            )
            items.append(create_review_item(s, exchange_id=exchange.id, reason="flagged", actor="system").id)

    def claimer(item_id: int, reviewer_id: int, name: str) -> bool:
        with db.session() as s:
            return claim_item(s, item_id, reviewer_id, actor=name)

    for item_id in items:
        results, errors = _run_together(
            [lambda i=item_id: claimer(i, alice.id, "alice"), lambda i=item_id: claimer(i, bob.id, "bob")]
        )
        assert errors == []
        assert sorted(results) == [False, True]  # type: ignore[type-var]
        winner = alice.id if results[0] else bob.id
        with db.session(readonly=True) as s:
            item = s.get(ReviewItem, item_id)
            assert item is not None and item.status == "claimed" and item.claimed_by_id == winner
            claims = list(iter_events(s, action="review.claim", object_id=str(item_id)))
            assert [e.actor_id for e in claims] == [winner]
    assert verify_chain(db).ok
