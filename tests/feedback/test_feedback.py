"""User feedback (issue 25, part 2) over a real SQLite file: storage, audit, ownership, bad input, thumbs-down to
review by policy, erasure, and the per-version rates the Latency page, the watch window and canaries read."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from console.services import feedback as feedback_svc
from console.services import retention
from console.services.errors import AccessDenied, InvalidInput, NotFound
from db import audit as audit_q
from db import chat as chat_q
from db import feedback as feedback_q
from db import safety as safety_q
from db.chat import TurnRecord
from db.tables import Feedback, ReviewItem
from engine.safety.policy import DEFAULT_POLICY_PATH, Policy, PolicyError


@pytest.fixture
def people(make_user):
    return {"olga": make_user("olga", "operator"), "otto": make_user("otto", "operator"),
            "rita": make_user("rita", "reviewer"), "ada": make_user("ada", "admin"), "abe": make_user("abe", "admin")}


def _exchange(ctx, owner, *, status: str = "ok", version: str = "demo-v1", created_at=None,
              synthetic: bool = False) -> int:
    with ctx.db.session() as s:
        conv = chat_q.create_conversation(s, user_id=owner.user_id, actor=owner.username)
        return chat_q.store_turn(s, TurnRecord(
            conversation_id=conv.id, user_id=owner.user_id, actor=owner.username, model_version=version,
            prompt="Where is my parcel?", response="" if status == "blocked" else "Refunds take 90 days.",
            status=status, created_at=created_at or ctx.now(), synthetic=synthetic,
            prompt_action="block" if status == "blocked" else None)).id


def _rows(ctx) -> list[tuple[int, int, int, str | None, str]]:
    with ctx.db.session(readonly=True) as s:
        return [(f.exchange_id, f.user_id, f.rating, f.reason, f.model_version)
                for f in s.scalars(select(Feedback).order_by(Feedback.id))]


def _items(ctx, exchange_id: int) -> list[tuple[str, str, str | None]]:
    with ctx.db.session(readonly=True) as s:
        return [(i.reason, i.status, i.note) for i in
                s.scalars(select(ReviewItem).where(ReviewItem.exchange_id == exchange_id).order_by(ReviewItem.id))]


def _events(ctx, action: str) -> list:
    with ctx.db.session(readonly=True) as s:
        return list(audit_q.iter_events(s, action=action))


def _use_policy(ctx, to_review: bool) -> None:
    default = DEFAULT_POLICY_PATH.read_text()
    assert "thumbs_down_to_review = true" in default  # the shipped policy sends a reasoned thumbs-down to review
    text = default.replace("thumbs_down_to_review = true", f"thumbs_down_to_review = {str(to_review).lower()}")
    with ctx.db.session() as s:
        safety_q.store_policy_version(s, text, None, actor="system")


# --- storage and audit --------------------------------------------------------------------------------------------


def test_a_rating_is_stored_once_per_answer_and_person_changed_in_place_and_every_change_audited(ctx, people, clock):
    ex = _exchange(ctx, people["olga"], version="demo-v2")
    first = feedback_svc.give_feedback(ctx, people["olga"], ex, 1)
    assert first.changed and first.feedback.rating == 1 and first.review_item_id is None
    clock.advance(minutes=5)
    again = feedback_svc.give_feedback(ctx, people["olga"], ex, 1)
    assert not again.changed  # the same rating again: nothing stored, nothing audited
    changed = feedback_svc.give_feedback(ctx, people["olga"], ex, -1)
    assert changed.changed and changed.feedback.updated_at > first.feedback.updated_at
    assert _rows(ctx) == [(ex, people["olga"].user_id, -1, None, "demo-v2")]  # the exchange's version
    (given,) = _events(ctx, "feedback.given")
    (change,) = _events(ctx, "feedback.changed")
    assert given.details == {"exchange_id": ex, "rating": 1, "model_version": "demo-v2", "reason_chars": 0}
    assert (change.details["rating"], change.details["previous_rating"], change.actor) == (-1, 1, "olga")
    assert feedback_svc.clear_feedback(ctx, people["olga"], ex) is True
    assert feedback_svc.clear_feedback(ctx, people["olga"], ex) is False
    assert _rows(ctx) == []
    (cleared,) = _events(ctx, "feedback.cleared")
    assert cleared.details["previous_rating"] == -1
    assert audit_q.verify_chain(ctx.db).ok


def test_my_feedback_reads_back_the_users_own_ratings_after_navigation(ctx, people):
    a, b = _exchange(ctx, people["olga"]), _exchange(ctx, people["olga"])
    feedback_svc.give_feedback(ctx, people["olga"], a, -1, "Wrong refund period")
    got = feedback_svc.my_feedback(ctx, people["olga"], [a, b])
    assert list(got) == [a] and (got[a].rating, got[a].reason) == (-1, "Wrong refund period")
    assert feedback_svc.my_feedback(ctx, people["otto"], [a, b]) == {}


def test_the_database_refuses_a_second_row_for_one_answer_and_person_and_a_rating_other_than_plus_minus_one(ctx, people):
    from sqlalchemy.exc import IntegrityError

    ex = _exchange(ctx, people["olga"])
    feedback_svc.give_feedback(ctx, people["olga"], ex, 1)
    for rating in (1, 2):
        with pytest.raises(IntegrityError), ctx.db.session() as s:
            s.add(Feedback(exchange_id=ex, user_id=people["olga"].user_id if rating == 1 else people["otto"].user_id,
                           rating=rating, model_version="demo-v1", created_at=ctx.now(), updated_at=ctx.now()))
            s.flush()


# --- who may rate what ------------------------------------------------------------------------------------------


def test_nobody_rates_someone_elses_answer_or_one_that_does_not_exist(ctx, people):
    ex = _exchange(ctx, people["olga"])
    for exchange_id in (ex, 999_999):
        with pytest.raises(NotFound, match="does not exist or is not yours"):
            feedback_svc.give_feedback(ctx, people["otto"], exchange_id, -1, "not mine")
    with pytest.raises(NotFound):
        feedback_svc.clear_feedback(ctx, people["otto"], ex)
    assert _rows(ctx) == [] and _items(ctx, ex) == []


@pytest.mark.parametrize("role", ["reviewer", "admin", "analyst"])
def test_roles_that_do_not_chat_cannot_rate(ctx, people, make_user, role):
    ex = _exchange(ctx, people["olga"])
    user = make_user(f"x-{role}", role)
    with pytest.raises(AccessDenied):
        feedback_svc.give_feedback(ctx, user, ex, 1)
    assert _rows(ctx) == []


@pytest.mark.parametrize("status", ["blocked", "error"])
def test_an_exchange_without_an_answer_cannot_be_rated(ctx, people, status):
    ex = _exchange(ctx, people["olga"], status=status)
    with pytest.raises(InvalidInput, match=f"no answer to rate \\(it is {status}\\).*Send to review"):
        feedback_svc.give_feedback(ctx, people["olga"], ex, -1, "bad")
    assert _rows(ctx) == []


def test_a_stopped_partial_answer_can_be_rated(ctx, people):
    ex = _exchange(ctx, people["olga"], status="aborted")
    assert feedback_svc.give_feedback(ctx, people["olga"], ex, -1).feedback.rating == -1


# --- bad input ----------------------------------------------------------------------------------------------------


BAD_RATINGS = [0, 2, -2, True, "1", 1.0, None]


@pytest.mark.parametrize("rating", BAD_RATINGS, ids=[repr(r) for r in BAD_RATINGS])
def test_a_rating_other_than_one_or_minus_one_is_refused_naming_what_is_allowed(ctx, people, rating):
    ex = _exchange(ctx, people["olga"])
    with pytest.raises(InvalidInput, match=r"The rating must be 1 \(thumbs up\) or -1 \(thumbs down\)"):
        feedback_svc.give_feedback(ctx, people["olga"], ex, rating)
    assert _rows(ctx) == []


def test_a_reason_over_the_limit_is_refused_with_the_limit_and_nothing_is_stored(ctx, people):
    ex = _exchange(ctx, people["olga"])
    too_long = "x" * (feedback_svc.MAX_REASON_CHARS + 1)
    with pytest.raises(InvalidInput, match="The reason has 1,001 characters; the limit is 1,000."):
        feedback_svc.give_feedback(ctx, people["olga"], ex, -1, too_long)
    assert _rows(ctx) == [] and _events(ctx, "feedback.given") == []
    # Exactly at the limit it is taken.
    assert feedback_svc.give_feedback(ctx, people["olga"], ex, -1, "y" * 1000).feedback.reason == "y" * 1000


def test_control_characters_and_nuls_are_cut_from_a_reason_and_a_blank_one_is_no_reason(ctx, people):
    ex = _exchange(ctx, people["olga"])
    done = feedback_svc.give_feedback(ctx, people["olga"], ex, -1, "\x07Wrong\x00 shop\x1b[31m\nreally\x9b")
    assert done.feedback.reason == "Wrong shop[31m\nreally"
    assert feedback_svc.give_feedback(ctx, people["olga"], ex, -1, " \u200b\x01 ").feedback.reason is None


def test_personal_data_in_a_reason_is_cut_before_it_is_stored(ctx, people):
    ex = _exchange(ctx, people["olga"])
    done = feedback_svc.give_feedback(ctx, people["olga"], ex, -1, "Mail me at olga@example.com about it")
    assert done.feedback.reason == "Mail me at <EMAIL_ADDRESS> about it"
    assert "olga@example.com" not in str([e.details for e in _events(ctx, "feedback.given")])


# --- thumbs down to review --------------------------------------------------------------------------------------


def test_a_thumbs_down_with_a_reason_opens_a_feedback_item_with_the_reason_by_default(ctx, people):
    ex = _exchange(ctx, people["olga"])
    feedback_svc.give_feedback(ctx, people["olga"], ex, -1)  # no reason: no item
    assert _items(ctx, ex) == []
    done = feedback_svc.give_feedback(ctx, people["olga"], ex, -1, "It promises a refund we never give")
    assert done.review_item_id is not None
    assert _items(ctx, ex) == [("feedback", "open", "Thumbs down: It promises a refund we never give")]
    # A second reason goes to the same undecided item as a note.
    again = feedback_svc.give_feedback(ctx, people["olga"], ex, -1, "And the wrong shop")
    assert again.review_item_id == done.review_item_id
    assert _items(ctx, ex)[0][2].endswith("\n\nThumbs down: And the wrong shop")
    from console.services import review

    view = review.item_view(ctx, people["rita"], done.review_item_id)
    assert view.reason == "feedback" and "promises a refund" in (view.operator_note or "")


def test_a_thumbs_up_with_a_reason_opens_no_item(ctx, people):
    ex = _exchange(ctx, people["olga"])
    assert feedback_svc.give_feedback(ctx, people["olga"], ex, 1, "Clear and right").review_item_id is None
    assert _items(ctx, ex) == []


def test_the_policy_can_keep_thumbs_down_out_of_the_review_queue(ctx, people):
    _use_policy(ctx, False)
    ex = _exchange(ctx, people["olga"])
    assert feedback_svc.give_feedback(ctx, people["olga"], ex, -1, "Wrong").review_item_id is None
    assert _items(ctx, ex) == [] and _rows(ctx)[0][3] == "Wrong"
    _use_policy(ctx, True)
    assert feedback_svc.give_feedback(ctx, people["olga"], ex, -1, "Still wrong").review_item_id is not None


@pytest.mark.parametrize("toml,message", [
    ("[feedback]\nthumbs_down_to_review = 1\n", "feedback.thumbs_down_to_review: must be true or false"),
    ("[feedback]\nsend = true\n", "feedback.send: unknown key"),
    ("feedback = 3\n", "feedback: must be a table"),
])
def test_a_bad_feedback_table_in_the_policy_is_refused_naming_the_key(toml, message):
    base = 'version = "t"\n'
    with pytest.raises(PolicyError, match=message):
        Policy.from_toml(base + toml)
    assert Policy.from_toml(base).feedback_to_review is True  # the default


# --- erasure ----------------------------------------------------------------------------------------------------


def test_erasing_a_persons_content_blanks_their_feedback_reasons_and_keeps_the_ratings(ctx, people, clock):
    ex = _exchange(ctx, people["olga"])
    other = _exchange(ctx, people["otto"])
    feedback_svc.give_feedback(ctx, people["olga"], ex, -1, "My name is in it")
    feedback_svc.give_feedback(ctx, people["otto"], other, -1, "Otto's reason")
    asked = retention.request_erasure(ctx, people["ada"], people["olga"].user_id, "Asked by the person in writing",
                                      legal_basis="GDPR art. 17 request 42")
    retention.decide_erasure(ctx, people["abe"], asked.id, True)
    rows = {r[0]: r for r in _rows(ctx)}
    assert rows[ex][2:4] == (-1, None) and rows[other][3] == "Otto's reason"
    assert audit_q.verify_chain(ctx.db).ok


# --- rates ------------------------------------------------------------------------------------------------------


def test_per_version_rates_count_the_answers_of_the_window_as_rated(ctx, people, clock):
    t0 = ctx.now()
    v1 = [_exchange(ctx, people["olga"], version="v1", created_at=t0 - timedelta(minutes=i)) for i in range(5)]
    v2 = [_exchange(ctx, people["olga"], version="v2", created_at=t0 - timedelta(minutes=i)) for i in range(4)]
    old = _exchange(ctx, people["olga"], version="v1", created_at=t0 - timedelta(days=3))
    _exchange(ctx, people["olga"], version="v1", created_at=t0, synthetic=True)
    for ex in v1[:3]:
        feedback_svc.give_feedback(ctx, people["olga"], ex, 1)
    feedback_svc.give_feedback(ctx, people["olga"], v1[3], -1)
    feedback_svc.give_feedback(ctx, people["olga"], v2[0], -1)
    feedback_svc.give_feedback(ctx, people["olga"], old, -1)  # outside the window
    rates = feedback_svc.feedback_rates(ctx, people["ada"], since=t0 - timedelta(hours=1),
                                        until=t0 + timedelta(minutes=1))
    by = {r.model_version: r for r in rates}
    assert (by["v1"].up, by["v1"].down, by["v1"].rated, by["v1"].answers) == (3, 1, 4, 5)
    assert (by["v1"].up_share, by["v1"].down_share) == (0.75, 0.25)
    assert (by["v2"].up, by["v2"].down, by["v2"].answers, by["v2"].down_share) == (0, 1, 4, 1.0)
    rows = feedback_svc.rate_rows(rates, ("v2",))
    assert rows == [{"Model version": "v2", "Answers": 4, "Rated": 1, "Thumbs up (% of rated)": 0.0,
                     "Thumbs down (% of rated)": 100.0}]
    with pytest.raises(InvalidInput, match="end must be after its start"):
        feedback_svc.feedback_rates(ctx, people["ada"], since=t0, until=t0)
    with pytest.raises(AccessDenied):
        feedback_svc.feedback_rates(ctx, people["rita"], since=t0 - timedelta(hours=1), until=t0)


def test_feedback_counts_for_one_version_and_no_ratings(ctx, people):
    _exchange(ctx, people["olga"], version="v1")
    with ctx.db.session(readonly=True) as s:
        counts = feedback_q.feedback_counts(s, version="v1")
    assert counts["v1"] == feedback_q.FeedbackCounts(0, 0, 1) and counts["v1"].down_share is None


def test_ratings_and_counts_on_postgresql(pg_db):
    """The same queries on PostgreSQL (the database replicas share): one row per answer and person, the counts."""
    from sqlalchemy.exc import IntegrityError

    from db import users as users_q
    from db.types import utcnow

    now = utcnow()
    with pg_db.session() as s:
        user = users_q.create_user(s, "pgolga", "x", ("operator",), actor="system")
        conv = chat_q.create_conversation(s, user_id=user.id, actor="pgolga")
        exchanges = [chat_q.store_turn(s, TurnRecord(conversation_id=conv.id, user_id=user.id, actor="pgolga",
                                                     model_version="v-pg", prompt="p", response="r",
                                                     created_at=now)) for _ in range(3)]
        for ex, rating in zip(exchanges, (1, -1), strict=False):
            feedback_q.set_feedback(s, exchange=ex, user_id=user.id, actor="pgolga", rating=rating, reason="why",
                                    now=now)
        _, action = feedback_q.set_feedback(s, exchange=exchanges[0], user_id=user.id, actor="pgolga", rating=-1,
                                            reason=None, now=now)
        assert action == "feedback.changed"
        user_id, first = user.id, exchanges[0].id
    with pg_db.session(readonly=True) as s:
        assert feedback_q.feedback_counts(s, version="v-pg")["v-pg"] == feedback_q.FeedbackCounts(0, 2, 3)
    with pytest.raises(IntegrityError), pg_db.session() as s:
        s.add(Feedback(exchange_id=first, user_id=user_id, rating=1, model_version="v-pg", created_at=now,
                       updated_at=now))
        s.flush()
    assert audit_q.verify_chain(pg_db).ok
