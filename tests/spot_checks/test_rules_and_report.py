"""Rules (who may change them, bad input, the audit) and the miss-rate report from known verdicts."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select

from console.services import review
from console.services import spot_checks as spot
from console.services.access import AccessDenied
from console.services.context import AppContext
from console.services.errors import InvalidInput, NotFound
from db.tables import AuditEvent, ReviewItem
from tests.review_fixtures import flag
from tests.spot_checks.support import many


@pytest.fixture
def people(make_user):
    return {"op": make_user("olga", "operator"), "alice": make_user("alice", "reviewer"),
            "bob": make_user("bob", "reviewer"), "admin": make_user("ada", "admin"),
            "analyst": make_user("ann", "analyst")}


def _events(ctx, action):
    with ctx.db.session(readonly=True) as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def test_admins_set_replace_and_remove_rules_audited_and_reviewers_only_see_them(ctx, people):
    admin, alice = people["admin"], people["alice"]
    spot.set_rule(ctx, admin, share_percent=2.5, daily_cap=20)
    spot.set_rule(ctx, admin, share_percent=5, daily_cap=10, family="pii")
    spot.set_rule(ctx, admin, share_percent=1, daily_cap=30)  # same scope as the first: replaces it
    assert spot.list_rules(ctx, alice) == (spot.Rule(0.01, 30), spot.Rule(0.05, 10, None, "pii"))
    changes = _events(ctx, spot.RULE_CHANGED)
    assert [(e.actor, e.details["before"], e.details["after"]) for e in changes] == [
        ("ada", None, {"share": 0.025, "daily_cap": 20, "model_version": None, "family": None}),
        ("ada", None, {"share": 0.05, "daily_cap": 10, "model_version": None, "family": "pii"}),
        ("ada", {"share": 0.025, "daily_cap": 20, "model_version": None, "family": None},
         {"share": 0.01, "daily_cap": 30, "model_version": None, "family": None}),
    ]
    removed = spot.remove_rule(ctx, admin, spot.Rule(0.05, 10, None, "pii").key)
    assert removed.family == "pii" and len(spot.list_rules(ctx, admin)) == 1
    assert _events(ctx, spot.RULE_CHANGED)[-1].details["after"] is None
    with pytest.raises(NotFound):
        spot.remove_rule(ctx, admin, "version=*;family=toxicity")
    for who in ("alice", "op", "analyst"):
        with pytest.raises(AccessDenied):
            spot.set_rule(ctx, people[who], share_percent=1, daily_cap=1)
        with pytest.raises(AccessDenied):
            spot.remove_rule(ctx, people[who], "version=*;family=*")
    for who in ("op", "analyst"):
        with pytest.raises(AccessDenied):
            spot.list_rules(ctx, people[who])
        with pytest.raises(AccessDenied):
            spot.report(ctx, people[who])


BAD_RULES = [
    ({"share_percent": 101, "daily_cap": 5}, "Share: a percentage above 0 and at most 100"),
    ({"share_percent": 0, "daily_cap": 5}, "Share: a percentage above 0 and at most 100"),
    ({"share_percent": -3, "daily_cap": 5}, "Share"),
    ({"share_percent": math.nan, "daily_cap": 5}, "Share"),
    ({"share_percent": math.inf, "daily_cap": 5}, "Share"),
    ({"share_percent": "5", "daily_cap": 5}, "Share"),
    ({"share_percent": True, "daily_cap": 5}, "Share"),
    ({"share_percent": 5, "daily_cap": -1}, "Daily cap: a whole number of items from 1 to 10,000"),
    ({"share_percent": 5, "daily_cap": 0}, "Daily cap"),
    ({"share_percent": 5, "daily_cap": 2.5}, "Daily cap"),
    ({"share_percent": 5, "daily_cap": 10_001}, "Daily cap"),
    ({"share_percent": 5, "daily_cap": 5, "model_version": "  "}, "Model version: choose a version"),
    ({"share_percent": 5, "daily_cap": 5, "model_version": "no-such-version"}, "Model version: 'no-such-version' is not"),
    ({"share_percent": 5, "daily_cap": 5, "family": "spam"}, "Label family: one of pii, toxicity, injection"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_RULES, ids=[m[:20] + str(i) for i, (_, m) in enumerate(BAD_RULES)])
def test_bad_rules_are_refused_naming_the_field_and_nothing_changes(ctx, people, kwargs, message):
    spot.set_rule(ctx, people["admin"], share_percent=1, daily_cap=20)
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(")):
        spot.set_rule(ctx, people["admin"], **kwargs)
    assert spot.list_rules(ctx, people["admin"]) == (spot.Rule(0.01, 20),)
    assert len(_events(ctx, spot.RULE_CHANGED)) == 1


def test_a_version_that_answered_is_accepted_without_being_registered(ctx, people):
    many(ctx, people["op"], 1, model_version="hf-tiny-v3")
    assert spot.set_rule(ctx, people["admin"], share_percent=1, daily_cap=5, model_version="hf-tiny-v3").model_version


def test_the_report_period_is_checked(ctx, people):
    for days in (0, 366, -1, 2.5, True):
        with pytest.raises(InvalidInput, match="Period: 1 to 365 days"):
            spot.report(ctx, people["alice"], days=days)


def _spot_items(ctx) -> list[int]:
    with ctx.db.session(readonly=True) as s:
        return list(s.scalars(select(ReviewItem.id).where(ReviewItem.reason == "spot_check").order_by(ReviewItem.id)))


def test_the_miss_rate_and_precision_from_known_verdicts(ctx, people, clock):
    ctx = AppContext(replace(ctx.settings, spot_check_min_decided=10), ctx.db, clock=clock)
    # 40 unflagged exchanges over the last 10 days, 20 of them drawn and decided.
    for day in range(10):
        many(ctx, people["op"], 4, created_at=clock.now - timedelta(days=day, hours=1))
    spot.set_rule(ctx, people["admin"], share_percent=100, daily_cap=20)
    for day in range(10):
        spot.draw(ctx, day=(clock.now - timedelta(days=day)).date())
    items = _spot_items(ctx)
    assert len(items) == 40
    items = items[:20]
    alice = people["alice"]
    # 2 PII leaks, 1 harassment, 1 wrong answer, 16 no violation.
    verdicts = [("violation", "pii_leak")] * 2 + [("violation", "harassment"), ("violation", "wrong_answer")] + \
        [("false_positive", None)] * 16
    for item_id, (decision, category) in zip(items, verdicts, strict=True):
        review.decide(ctx, alice, item_id, decision, category=category, share=0.0)
    # Flagged PII items: 3 decided, 2 confirmed.
    for decision in ("violation", "violation", "false_positive"):
        item = flag(ctx, people["op"], created_at=clock.now - timedelta(days=1))
        review.decide(ctx, alice, item, decision, category="pii_leak" if decision == "violation" else None, share=0.0)
    report = spot.report(ctx, people["admin"], days=30)
    fam = {f.family.name: f for f in report.families}
    assert report.decided == 20 and report.other_violations == 1
    pii = fam["pii"].miss
    assert (pii.checked, pii.missed, pii.enough) == (20, 2, True)
    assert pii.interval == pytest.approx((0.0279, 0.3010), abs=1e-4)  # Wilson, 2 of 20
    # 40 unflagged exchanges in 30 days (spot checks stay unflagged; the 3 flagged items do not count).
    assert report.unflagged_per_day == pytest.approx(40 / 30)
    assert pii.missed_per_day[0] == pytest.approx(0.1 * 40 / 30)
    assert (fam["pii"].flagged_confirmed, fam["pii"].flagged_decided) == (2, 3)
    assert fam["toxicity"].miss.missed == 1 and fam["toxicity"].precision is None
    assert fam["injection"].miss.missed == 0 and fam["injection"].miss.interval[1] == pytest.approx(0.1611, abs=1e-4)


def test_a_miss_rate_under_the_minimum_is_not_enough(ctx, people, clock):
    many(ctx, people["op"], 3, created_at=clock.now - timedelta(hours=1))
    spot.set_rule(ctx, people["admin"], share_percent=100, daily_cap=20)
    spot.draw(ctx)
    for item_id in _spot_items(ctx):
        review.decide(ctx, people["alice"], item_id, "false_positive", share=0.0)
    report = spot.report(ctx, people["alice"])
    assert all(not f.miss.enough and f.miss.checked == 3 for f in report.families)
    assert report.min_checks == 30
