"""Query modules: users and logins, model versions, app state, safety records, the review queue."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from db import Database, DbConfig, ReadOnlySessionError
from db.audit import iter_events, verify_chain
from db.chat import (
    ExchangeTimings,
    TurnRecord,
    create_conversation,
    get_exchange,
    list_conversations,
    list_exchanges,
    store_turn,
)
from db.model_versions import get_model_version_by_name, list_model_versions, register_model_version
from db.review.claims import claim_item, release_item
from db.review.decisions import list_decisions, record_decision
from db.review.items import ReviewItemRecord, ReviewStateError, create_review_item
from db.review.queue import list_queue
from db.safety import (
    FindingRecord,
    RawTextRecord,
    add_findings,
    erase_raw_text,
    latest_policy_version,
    list_findings,
    raw_text_directions,
    reveal_raw_text,
    store_policy_version,
    store_raw_text,
)
from db.state import LIVE_MODEL_KEY, get_state, set_state
from db.tables import Exchange, Finding, RawText, ReviewItem
from db.users import (
    UnknownRoleError,
    create_user,
    get_user,
    get_user_by_email,
    get_user_by_username,
    list_users,
    record_failed_login,
    record_successful_login,
    set_disabled,
    set_password_hash,
    set_roles,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(DbConfig(f"sqlite:///{tmp_path / 'console.db'}"))
    database.migrate()
    yield database
    database.dispose()


def _actions(db: Database) -> list[str]:
    with db.session(readonly=True) as s:
        return [e.action for e in iter_events(s)]


def _exchange(db: Database, username: str = "ada") -> tuple[int, int]:
    with db.session() as s:
        user = get_user_by_username(s, username) or create_user(s, username, "hash", ["operator"])
        conversation = create_conversation(s, user_id=user.id, actor=username)
        exchange = store_turn(
            s,
            TurnRecord(
                conversation_id=conversation.id,
                user_id=user.id,
                actor=username,
                model_version="m",
                prompt="p",
                response="r",
            ),
        )
        return user.id, exchange.id


# ---- users ----


def test_a_created_user_is_found_by_username_email_and_id_with_roles(db: Database) -> None:
    with db.session() as s:
        user = create_user(
            s, "ada", "argon-hash", ["operator", "admin"], display_name="Ada", email="ada@example.com"
        )
    with db.session(readonly=True) as s:
        assert get_user(s, user.id) is not None
        by_name = get_user_by_username(s, "ada")
        assert by_name is not None and by_name.roles == {"operator", "admin"}
        assert get_user_by_email(s, "ada@example.com") is not None
        assert get_user_by_username(s, "nobody") is None
    with db.session(readonly=True) as s:
        (event,) = iter_events(s, action="user.create")
    assert event.details["roles"] == ["admin", "operator"]
    assert "argon-hash" not in str(event.details)


def test_usernames_and_emails_are_unique(db: Database) -> None:
    with db.session() as s:
        create_user(s, "ada", None, ["analyst"], email="a@example.com")
    with pytest.raises(IntegrityError), db.session() as s:
        create_user(s, "ada", None, ["analyst"])
    with pytest.raises(IntegrityError), db.session() as s:
        create_user(s, "bea", None, ["analyst"], email="a@example.com")


def test_an_unknown_role_is_refused(db: Database) -> None:
    with pytest.raises(UnknownRoleError), db.session() as s:
        create_user(s, "ada", None, ["superuser"])
    with db.session(readonly=True) as s:
        assert list_users(s) == []


def test_setting_roles_replaces_them_and_audits_before_and_after(db: Database) -> None:
    with db.session() as s:
        user = create_user(s, "ada", None, ["operator", "analyst"])
    with db.session() as s:
        set_roles(s, user.id, ["analyst", "reviewer"], actor="root")
    with db.session(readonly=True) as s:
        assert get_user(s, user.id).roles == {"analyst", "reviewer"}  # type: ignore[union-attr]
        (event,) = iter_events(s, action="user.roles")
    assert event.actor == "root"
    assert event.details["before"] == ["analyst", "operator"] and event.details["after"] == [
        "analyst",
        "reviewer",
    ]


def test_disabling_and_changing_a_password_are_audited(db: Database) -> None:
    with db.session() as s:
        user = create_user(s, "ada", "old", ["operator"])
    with db.session() as s:
        set_disabled(s, user.id, True, actor="root")
        set_password_hash(s, user.id, "new", actor="root")
    with db.session(readonly=True) as s:
        stored = get_user(s, user.id)
        assert stored is not None and stored.disabled and stored.password_hash == "new"
        assert list_users(s, include_disabled=False) == []
    assert _actions(db)[-2:] == ["user.disable", "user.password"]


def test_failed_logins_lock_the_account_at_the_threshold_and_a_login_resets(db: Database) -> None:
    with db.session() as s:
        user = create_user(s, "ada", "hash", ["operator"])
    outcomes = []
    for n in range(3):
        with db.session() as s:
            outcomes.append(
                record_failed_login(s, user.id, threshold=3, lock_minutes=15, now=T0 + timedelta(seconds=n))
            )
    assert outcomes[0] == (1, None) and outcomes[1] == (2, None)
    assert outcomes[2] == (3, T0 + timedelta(seconds=2, minutes=15))
    assert _actions(db).count("auth.locked") == 1
    with db.session() as s:
        record_successful_login(s, user.id, now=T0 + timedelta(hours=1))
    with db.session(readonly=True) as s:
        stored = get_user(s, user.id)
        assert stored is not None
        assert stored.failed_login_count == 0 and stored.locked_until is None
        assert stored.last_login_at == T0 + timedelta(hours=1)
    assert _actions(db)[-1] == "auth.login"


# ---- model versions, app state ----


def test_registered_model_versions_are_listed_and_found_by_name(db: Database) -> None:
    with db.session() as s:
        register_model_version(s, name="demo-v1", source="/models/demo", actor="root", dtype="float32")
        register_model_version(
            s, name="demo-v2", source="/models/demo2", actor="root", engine_args={"tensor_parallel_size": 2}
        )
    with db.session(readonly=True) as s:
        assert [v.name for v in list_model_versions(s)] == ["demo-v2", "demo-v1"]
        v2 = get_model_version_by_name(s, "demo-v2")
        assert v2 is not None and v2.engine_args == {"tensor_parallel_size": 2} and v2.status == "registered"
    with pytest.raises(IntegrityError), db.session() as s:
        register_model_version(s, name="demo-v1", source="/elsewhere", actor="root")
    assert _actions(db) == ["model.register", "model.register"]


def test_app_state_round_trips_json_and_audits_each_change(db: Database) -> None:
    with db.session() as s:
        assert get_state(s, LIVE_MODEL_KEY, "none") == "none"
        set_state(s, LIVE_MODEL_KEY, {"name": "demo-v1", "id": 1}, actor="root")
    with db.session() as s:
        set_state(s, LIVE_MODEL_KEY, {"name": "demo-v2", "id": 2}, actor="root")
    with db.session(readonly=True) as s:
        assert get_state(s, LIVE_MODEL_KEY) == {"name": "demo-v2", "id": 2}
        events = list(iter_events(s, action="state.set"))
    assert events[-1].details == {
        "key": "live_model",
        "before": {"name": "demo-v1", "id": 1},
        "after": {"name": "demo-v2", "id": 2},
    }


# ---- conversations ----


def test_conversations_list_most_recent_first_with_exchanges_in_order(db: Database) -> None:
    user_id, first_exchange = _exchange(db)
    with db.session() as s:
        newer = create_conversation(s, user_id=user_id, actor="ada", title="second")
        for n in range(3):
            store_turn(
                s,
                TurnRecord(
                    conversation_id=newer.id, user_id=user_id, actor="ada", model_version="m", prompt=f"p{n}"
                ),
            )
    with db.session(readonly=True) as s:
        assert [c.title for c in list_conversations(s, user_id)] == ["second", ""]
        assert [e.prompt for e in list_exchanges(s, newer.id)] == ["p0", "p1", "p2"]
        assert get_exchange(s, first_exchange) is not None


def test_an_exchange_with_an_unknown_status_is_refused(db: Database) -> None:
    user_id, _ = _exchange(db)
    with pytest.raises(ValueError, match="status"), db.session() as s:
        store_turn(
            s,
            TurnRecord(
                conversation_id=1, user_id=user_id, actor="ada", model_version="m", prompt="p", status="weird"
            ),
        )


def _flagged_turn(conversation_id: int, user_id: int, *, direction: str = "prompt") -> TurnRecord:
    return TurnRecord(
        conversation_id=conversation_id,
        user_id=user_id,
        actor="ada",
        model_version="demo-v1",
        prompt="mail me at <EMAIL_ADDRESS>",
        response="noted",
        request_id="req-7",
        sampling={"temperature": 0.0, "max_tokens": 8},
        timings=ExchangeTimings(
            prompt_tokens=12, output_tokens=8, queue_ms=0.5, ttft_ms=20.0, itl_ms=5.0, e2e_ms=55.0, tokens_per_s=145.5
        ),
        prompt_action="flag",
        output_action="allow",
        policy_version=3,
        findings=(
            FindingRecord(
                direction=direction, detector="presidio", label="EMAIL_ADDRESS", score=0.99, action="flag",
                start=11, end=26,
            ),
        ),
        raw_texts=(RawTextRecord("prompt", "mail me at ada@example.com"),),
        review=ReviewItemRecord(reason="flagged", direction="prompt", severity=2, due_at=T0 + timedelta(hours=24)),
    )


def test_a_turn_is_stored_whole_with_its_timings_findings_raw_text_review_item_and_events(db: Database) -> None:
    user_id, _ = _exchange(db)
    with db.session() as s:
        conversation = create_conversation(s, user_id=user_id, actor="ada")
        exchange_id = store_turn(s, _flagged_turn(conversation.id, user_id)).id
    with db.session(readonly=True) as s:
        exchange = get_exchange(s, exchange_id)
        assert exchange is not None
        assert (exchange.ttft_ms, exchange.e2e_ms, exchange.output_tokens) == (20.0, 55.0, 8)
        assert exchange.review_status == "pending" and exchange.policy_version == 3
        assert [(f.label, f.action) for f in list_findings(s, exchange_id)] == [("EMAIL_ADDRESS", "flag")]
        assert raw_text_directions(s, exchange_id) == ("prompt",)
        (item,) = list_queue(s)
        assert (item.exchange_id, item.reason, item.severity) == (exchange_id, "flagged", 2)
        assert item.due_at == T0 + timedelta(hours=24) and item.created_by_id is None
        (event,) = iter_events(s, action="chat.exchange", object_id=str(exchange_id))
    # The event's timing keys come from ExchangeTimings; the texts never reach the audit log.
    assert {k: event.details[k] for k in ("prompt_tokens", "queue_ms", "itl_ms", "tokens_per_s")} == {
        "prompt_tokens": 12, "queue_ms": 0.5, "itl_ms": 5.0, "tokens_per_s": 145.5,
    }
    assert "ada@example.com" not in str(event.details) and "EMAIL" not in str(event.details)
    assert _actions(db)[-3:] == ["chat.exchange", "safety.findings", "review.item"]
    assert verify_chain(db).ok


def test_a_turn_that_fails_part_way_leaves_no_rows_and_no_events(db: Database) -> None:
    user_id, _ = _exchange(db)
    with db.session() as s:
        conversation_id = create_conversation(s, user_id=user_id, actor="ada").id
    before = _actions(db)
    # A bad finding fails after the exchange and its audit event were already flushed.
    with pytest.raises(ValueError, match="direction"), db.session() as s:
        store_turn(s, _flagged_turn(conversation_id, user_id, direction="sideways"))
    with db.session(readonly=True) as s:
        assert [e.id for e in list_exchanges(s, conversation_id)] == []
        counts = {t.__tablename__: s.scalar(select(func.count()).select_from(t)) for t in (Finding, RawText, ReviewItem)}
        assert counts == {"findings": 0, "raw_texts": 0, "review_items": 0}
        assert s.scalar(select(func.count()).select_from(Exchange)) == 1  # the one _exchange stored
    assert _actions(db) == before
    assert verify_chain(db).ok


# ---- safety ----


def test_a_policy_version_is_stored_only_when_its_text_changes(db: Database) -> None:
    with db.session() as s:
        first = store_policy_version(s, "[pii]\naction='redact'\n", None, actor="root")
        same = store_policy_version(s, "[pii]\naction='redact'\n", None, actor="root")
        second = store_policy_version(s, "[pii]\naction='block'\n", None, actor="root")
    assert first.version == 1 and same.id == first.id and second.version == 2
    with db.session(readonly=True) as s:
        latest = latest_policy_version(s)
        assert latest is not None and latest.version == 2
    assert _actions(db).count("policy.version") == 2


def test_findings_are_stored_with_the_exchange_and_audited_without_text(db: Database) -> None:
    _, exchange_id = _exchange(db)
    findings = [
        FindingRecord(
            direction="prompt",
            detector="presidio",
            label="EMAIL_ADDRESS",
            score=0.99,
            action="redact",
            start=3,
            end=18,
        ),
        FindingRecord(direction="output", detector="detoxify", label="toxicity", score=0.7, action="flag"),
    ]
    with db.session() as s:
        add_findings(s, exchange_id, findings, actor="ada")
        assert add_findings(s, exchange_id, [], actor="ada") == []
    with db.session(readonly=True) as s:
        stored = list_findings(s, exchange_id)
        (event,) = iter_events(s, action="safety.findings")
    assert [(f.label, f.start, f.end) for f in stored] == [("EMAIL_ADDRESS", 3, 18), ("toxicity", None, None)]
    assert [f["label"] for f in event.details["findings"]] == ["EMAIL_ADDRESS", "toxicity"]


def test_raw_text_reveals_are_audited_and_erasure_removes_the_text(db: Database) -> None:
    _, exchange_id = _exchange(db)
    with db.session() as s:
        store_raw_text(s, exchange_id, "prompt", "my email is ada@example.com")
    with db.session() as s:
        assert reveal_raw_text(s, exchange_id, "prompt", actor="rev") == "my email is ada@example.com"
    with db.session() as s:
        assert erase_raw_text(s, exchange_id, actor="root", reason="data request") == 1
    with db.session() as s:
        assert reveal_raw_text(s, exchange_id, "prompt", actor="rev") is None
    with db.session(readonly=True) as s:
        reveals = list(iter_events(s, action="safety.raw_reveal"))
        assert [e.details["found"] for e in reveals] == [True, False]
        assert "ada@example.com" not in str([e.details for e in iter_events(s)])
    assert verify_chain(db).ok


# ---- review queue ----


def test_the_queue_orders_by_severity_then_age_and_pages(db: Database) -> None:
    ids = {}
    for name, severity in [("low-old", 1), ("high", 5), ("low-new", 1), ("mid", 3)]:
        _, exchange_id = _exchange(db)
        with db.session() as s:
            ids[name] = create_review_item(
                s, exchange_id=exchange_id, reason="flagged", severity=severity, actor="system"
            ).id
    order = [ids[n] for n in ["high", "mid", "low-old", "low-new"]]
    with db.session(readonly=True) as s:
        assert [i.id for i in list_queue(s)] == order
        assert [i.id for i in list_queue(s, limit=2, offset=1)] == order[1:3]
        assert [i.id for i in list_queue(s, min_severity=3)] == order[:2]
        exchange = get_exchange(s, list_queue(s)[0].exchange_id)
        assert exchange is not None and exchange.review_status == "pending"


def test_a_claim_is_exclusive_until_it_expires_or_is_released(db: Database) -> None:
    _, exchange_id = _exchange(db)
    with db.session() as s:
        alice = create_user(s, "alice", None, ["reviewer"])
        bob = create_user(s, "bob", None, ["reviewer"])
        item = create_review_item(s, exchange_id=exchange_id, reason="flagged", actor="system")
    with db.session() as s:
        assert claim_item(s, item.id, alice.id, actor="alice", claim_minutes=10, now=T0)
        assert not claim_item(s, item.id, bob.id, actor="bob", now=T0 + timedelta(minutes=5))
        assert claim_item(s, item.id, bob.id, actor="bob", now=T0 + timedelta(minutes=11))
        assert not release_item(s, item.id, alice.id, actor="alice")
        assert release_item(s, item.id, bob.id, actor="bob")
        assert claim_item(s, item.id, alice.id, actor="alice", now=T0 + timedelta(minutes=12))
    with db.session(readonly=True) as s:
        (claimed,) = list_queue(s, claimed_by_id=alice.id)
        assert claimed.status == "claimed" and claimed.claim_expires_at == T0 + timedelta(minutes=27)


def test_decisions_close_the_item_and_a_second_review_supersedes_without_editing(db: Database) -> None:
    _, exchange_id = _exchange(db)
    with db.session() as s:
        rev = create_user(s, "rev", None, ["reviewer"])
        lead = create_user(s, "lead", None, ["reviewer"])
        item = create_review_item(s, exchange_id=exchange_id, reason="blocked", actor="system")
    with db.session() as s:
        first = record_decision(s, item_id=item.id, reviewer_id=rev.id, decision="escalate", actor="rev")
    with db.session() as s:
        second = record_decision(
            s,
            item_id=item.id,
            reviewer_id=lead.id,
            decision="violation",
            category="pii",
            actor="lead",
            second_review=True,
        )
    with pytest.raises(ReviewStateError), db.session() as s:
        record_decision(s, item_id=item.id, reviewer_id=rev.id, decision="false_positive", actor="rev")
    with db.session(readonly=True) as s:
        decisions = list_decisions(s, item.id)
        assert [(d.decision, d.supersedes_id) for d in decisions] == [
            ("escalate", None),
            ("violation", first.id),
        ]
        assert decisions[1].id == second.id and decisions[1].second_review
        exchange = get_exchange(s, exchange_id)
        assert exchange is not None and exchange.review_status == "decided"
        assert list_queue(s, statuses=("decided",))[0].id == item.id
    assert _actions(db).count("review.decision") == 2


def test_a_read_only_session_refuses_to_write(db: Database) -> None:
    with pytest.raises(ReadOnlySessionError), db.session(readonly=True) as s:
        create_user(s, "ada", None, ["operator"])
    with db.session(readonly=True) as s:
        assert list_users(s) == []
