"""The review queue's services over a real SQLite file: filters, claims, decisions, reveals, samples, escalations."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from console.services import chat as chat_svc
from console.services import review
from console.services.errors import AccessDenied, InvalidInput, SeparationOfDuties
from db import audit as audit_q
from db import chat as chat_q
from db.chat import TurnRecord
from db.review import decisions as decisions_q
from db.review import items as items_q
from db.review import samples as samples_q
from db.tables import AppendOnlyError, ReviewDecision, ReviewItem
from tests.review_fixtures import flag


@pytest.fixture
def people(make_user):
    return {
        "op": make_user("olga", "operator"),
        "alice": make_user("alice", "reviewer"),
        "bob": make_user("bob", "reviewer"),
        "admin": make_user("ada", "admin"),
    }


def _events(ctx, action: str) -> list:
    with ctx.db.session(readonly=True) as s:
        return list(audit_q.iter_events(s, action=action))


# --- queue, filters, counters ---------------------------------------------------------------------------------


def test_the_queue_orders_by_severity_then_age_and_counts_overdue_and_the_oldest(ctx, people, clock):
    t0 = clock.now
    low_old = flag(ctx, people["op"], severity=1, created_at=t0 - timedelta(days=5))
    high_new = flag(ctx, people["op"], severity=3, created_at=t0 - timedelta(hours=1))
    high_old = flag(ctx, people["op"], severity=3, created_at=t0 - timedelta(hours=6))
    page = review.list_queue(ctx, people["alice"])
    assert [r.item_id for r in page.rows] == [high_old, high_new, low_old]
    # Severity 3 is due in 4 hours, severity 1 in 72: the 6-hour-old and the 5-day-old items are overdue.
    assert {r.item_id: r.overdue for r in page.rows} == {high_old: True, high_new: False, low_old: True}
    assert page.summary.overdue == 2 and page.summary.counts["open"] == 3
    assert page.oldest_open_age == timedelta(days=5)


FILTER_CASES = [
    ("detector", {"detector": "detoxify"}, {"insult"}),
    ("label", {"label": "PERSON"}, {"person"}),
    ("score range", {"min_score": 0.5, "max_score": 0.8}, {"person"}),
    ("model version", {"model_version": "demo-v2"}, {"insult"}),
    ("date range", {"created_from_days": 3}, {"email", "insult"}),
    ("status", {"statuses": ("claimed",)}, {"email"}),
    ("assignee", {"assignee": "bob", "statuses": ("claimed",)}, {"email"}),
]


@pytest.mark.parametrize("name,spec,expected", FILTER_CASES, ids=[c[0] for c in FILTER_CASES])
def test_queue_filters_narrow_the_list(ctx, people, clock, name, spec, expected):
    now = clock.now
    ids = {
        "email": flag(ctx, people["op"], label="EMAIL_ADDRESS", score=0.95, created_at=now - timedelta(days=1)),
        "person": flag(ctx, people["op"], label="PERSON", score=0.6, created_at=now - timedelta(days=10)),
        "insult": flag(ctx, people["op"], detector="detoxify", label="insult", score=0.9, model_version="demo-v2",
                       created_at=now - timedelta(days=2)),
    }
    review.claim(ctx, people["bob"], ids["email"])
    spec = dict(spec)
    if "created_from_days" in spec:
        spec["created_from"] = now - timedelta(days=spec.pop("created_from_days"))
    if "assignee" in spec:
        spec["assignee_id"] = review.user_id_of(ctx, people["alice"], spec.pop("assignee"))
    page = review.list_queue(ctx, people["alice"], review.QueueFilter(**spec))
    by_id = {v: k for k, v in ids.items()}
    assert {by_id[r.item_id] for r in page.rows} == expected


# --- claims ---------------------------------------------------------------------------------------------------


def test_two_reviewers_racing_for_one_item_exactly_one_gets_it(ctx, people):
    item = flag(ctx, people["op"])
    barrier = threading.Barrier(2)
    results: dict[str, object] = {}

    def grab(name: str) -> None:
        barrier.wait()
        try:
            results[name] = review.claim(ctx, people[name], item)
        except review.ClaimLost as exc:
            results[name] = exc

    threads = [threading.Thread(target=grab, args=(n,)) for n in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n, r in results.items() if r == item]
    assert len(winners) == 1
    loser = ({"alice", "bob"} - set(winners)).pop()
    assert isinstance(results[loser], review.ClaimLost)
    assert len(_events(ctx, "review.claim")) == 1


def test_a_claimed_item_is_not_offered_to_others_until_the_claim_expires(ctx, people, clock):
    item = flag(ctx, people["op"])
    assert review.claim_next(ctx, people["alice"]) == item
    assert review.list_queue(ctx, people["alice"]).mine == item
    assert review.claim_next(ctx, people["bob"]) is None
    clock.advance(minutes=review.CLAIM_MINUTES - 1)
    assert review.claim_next(ctx, people["bob"]) is None
    clock.advance(minutes=2)
    assert review.list_queue(ctx, people["alice"]).mine is None
    assert review.claim_next(ctx, people["bob"]) == item
    with pytest.raises(review.ClaimLost):
        review.decide(ctx, people["alice"], item, "false_positive")


def test_a_reviewer_never_sees_or_decides_their_own_conversation(ctx, make_user, people):
    both = make_user("rhea", "operator", "reviewer")
    own = flag(ctx, both)
    other = flag(ctx, people["op"])
    assert [r.item_id for r in review.list_queue(ctx, both).rows] == [other]
    assert review.claim_next(ctx, both) == other
    for call in (lambda: review.decide(ctx, both, own, "false_positive"), lambda: review.claim(ctx, both, own),
                 lambda: review.reveal_raw(ctx, both, own, "prompt", "checking")):
        with pytest.raises(SeparationOfDuties):
            call()
    assert [e.details["reason"] for e in _events(ctx, "access.denied")] == ["separation of duties"] * 3


SERVICES = [
    ("list_queue", lambda ctx, u: review.list_queue(ctx, u)),
    ("claim_next", lambda ctx, u: review.claim_next(ctx, u)),
    ("decide", lambda ctx, u: review.decide(ctx, u, 1, "false_positive")),
    ("reveal_raw", lambda ctx, u: review.reveal_raw(ctx, u, 1, "prompt", "why")),
    ("quality_report", lambda ctx, u: review.quality_report(ctx, u)),
]


@pytest.mark.parametrize("name,call", SERVICES, ids=[s[0] for s in SERVICES])
def test_an_operator_calling_review_services_is_refused(ctx, people, name, call):
    flag(ctx, people["admin"])
    with pytest.raises(AccessDenied, match="do not allow"):
        call(ctx, people["op"])


def test_a_reviewer_cannot_decide_escalations(ctx, people):
    with pytest.raises(AccessDenied):
        review.list_escalations(ctx, people["alice"])


# --- decisions ------------------------------------------------------------------------------------------------

INVALID = [
    ("violation without category", "violation", None, None, "category"),
    ("escalation without note", "escalate", None, "  ", "note is required"),
    ("unknown decision", "maybe", None, None, "Choose a decision"),
]


@pytest.mark.parametrize("name,decision,category,note,message", INVALID, ids=[c[0] for c in INVALID])
def test_an_incomplete_decision_is_refused_and_nothing_is_stored(ctx, people, name, decision, category, note,
                                                                  message):
    item = flag(ctx, people["op"])
    with pytest.raises(InvalidInput, match=message):
        review.decide(ctx, people["alice"], item, decision, category=category, note=note)
    assert _events(ctx, "review.decision") == []


def test_decisions_are_immutable_and_a_correction_is_a_new_decision_that_refers_to_the_old(ctx, people):
    item = flag(ctx, people["op"])
    first = review.decide(ctx, people["alice"], item, "violation", category="pii_leak", share=0)
    with pytest.raises(review.ClaimLost, match="already decided"):
        review.decide(ctx, people["bob"], item, "false_positive")
    with pytest.raises(InvalidInput, match="note is required"):
        review.correct(ctx, people["bob"], item, "false_positive")
    fix = review.correct(ctx, people["bob"], item, "false_positive", note="test address, not a person's")
    with ctx.db.session() as s:
        rows = decisions_q.list_decisions(s, item)
        assert [(d.id, d.decision, d.supersedes_id) for d in rows] == [
            (first.decision_id, "violation", None), (fix, "false_positive", first.decision_id)]
        assert decisions_q.effective_decision(s, item).id == fix
    with pytest.raises(AppendOnlyError), ctx.db.session() as s:
        s.get(ReviewDecision, first.decision_id).decision = "false_positive"
    events = _events(ctx, "review.decision")
    assert [(e.details["decision"], e.details["correction"]) for e in events] == [
        ("violation", False), ("false_positive", True)]


def test_a_bulk_decision_decides_every_selected_item_with_one_audit_event_each(ctx, people):
    items = [flag(ctx, people["op"], label="PERSON", score=0.55) for _ in range(3)]
    keep = flag(ctx, people["op"])
    results = review.decide_bulk(ctx, people["alice"], items, "false_positive", share=0)
    assert [r.item_id for r in results] == items
    assert [e.details["exchange_id"] is not None for e in _events(ctx, "review.decision")] == [True] * 3
    assert [r.item_id for r in review.list_queue(ctx, people["alice"]).rows] == [keep]


def test_a_bulk_decision_is_all_or_nothing_when_one_item_is_held_by_someone_else(ctx, people):
    items = [flag(ctx, people["op"]) for _ in range(3)]
    review.claim(ctx, people["bob"], items[1])
    with pytest.raises(review.ClaimLost):
        review.decide_bulk(ctx, people["alice"], items, "false_positive", share=0)
    assert _events(ctx, "review.decision") == []
    assert review.list_queue(ctx, people["alice"]).summary.counts["open"] == 2


# --- reveal ---------------------------------------------------------------------------------------------------


def test_raw_text_is_revealed_only_with_a_reason_and_each_reveal_is_audited(ctx, people):
    item = flag(ctx, people["op"], raw_prompt="mail me at ada@example.com")
    view = review.item_view(ctx, people["alice"], item)
    assert view.prompt == "mail me at <EMAIL_ADDRESS>" and view.raw_kept == ("prompt",)
    assert "ada@example.com" not in repr(view)
    with pytest.raises(InvalidInput, match="reason"):
        review.reveal_raw(ctx, people["alice"], item, "prompt", "   ")
    assert _events(ctx, "safety.raw_reveal") == []
    assert review.reveal_raw(ctx, people["alice"], item, "prompt", "check the address is real") == (
        "mail me at ada@example.com")
    (view_event,) = _events(ctx, "safety.raw_reveal")
    (reason_event,) = _events(ctx, "review.reveal_reason")
    assert view_event.actor == reason_event.actor == "alice"
    assert reason_event.details["reason"] == "check the address is real"
    assert "ada@example.com" not in str(view_event.details) + str(reason_event.details)


def _answered(ctx, owner) -> int:
    """An answered exchange of ``owner``'s that nothing put in the queue (stored as the chat flow stores one)."""
    with ctx.db.session() as s:
        conv = chat_q.create_conversation(s, user_id=owner.user_id, actor=owner.username)
        return chat_q.store_turn(s, TurnRecord(conversation_id=conv.id, user_id=owner.user_id, actor=owner.username,
                                               model_version="demo-v1", prompt="Where is my parcel?",
                                               response="Refunds take 90 days.")).id


def _items_of(ctx, exchange_id: int) -> list[tuple[str, str, str | None]]:
    with ctx.db.session(readonly=True) as s:
        return [(i.reason, i.status, i.note) for i in
                s.scalars(select(ReviewItem).where(ReviewItem.exchange_id == exchange_id).order_by(ReviewItem.id))]


def test_the_operators_note_reaches_the_reviewer_and_the_admin_who_decides_the_escalation(ctx, people):
    manual = chat_svc.send_to_review(ctx, people["op"], _answered(ctx, people["op"]),
                                     "The answer promises a refund we never give.")
    view = review.item_view(ctx, people["alice"], manual)
    assert view.reason == "manual" and view.operator_note == "The answer promises a refund we never give."
    assert review.item_view(ctx, people["alice"], flag(ctx, people["op"])).operator_note is None  # detectors: none
    review.decide(ctx, people["alice"], manual, "escalate", note="policy question for the admins")
    escalated = review.escalation_view(ctx, people["admin"], manual)
    assert escalated.operator_note == "The answer promises a refund we never give."
    assert [d.note for d in escalated.decisions] == ["policy question for the admins"]


def test_sending_a_message_to_review_twice_adds_the_note_to_its_one_open_item(ctx, people):
    exchange_id = _answered(ctx, people["op"])
    first = chat_svc.send_to_review(ctx, people["op"], exchange_id, "The refund period is wrong.")
    again = chat_svc.send_to_review(ctx, people["op"], exchange_id, "And it names the wrong shop.")
    assert again == first
    assert _items_of(ctx, exchange_id) == [
        ("manual", "open", "The refund period is wrong.\n\nAnd it names the wrong shop.")]
    (added,) = _events(ctx, "review.note")
    assert (added.actor, added.object_id, added.details["exchange_id"]) == ("olga", str(first), exchange_id)
    assert len(_events(ctx, "review.item")) == 1
    # Claimed or escalated, it still waits for a decision: the note goes to it. Decided, a new item opens.
    review.claim(ctx, people["alice"], first)
    assert chat_svc.send_to_review(ctx, people["op"], exchange_id, "Claimed: still this one.") == first
    review.decide(ctx, people["alice"], first, "escalate", note="for the admins")
    assert chat_svc.send_to_review(ctx, people["op"], exchange_id, "Escalated: still this one.") == first
    assert review.escalation_view(ctx, people["admin"], first).operator_note.endswith("Escalated: still this one.")
    review.decide_escalation(ctx, people["admin"], first, "violation", category="wrong_answer")
    later = chat_svc.send_to_review(ctx, people["op"], exchange_id, "It happened again after the fix.")
    assert later != first
    assert [(r, st) for r, st, _ in _items_of(ctx, exchange_id)] == [("manual", "decided"), ("manual", "open")]
    assert audit_q.verify_chain(ctx.db).ok


def test_a_message_the_policy_flagged_takes_the_operators_note_on_its_flagged_item(ctx, people):
    flagged = flag(ctx, people["op"])
    exchange_id = review.item_view(ctx, people["alice"], flagged).exchange_id
    assert chat_svc.send_to_review(ctx, people["op"], exchange_id, "The answer is wrong too.") == flagged
    assert _items_of(ctx, exchange_id) == [("flagged", "open", "The answer is wrong too.")]


def test_two_sessions_sending_one_message_to_review_at_once_make_one_item_with_both_notes(ctx, people):
    exchange_id = _answered(ctx, people["op"])
    start = threading.Barrier(2)
    results: list[int] = []
    errors: list[BaseException] = []

    def send(note: str) -> None:
        start.wait()
        try:
            results.append(chat_svc.send_to_review(ctx, people["op"], exchange_id, note))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(f"note {n}",)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(results)) == 1
    [(reason, status, note)] = _items_of(ctx, exchange_id)
    assert (reason, status) == ("manual", "open") and sorted(note.split("\n\n")) == ["note 1", "note 2"]


def test_the_database_refuses_a_second_open_item_for_one_exchange(ctx, people):
    exchange_id = _answered(ctx, people["op"])
    chat_svc.send_to_review(ctx, people["op"], exchange_id, "first")
    with pytest.raises(IntegrityError), ctx.db.session() as s:
        items_q.create_review_item(s, exchange_id=exchange_id, reason="manual", actor="olga")


def test_a_confirmed_violation_can_be_a_wrong_answer(ctx, people):
    item = chat_svc.send_to_review(ctx, people["op"], _answered(ctx, people["op"]), "Refunds take 14 days.")
    assert review.CATEGORIES["wrong_answer"] == "Wrong answer"
    review.decide(ctx, people["alice"], item, "violation", category="wrong_answer", share=0)
    with ctx.db.session(readonly=True) as s:
        assert [d.category for d in decisions_q.list_decisions(s, item)] == ["wrong_answer"]


# --- quality loop ---------------------------------------------------------------------------------------------


def test_a_sampled_decision_goes_blind_to_a_second_reviewer_but_not_to_the_first(ctx, people):
    item = flag(ctx, people["op"])
    result = review.decide(ctx, people["alice"], item, "violation", category="pii_leak", share=1.0)
    assert result.sampled
    assert review.next_second_review(ctx, people["alice"]) is None
    blind = review.next_second_review(ctx, people["bob"])
    assert blind is not None and blind.item_id == item and blind.decisions == ()
    review.decide_second_review(ctx, people["bob"], blind.sample_id, "false_positive")
    with pytest.raises(review.ClaimLost):
        review.decide_second_review(ctx, people["bob"], blind.sample_id, "violation", category="other")
    report = review.quality_report(ctx, people["alice"])
    assert report.pairs == 1 and report.open_samples == 0
    # The second opinion feeds the statistics; the decision in force stays the first reviewer's.
    assert [(p.label, p.confirmed, p.decided) for p in report.overall] == [("EMAIL_ADDRESS", 1, 1)]


def test_no_sample_is_drawn_when_the_share_is_zero(ctx, people):
    item = flag(ctx, people["op"])
    assert not review.decide(ctx, people["alice"], item, "false_positive", share=0).sampled
    assert review.next_second_review(ctx, people["bob"]) is None


def test_the_sample_draw_takes_about_the_configured_share_and_is_reproducible():
    drawn = [i for i in range(1, 5001) if samples_q.in_sample(i, 0.10)]
    assert 0.08 < len(drawn) / 5000 < 0.12
    assert drawn == [i for i in range(1, 5001) if samples_q.in_sample(i, 0.10)]


# --- escalations ----------------------------------------------------------------------------------------------


def test_an_escalated_item_goes_to_admins_who_decide_it_finally(ctx, people):
    item = flag(ctx, people["op"])
    review.decide(ctx, people["alice"], item, "escalate", note="looks like a threat, unsure")
    assert [r.item_id for r in review.list_escalations(ctx, people["admin"])] == [item]
    view = review.escalation_view(ctx, people["admin"], item)
    assert [(d.decision, d.note) for d in view.decisions] == [("escalate", "looks like a threat, unsure")]
    with pytest.raises(InvalidInput):
        review.decide_escalation(ctx, people["admin"], item, "escalate", note="again")
    final = review.decide_escalation(ctx, people["admin"], item, "violation", category="violence_or_threat")
    assert review.list_escalations(ctx, people["admin"]) == ()
    with ctx.db.session(readonly=True) as s:
        assert decisions_q.effective_decision(s, item).id == final
        assert items_q.get_review_item(s, item).status == "decided"


def test_the_admin_who_escalated_an_item_cannot_decide_it_but_another_admin_can(ctx, people, make_user):
    both = make_user("rhea", "reviewer", "admin")
    other_admin = people["admin"]
    item = flag(ctx, people["op"])
    review.decide(ctx, both, item, "escalate", note="I want a second pair of eyes")
    with pytest.raises(SeparationOfDuties, match="escalated"):
        review.decide_escalation(ctx, both, item, "false_positive")
    with ctx.db.session(readonly=True) as s:
        assert items_q.get_review_item(s, item).status == "escalated"
    [denied] = [e for e in _events(ctx, "access.denied") if e.actor == "rhea"]
    assert denied.details == {"action": "review.decide_escalation", "reason": "separation of duties"}
    final = review.decide_escalation(ctx, other_admin, item, "false_positive")
    with ctx.db.session(readonly=True) as s:
        assert decisions_q.effective_decision(s, item).id == final
        assert items_q.get_review_item(s, item).status == "decided"


def test_the_escalation_rule_is_in_the_one_duty_rule_registry():
    from console.services import access

    assert access.DUTY_RULES["review.decide_escalation"] is review.ESCALATION_RULE


def test_an_escalation_note_longer_than_2000_characters_is_refused(ctx, people):
    item = flag(ctx, people["op"])
    review.decide(ctx, people["alice"], item, "escalate", note="unsure")
    with pytest.raises(InvalidInput, match="2,001 characters; the limit is 2,000"):
        review.decide_escalation(ctx, people["admin"], item, "false_positive", note="n" * 2001)


def test_a_review_request_that_loses_the_race_on_postgresql_adds_its_note_to_the_winners_item(pg_db):
    """The loser's look finds no item (the winner has not committed), its write waits on the winner's (the exchange's
    row, then the partial unique index), its insert fails when the winner commits, and its note goes to the winner's
    item instead."""
    import time

    from db import users as users_q

    with pg_db.session() as s:
        user = users_q.create_user(s, "olga", None, ["operator"])
        conv = chat_q.create_conversation(s, user_id=user.id, actor="olga")
        exchange_id = chat_q.store_turn(s, TurnRecord(conversation_id=conv.id, user_id=user.id, actor="olga",
                                                      model_version="demo-v1", prompt="hi", response="hello")).id
    loser: list[tuple[int, bool]] = []

    def request(note: str) -> None:
        with pg_db.session() as s:
            item, created = items_q.request_review(s, exchange_id=exchange_id, note=note, actor="olga",
                                                   created_by_id=user.id)
            loser.append((item.id, created))

    with pg_db.session() as s:
        winner, created = items_q.request_review(s, exchange_id=exchange_id, note="first", actor="olga",
                                                 created_by_id=user.id)
        assert created
        thread = threading.Thread(target=request, args=("second",))
        thread.start()
        deadline = time.monotonic() + 60
        with pg_db.engine.connect() as watch:  # the loser waits for the winner's transaction
            while not watch.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                         "AND datname = current_database()")).scalar_one():
                assert time.monotonic() < deadline, "the second request never waited for the first"
                time.sleep(0.05)
    thread.join()
    assert loser == [(winner.id, False)]
    with pg_db.session(readonly=True) as s:
        items = s.scalars(select(ReviewItem).where(ReviewItem.exchange_id == exchange_id)).all()
        assert [(i.id, i.status, i.note) for i in items] == [(winner.id, "open", "first\n\nsecond")]
        assert [e.action for e in audit_q.iter_events(s) if e.object_type == "review_item"] == [
            "review.item", "review.note"]
