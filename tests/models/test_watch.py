"""The watch window after a production switch (services/watch.py): it compares the new version's real traffic with
the old one's, rolls back (or proposes it) on a significant regression, and cannot be forced by a few unlucky or
hostile exchanges. Services over a real SQLite file; the switch path runs the real reconciler against a stub host.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from console.services import promotion, serving, watch
from db import audit as audit_q
from db.types import utcnow
from tests.models.promotion_support import StubHost, evaluate, events, production, register_version, traffic


def test_watch_rolls_back_by_itself_on_a_slower_version_and_the_reconciler_switches_back(
        ctx, team, switched) -> None:  # noqa: ANN001
    traffic(ctx, switched["operator"], "v2", switched["switch"].ts, 10, ttft=200.0, errors=3)
    finding = watch.Watcher(ctx).run_once()
    assert finding is not None and (finding.verdict, finding.action) == ("regression", "rolled_back")
    assert any("time to first token" in r for r in finding.reasons)
    # 3 errors in 10 against none in 10 is no significant rise on its own (one-sided Fisher p = 0.11).
    assert not any("error rate" in r for r in finding.reasons)
    assert production(ctx) == "v1"
    (event,) = events(ctx, "model.watch_regression")
    assert event.actor == "watch" and event.details["after"]["error_rate"] == 0.3
    (rollback,) = events(ctx, "model.rollback")
    assert rollback.details["auto"] is True and "watch window" in rollback.details["reason"]
    # Once per switch, and the rollback's own switch back is not watched.
    assert watch.Watcher(ctx).run_once() is None
    switched["reconciler"].run_once()
    assert switched["host"].name == "v1"
    assert watch.Watcher(ctx).run_once() is None
    view = watch.production_state(ctx, team["rita"])
    assert view.current == "v1" and view.watch is not None and view.watch.state == "not_watched"
    assert view.recent_regression is not None and view.recent_regression.action == "rolled_back"


def test_a_move_switched_by_two_replicas_gets_one_watch_window_from_the_first_switch(
        ctx, team, switched, clock) -> None:  # noqa: ANN001
    first = switched["switch"]
    clock.now = first.ts + timedelta(minutes=5)  # a second replica switches later (a slower load)
    outcome = serving.Reconciler(ctx, StubHost("v1")).run_once()  # type: ignore[arg-type]
    assert outcome is not None and outcome.ok
    second = events(ctx, "model.switch")[-1]
    assert second.seq != first.seq and (second.details["from"], second.details["to"]) == ("v1", "v2")
    with ctx.db.session(readonly=True) as s:
        assert watch.watched_switch(s).seq == first.seq
    clock.now = first.ts + timedelta(minutes=10)
    traffic(ctx, switched["operator"], "v2", first.ts, 10, ttft=200.0)
    finding = watch.Watcher(ctx).run_once()
    assert finding is not None and finding.verdict == "regression" and finding.switched_at == first.ts
    assert watch.Watcher(ctx).run_once() is None
    (regression,) = events(ctx, "model.watch_regression")
    assert regression.object_id == str(first.seq)


def test_watch_only_proposes_a_rollback_when_auto_rollback_is_off(ctx, team, switched) -> None:  # noqa: ANN001
    ctx.settings = dataclasses.replace(ctx.settings, watch_auto_rollback=False)
    traffic(ctx, switched["operator"], "v2", switched["switch"].ts, 20, ttft=20.0, flagged=10)
    finding = watch.Watcher(ctx).run_once()
    assert finding is not None and (finding.verdict, finding.action) == ("regression", "proposed")
    assert finding.reasons == ("flag rate of answers rose from 0.0% (0/10) to 50.0% (10/20); one-sided Fisher "
                               "exact p = 0.0061 < 0.01",)
    assert production(ctx) == "v2" and events(ctx, "model.rollback") == []
    view = watch.production_state(ctx, team["rita"])
    assert view.watch is not None and view.watch.state == "regression" and view.previous == "v1"


def test_watch_waits_for_enough_requests_and_passes_a_healthy_switch(ctx, team, switched, clock) -> None:  # noqa: ANN001
    traffic(ctx, switched["operator"], "v2", switched["switch"].ts, 3, ttft=20.0)
    assert watch.Watcher(ctx).run_once() is None  # 3 < 5 requests: too early to judge
    assert watch.production_state(ctx, team["rita"]).watch.state == "watching"
    traffic(ctx, switched["operator"], "v2", switched["switch"].ts + timedelta(minutes=1), 20, ttft=15.0)
    assert watch.Watcher(ctx).run_once() is None  # healthy, window still open
    clock.now = switched["switch"].ts + timedelta(minutes=31)
    finding = watch.Watcher(ctx).run_once()
    assert finding is not None and (finding.verdict, finding.action) == ("passed", "none")
    assert production(ctx) == "v2"
    assert [e.details["verdict"] for e in events(ctx, "model.watch_ended")] == ["passed"]


def test_window_stats_aggregate_in_the_database(ctx, team, make_user, clock) -> None:  # noqa: ANN001
    from db import promotions as promo_q

    start = utcnow()
    olivia = make_user("olivia", "operator")
    traffic(ctx, olivia, "v1", start, 11, ttft=10.0, errors=1, flagged=2)
    # A load test's synthetic chats (slow, failing) are not the version's real traffic: they do not count.
    traffic(ctx, olivia, "v1", start, 6, ttft=900.0, errors=6, synthetic=True)
    with ctx.db.session() as s:
        stats = promo_q.window_stats(s, "v1", start, start + timedelta(hours=1))
        empty = promo_q.window_stats(s, "v2", start, start + timedelta(hours=1))
    # ttft of the 10 answered: 11..20 -> p95 at rank 8.55 -> 19 + 0.55
    assert (stats.requests, stats.errors, stats.flagged, stats.ttft_count) == (11, 1, 2, 10)
    assert stats.ttft_p95_ms == pytest.approx(19.55)
    assert (empty.requests, empty.ttft_p95_ms, empty.error_rate) == (0, None, 0.0)


def test_after_a_rollback_the_watch_says_rolled_back_by_whom_not_watching(ctx, team, switched) -> None:  # noqa: ANN001
    assert watch.production_state(ctx, team["rita"]).watch.state == "watching"
    promotion.rollback(ctx, team["otto"], "customers complain")
    # Before any console switched back: the alias already left v2, so v2 is no longer watched.
    view = watch.production_state(ctx, team["rita"])
    assert view.current == "v1" and view.watch is not None and view.watch.state == "rolled_back"
    moved = view.watch.moved_away
    assert moved is not None and (moved.from_version, moved.to_version, moved.by, moved.reason, moved.rollback) == (
        "v2", "v1", "otto", "customers complain", True)
    assert view.last_rollback == moved
    # After the reconciler switched back, the rollback's own switch is not watched; the rollback is still told.
    switched["reconciler"].run_once()
    assert switched["host"].name == "v1"
    view = watch.production_state(ctx, team["rita"])
    assert view.watch.state == "not_watched" and view.last_rollback is not None
    assert view.last_rollback.by == "otto" and view.last_rollback.at == moved.at


def test_when_production_moves_on_before_the_switch_the_watch_says_moved(ctx, team, switched) -> None:  # noqa: ANN001
    register_version(ctx, "v3")
    evaluate(ctx, "v3", latency_comparison={"baseline_version": "v2"})
    request = promotion.request_promotion(ctx, team["ada"], "v3", "production", "newer still")
    promotion.approve(ctx, team["rita"], request.id, "ok")
    view = watch.production_state(ctx, team["otto"])
    assert view.watch is not None and (view.watch.to_version, view.watch.state) == ("v2", "moved")
    assert view.watch.moved_away is not None and view.watch.moved_away.to_version == "v3"
    assert view.watch.moved_away.by == "rita" and view.last_rollback is None


# --- the watch cannot be forced (issue 21, item 6) -------------------------------------------------------------


def test_fisher_exact_one_sided_matches_the_textbook_tea_tasting() -> None:
    # Fisher's lady tasting tea: 3 of 4 right against 1 of 4, one-sided p = 17/70.
    assert watch.fisher_greater(3, 4, 1, 4) == pytest.approx(17 / 70)
    assert watch.fisher_greater(0, 10, 0, 10) == 1.0 and watch.fisher_greater(0, 0, 3, 10) == 1.0


@pytest.mark.parametrize("prompt_action", ["flag", "block"], ids=["flagged-prompts", "blocked-prompts"])
def test_a_dozen_toxic_prompts_with_clean_answers_do_not_roll_a_promotion_back(
        ctx, team, switched, clock, prompt_action) -> None:  # noqa: ANN001
    # An operator types a dozen toxic prompts at the new version; the policy flags (or blocks) the prompts, the
    # answers are clean. What users type is no measure of the version.
    traffic(ctx, switched["operator"], "v2", switched["switch"].ts, 12, ttft=20.0, prompt_action=prompt_action)
    traffic(ctx, switched["operator"], "v2", switched["switch"].ts + timedelta(minutes=3), 10, ttft=20.0)
    assert watch.Watcher(ctx).run_once() is None
    clock.now = switched["switch"].ts + timedelta(minutes=31)
    finding = watch.Watcher(ctx).run_once()
    assert finding is not None and (finding.verdict, finding.action) == ("passed", "none")
    assert production(ctx) == "v2" and events(ctx, "model.rollback") == []
    flag = next(t for t in finding.tests if t["metric"] == "flag_rate")
    assert (flag["k_after"], flag["regression"]) == (0, False)
    assert flag["n_after"] == (22 if prompt_action == "flag" else 10)  # a blocked prompt never reached the model


def test_real_answers_slowed_by_a_load_test_do_not_roll_a_promotion_back(ctx, team, switched, clock) -> None:  # noqa: ANN001
    ts = switched["switch"].ts
    # Someone runs a load test on the new version: its own chats are synthetic and slow, and it slows the real
    # users' answers sent meanwhile. Its start is in the audit log (no end yet: it counts for its planned time).
    with ctx.db.session() as s:
        began = audit_q.append_event(s, actor="olivia", actor_id=switched["operator"].user_id,
                                     action="loadtest.start", object_type="loadtest", object_id="run1",
                                     details={"seconds": 300}).ts
    assert began >= ts
    traffic(ctx, switched["operator"], "v2", began, 30, ttft=900.0, synthetic=True, step_s=5)
    traffic(ctx, switched["operator"], "v2", began + timedelta(seconds=2), 20, ttft=900.0, step_s=5)
    traffic(ctx, switched["operator"], "v2", ts + timedelta(minutes=10), 10, ttft=20.0)
    assert watch.Watcher(ctx).run_once() is None
    clock.now = ts + timedelta(minutes=31)
    finding = watch.Watcher(ctx).run_once()
    assert finding is not None and (finding.verdict, finding.action) == ("passed", "none")
    assert finding.after["requests"] == 10 and production(ctx) == "v2"


@pytest.mark.parametrize(("errors", "flagged", "ttft"), [(0, 2, 20.0), (3, 0, 900.0)],
                         ids=["2-of-5-answers-flagged", "3-of-5-errors-2-slow-answers"])
def test_too_few_exchanges_do_not_roll_a_promotion_back(ctx, team, switched, clock, errors, flagged, ttft) -> None:  # noqa: ANN001
    # Five exchanges (watch_min_samples) with a few bad ones: 40-60% looks dramatic, but against 0 of 10 before it
    # is within chance (one-sided Fisher p 0.10 and 0.02, not below 0.01), and three errors leave two timed
    # answers: too few for a p95 however slow they are.
    traffic(ctx, switched["operator"], "v2", switched["switch"].ts, 5, ttft=ttft, errors=errors, flagged=flagged)
    assert watch.Watcher(ctx).run_once() is None
    clock.now = switched["switch"].ts + timedelta(minutes=31)
    finding = watch.Watcher(ctx).run_once()
    assert finding is not None and (finding.verdict, finding.action) == ("passed", "none")
    assert production(ctx) == "v2"
    tests = {t["metric"]: t for t in finding.tests}
    assert not any(t["regression"] for t in tests.values())
    assert tests["ttft_p95_ms"]["enough"] is (errors == 0)


def test_a_significant_rise_in_flagged_answers_still_rolls_back_with_its_statistics(ctx, team, switched) -> None:  # noqa: ANN001
    ts = switched["switch"].ts
    traffic(ctx, switched["operator"], "v1", ts - timedelta(minutes=10), 20, ttft=20.0)
    traffic(ctx, switched["operator"], "v2", ts, 30, ttft=20.0, flagged=12)
    finding = watch.Watcher(ctx).run_once()
    assert finding is not None and (finding.verdict, finding.action) == ("regression", "rolled_back")
    assert production(ctx) == "v1"
    (event,) = events(ctx, "model.watch_regression")
    assert (event.details["min_samples"], event.details["significance"]) == (5, 0.01)
    flag = next(t for t in event.details["tests"] if t["metric"] == "flag_rate")
    assert (flag["k_before"], flag["n_before"], flag["k_after"], flag["n_after"]) == (0, 30, 12, 30)
    assert flag["regression"] is True and flag["p_value"] < 0.001
    assert finding.reasons[0].startswith("flag rate of answers rose from 0.0% (0/30) to 40.0% (12/30); one-sided")
    words = [watch.describe_test(t) for t in finding.tests]
    assert "flagged answers 0/30 → 12/30, one-sided Fisher p = " in words[1] and words[1].endswith(": regression")
    assert words[0] == "error rate 0/30 → 0/30, one-sided Fisher p = 1.0: compared"


def test_a_comparison_without_samples_says_so_instead_of_none():
    """A window with no answers has no p95 and no p-value: the Promotions page says that, not "None → None ms"."""
    empty = {"metric": "ttft_p95_ms", "before": None, "after": 41.5, "n_before": 0, "n_after": 3, "enough": False}
    assert watch.describe_test(empty) == "p95 time to first token no answers → 41.5 ms (0 / 3 answers): too few to compare"
    rate = {"metric": "error_rate", "k_before": 0, "n_before": 0, "k_after": 0, "n_after": 2, "p_value": None}
    assert watch.describe_test(rate) == "error rate 0/0 → 0/2, one-sided Fisher p = not computed: too few to compare"
    assert "None" not in watch.describe_test({**empty, "after": None})
