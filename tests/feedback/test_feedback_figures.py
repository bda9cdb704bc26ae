"""Feedback in the figures others read, with known counts: the watch window's finding, a canary's optional
negative-feedback metric (old plans stay valid), and the evaluation page's per-version sentence."""

from __future__ import annotations

from datetime import timedelta

import pytest

from console.services import canary, watch
from console.services import evaluation as eval_svc
from console.services import feedback as feedback_svc
from console.services.errors import AccessDenied, InvalidInput, NotFound
from console.services.evaluation_report import feedback_sentence
from db.feedback import FeedbackCounts
from tests.feedback.test_feedback import _exchange
from tests.models.promotion_support import register_version


@pytest.fixture
def olga(make_user):
    return make_user("olga", "operator")


def _rated(ctx, owner, version: str, up: int, down: int, unrated: int = 0, at=None) -> None:
    for rating, n in ((1, up), (-1, down), (0, unrated)):
        for _ in range(n):
            ex = _exchange(ctx, owner, version=version, created_at=at or ctx.now())
            if rating:
                feedback_svc.give_feedback(ctx, owner, ex, rating)


# --- watch window -------------------------------------------------------------------------------------------------


def test_the_watch_reports_the_thumbs_down_share_before_and_after_and_never_rolls_back_for_it(ctx):
    worse = watch.feedback_test(ctx.settings, FeedbackCounts(up=90, down=10), FeedbackCounts(up=10, down=90))
    assert (worse.metric, worse.before, worse.after, worse.n_before, worse.n_after) == \
        ("thumbs_down_rate", 0.1, 0.9, 100, 100)
    assert (worse.k_before, worse.k_after) == (10, 90)
    assert worse.p_value is not None and worse.p_value < 1e-6  # a clear rise, and still only reported
    assert worse.regression is False
    assert "thumbs down 10/100 → 90/100 rated answers" in watch.describe_test(worse.as_dict())
    assert "reported only" in watch.describe_test(worse.as_dict())
    none = watch.feedback_test(ctx.settings, FeedbackCounts(), FeedbackCounts(up=1))
    assert (none.before, none.after, none.enough) == (None, 0.0, False)


# --- canary ---------------------------------------------------------------------------------------------------


def test_an_old_plan_without_the_feedback_metric_stays_valid_and_the_metric_is_optional():
    old = canary.CanaryPlan.from_dict({"share": 0.2, "minutes": 30, "metrics": ["flag_rate", "error_rate"],
                                       "flag_margin": 0.02, "error_margin": 0.01, "ttft_margin": 0.2,
                                       "alpha": 0.05, "min_exchanges": 100})
    assert old.metrics == ("flag_rate", "error_rate") and old.feedback_margin == 0.05
    assert canary.parse_plan(**old.to_dict()) == old
    assert "feedback_rate" not in canary.CanaryPlan().metrics
    chosen = canary.parse_plan(metrics="feedback_rate, flag_rate", feedback_margin="0.1")
    assert chosen.metrics == ("flag_rate", "feedback_rate") and chosen.feedback_margin == 0.1
    with pytest.raises(InvalidInput, match="The negative feedback rate margin must be between 0.001 and 0.5"):
        canary.parse_plan(metrics=["feedback_rate"], feedback_margin=0.9)
    with pytest.raises(InvalidInput, match="Unknown canary metric 'likes'; choose from .*feedback_rate"):
        canary.parse_plan(metrics=["likes"])


def _canary(ctx, plan: canary.CanaryPlan) -> canary.ActiveCanary:
    start = ctx.now() - timedelta(minutes=30)
    return canary.ActiveCanary(1, "cand", "live", plan, start, start + timedelta(minutes=plan.minutes))


def test_a_canary_with_the_feedback_metric_is_shown_worse_on_many_thumbs_down(ctx, olga):
    at = ctx.now() - timedelta(minutes=10)
    _rated(ctx, olga, "cand", up=2, down=18, at=at)
    _rated(ctx, olga, "live", up=18, down=2, unrated=5, at=at)
    plan = canary.parse_plan(metrics=["feedback_rate"], min_exchanges=10, minutes=60)
    with ctx.db.session(readonly=True) as s:
        result = canary.evaluate(s, _canary(ctx, plan), ctx.now())
    (m,) = result.metrics
    assert (m.metric, m.candidate_k, m.candidate_n, m.live_k, m.live_n) == ("feedback_rate", 18, 20, 2, 20)
    assert m.verdict == "worse" and result.decision == "rollback"
    assert "Negative feedback rate: candidate 90" in m.text


def test_a_canary_waits_for_enough_rated_answers_on_both_arms(ctx, olga):
    at = ctx.now() - timedelta(minutes=10)
    _rated(ctx, olga, "cand", up=5, down=0, unrated=30, at=at)
    _rated(ctx, olga, "live", up=5, down=0, unrated=30, at=at)
    plan = canary.parse_plan(metrics=["feedback_rate"], min_exchanges=10)
    with ctx.db.session(readonly=True) as s:
        result = canary.evaluate(s, _canary(ctx, plan), ctx.now())
    (m,) = result.metrics
    assert (m.candidate_n, m.live_n, m.verdict, result.decision) == (5, 5, "too_few", "continue")


# --- evaluations ------------------------------------------------------------------------------------------------


def test_the_evaluation_page_gives_a_versions_live_feedback_over_the_last_30_days(ctx, olga, make_user):
    admin = make_user("ada", "admin")
    register_version(ctx, "v-eval")
    _rated(ctx, olga, "v-eval", up=3, down=1, unrated=2)
    _rated(ctx, olga, "v-eval", up=0, down=5, at=ctx.now() - timedelta(days=40))  # older than the window
    got = eval_svc.version_feedback(ctx, admin, "v-eval")
    assert (got.up, got.down, got.answers) == (3, 1, 6)
    assert feedback_sentence(got.up, got.down, got.answers, 30) == (
        "Users' feedback, last 30 days: 4 of its 6 answers rated; thumbs up 75%, thumbs down 25% of the rated "
        "answers.")
    with pytest.raises(NotFound, match="No model version named 'nope'"):
        eval_svc.version_feedback(ctx, admin, "nope")
    with pytest.raises(InvalidInput, match="whole number of days from 1 to 3,650"):
        eval_svc.version_feedback(ctx, admin, "v-eval", days=0)
    with pytest.raises(AccessDenied):
        eval_svc.version_feedback(ctx, olga, "v-eval")


def test_a_watch_finding_carries_the_thumbs_down_counts_of_both_windows_and_passes(ctx, team, switched, clock):
    from sqlalchemy import select

    from db.tables import Exchange
    from tests.models.promotion_support import traffic

    ts, olivia = switched["switch"].ts, switched["operator"]
    traffic(ctx, olivia, "v2", ts, 10, ttft=20.0)
    with ctx.db.session(readonly=True) as s:
        ids: dict[str, list[int]] = {}
        for ex in s.scalars(select(Exchange).order_by(Exchange.id)):
            ids.setdefault(ex.model_version, []).append(ex.id)
    for ex in ids["v1"][:8]:
        feedback_svc.give_feedback(ctx, olivia, ex, 1)
    for ex in ids["v2"][:6]:
        feedback_svc.give_feedback(ctx, olivia, ex, -1)
    feedback_svc.give_feedback(ctx, olivia, ids["v2"][6], 1)
    clock.now = ts + timedelta(minutes=31)
    finding = watch.Watcher(ctx).run_once()
    assert finding is not None and (finding.verdict, finding.action) == ("passed", "none")
    fb = next(t for t in finding.tests if t["metric"] == "thumbs_down_rate")
    assert (fb["k_before"], fb["n_before"], fb["k_after"], fb["n_after"]) == (0, 8, 6, 7)
    assert fb["regression"] is False and fb["enough"] is True
