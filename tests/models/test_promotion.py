"""Four-eyes promotion, gates, rollback and the History tab's timelines: services over a real SQLite file.

No engine is needed: the switch path runs the real reconciler against a stub host (our own seam). The watch
window's tests are in test_watch.py.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from datetime import timedelta

import pytest

from console.services import promotion, serving, timelines, watch
from console.services.access import Principal
from console.services.errors import AccessDenied, InvalidInput, SeparationOfDuties
from db import model_versions as versions_q
from db.tables import PromotionRequest
from db.types import utcnow
from tests.models.promotion_support import (
    canned_report,
    evaluate,
    events,
    production,
    register_version,
    traffic,
)


def _status(ctx, request_id: int) -> str:  # noqa: ANN001
    with ctx.db.session() as s:
        row = s.get(PromotionRequest, request_id)
        assert row is not None
        return row.status


# --- requests and four eyes -----------------------------------------------------------------------------------


def test_a_request_freezes_the_report_the_baseline_and_passing_gates(ctx, team) -> None:  # noqa: ANN001
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "faster and as accurate")
    assert (request.alias, request.version, request.from_version, request.status) == ("production", "v2", "v1",
                                                                                      "pending")
    assert request.report == canned_report("v2") and request.baseline_report == canned_report("v1")
    assert [g.name for g in request.gates] == ["topic_accuracy", "flag_rate", "bias_toxicity_gap", "ttft_p95"]
    assert all(g.passed for g in request.gates)
    # A later evaluation does not change what was asked.
    evaluate(ctx, "v2", topic_accuracy=0.1)
    assert promotion.get_request(ctx, team["rita"], request.id).report == canned_report("v2")
    (event,) = events(ctx, "promotion.request")
    assert event.actor == "ada" and event.details["failed_gates"] == [] and event.details["version"] == "v2"


def test_reviewer_cannot_approve_own_promotion_even_as_admin_and_reviewer(ctx, team) -> None:  # noqa: ANN001
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    with pytest.raises(SeparationOfDuties, match="own promotion request"):
        promotion.approve(ctx, team["ada"], request.id, "looks fine to me")
    with pytest.raises(SeparationOfDuties):
        promotion.reject(ctx, team["ada"], request.id, "changed my mind")
    assert _status(ctx, request.id) == "pending" and production(ctx) == "v1"
    denials = events(ctx, "access.denied")
    assert [(d.actor, d.details["action"], d.object_id) for d in denials] == [
        ("ada", "promotion.decide", str(request.id))] * 2


def test_a_different_reviewer_approves_and_production_moves(ctx, team) -> None:  # noqa: ANN001
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    approved = promotion.approve(ctx, team["rita"], request.id, "numbers hold up")
    assert (approved.status, approved.decided_by, approved.decision_note) == ("approved", "rita", "numbers hold up")
    assert production(ctx) == "v2" and serving.desired_state(ctx).version == "v2"
    with ctx.db.session() as s:
        move = versions_q.alias_moves(s, alias="production", limit=1)[0]
    assert move.actor == "rita" and move.reason == f"promotion #{request.id}: better"
    (event,) = events(ctx, "promotion.approve")
    assert event.actor == "rita" and event.details["override_reason"] is None
    with pytest.raises(InvalidInput, match="already approved"):
        promotion.reject(ctx, team["otto"], request.id, "too late")


def test_approving_another_alias_moves_it_directly(ctx, team) -> None:  # noqa: ANN001
    request = promotion.request_promotion(ctx, team["ada"], "v2", "staging", "for QA")
    assert request.from_version is None
    assert {g.note for g in request.gates if not g.passed} == {"no version holds staging"}
    promotion.approve(ctx, team["otto"], request.id, "ok", override_reason="first staging version")
    with ctx.db.session() as s:
        assert versions_q.version_for_alias(s, "staging").name == "v2"
    assert production(ctx) == "v1"


def test_failed_gate_needs_an_override_reason_which_is_recorded(ctx, team) -> None:  # noqa: ANN001
    evaluate(ctx, "v2", topic_accuracy=0.70, latency_comparison={"diff_ms": 40.0, "ci_low_ms": 30.0})
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "new prompts")
    assert {g.name for g in request.failed_gates} == {"topic_accuracy", "ttft_p95"}
    with pytest.raises(InvalidInput, match="override reason"):
        promotion.approve(ctx, team["rita"], request.id, "ok")
    assert _status(ctx, request.id) == "pending" and production(ctx) == "v1"
    approved = promotion.approve(ctx, team["rita"], request.id, "ok", override_reason="accuracy suite is stale")
    assert approved.override_reason == "accuracy suite is stale" and production(ctx) == "v2"
    (event,) = events(ctx, "promotion.approve")
    assert event.details["override_reason"] == "accuracy suite is stale"
    assert sorted(event.details["failed_gates"]) == ["topic_accuracy", "ttft_p95"]


def test_the_override_reason_is_cleaned_like_every_other_text(ctx, team) -> None:  # noqa: ANN001
    # NUL (PostgreSQL refuses it) and a lone surrogate (no UTF-8 for the database or the audit hash): issue 22.
    evaluate(ctx, "v2", topic_accuracy=0.70)
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "new prompts")
    approved = promotion.approve(ctx, team["rita"], request.id, "ok", override_reason="  stale\x00 suite \ud800  ")
    assert approved.override_reason == "stale suite \ufffd"
    (event,) = events(ctx, "promotion.approve")
    assert event.details["override_reason"] == "stale suite \ufffd"


def test_an_override_reason_of_only_invisible_characters_is_no_override(ctx, team) -> None:  # noqa: ANN001
    evaluate(ctx, "v2", topic_accuracy=0.70)
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "new prompts")
    with pytest.raises(InvalidInput, match="override reason"):
        promotion.approve(ctx, team["rita"], request.id, "ok", override_reason="\x00 \u200b ")
    assert _status(ctx, request.id) == "pending" and production(ctx) == "v1"


def test_a_version_without_an_evaluation_gets_gates_marked_no_evaluation(ctx, team) -> None:  # noqa: ANN001
    register_version(ctx, "v3")
    request = promotion.request_promotion(ctx, team["ada"], "v3", "production", "try it")
    assert request.report is None and request.evaluation_id is None
    assert [(g.passed, g.note) for g in request.gates] == [(False, "no evaluation")] * 4


M = {"promotion_accuracy_margin": 0.02, "promotion_flag_margin": 0.02, "promotion_bias_limit": 0.1,
     "promotion_ttft_margin": 0.25, "promotion_ttft_min_pairs": 20}


@pytest.mark.parametrize(
    ("candidate", "baseline", "failed"),
    [
        pytest.param({}, {}, set(), id="equal-passes"),
        pytest.param({"topic_accuracy": 0.79}, {}, set(), id="accuracy-within-margin"),
        pytest.param({"topic_accuracy": 0.77}, {}, {"topic_accuracy"}, id="accuracy-below-margin"),
        pytest.param({"flag_rate_any": 0.08}, {}, {"flag_rate"}, id="more-flags"),
        pytest.param({"bias_gap": {"toxicity_gap": 0.2}}, {}, {"bias_toxicity_gap"}, id="bias-gap-over-limit"),
        pytest.param({"latency_comparison": {"ci_low_ms": 10.0, "ci_high_ms": 30.0}}, {}, set(),
                     id="ttft-interval-reaches-into-the-25-percent-margin"),
        pytest.param({"latency_comparison": {"ci_low_ms": 10.5, "ci_high_ms": 30.0}}, {}, {"ttft_p95"},
                     id="ttft-shown-slower-beyond-the-margin"),
        pytest.param({"latency": {"ttft_p95_ms": 400.0}}, {}, set(),
                     id="ttft-other-run-p95s-do-not-count-when-paired"),
        pytest.param({"latency_comparison": {"n": 19}}, {}, {"ttft_p95"}, id="ttft-too-few-pairs"),
        pytest.param({"latency_comparison": None}, {}, {"ttft_p95"}, id="ttft-old-report-without-pairs"),
        pytest.param({"latency_comparison": {"baseline_version": "v0"}}, {}, {"ttft_p95"},
                     id="ttft-timed-against-another-version"),
        pytest.param({"topic_accuracy": None}, {}, {"topic_accuracy"}, id="candidate-did-not-measure"),
        pytest.param({}, {"topic_accuracy": None}, {"topic_accuracy"}, id="baseline-did-not-measure"),
    ],
)
def test_gates(ctx, candidate, baseline, failed) -> None:  # noqa: ANN001
    settings = dataclasses.replace(ctx.settings, **M)
    gates = promotion.compute_gates(settings, canned_report("c", **candidate), canned_report("b", **baseline),
                                    baseline_version="v1")
    assert {g.name for g in gates if not g.passed} == failed


def test_two_reviewers_deciding_at_once_only_one_wins(ctx, team) -> None:  # noqa: ANN001
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def decide(who: str, fn: Callable[..., object], *args: object) -> None:
        barrier.wait()
        try:
            outcomes[who] = fn(ctx, team[who], request.id, *args)
        except InvalidInput as exc:
            outcomes[who] = exc

    threads = [threading.Thread(target=decide, args=("rita", promotion.approve, "yes")),
               threading.Thread(target=decide, args=("otto", promotion.reject, "no"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [w for w, o in outcomes.items() if isinstance(o, promotion.RequestView)]
    losers = [o for o in outcomes.values() if isinstance(o, InvalidInput)]
    assert len(winners) == 1 and len(losers) == 1 and "already" in str(losers[0])
    status = _status(ctx, request.id)
    assert status == ("approved" if winners == ["rita"] else "rejected")
    assert production(ctx) == ("v2" if status == "approved" else "v1")
    assert len(events(ctx, "promotion.approve")) + len(events(ctx, "promotion.reject")) == 1


def test_only_the_requester_cancels(ctx, team) -> None:  # noqa: ANN001
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    with pytest.raises(AccessDenied, match="Only the person"):
        promotion.cancel(ctx, team["otto"], request.id)
    assert promotion.cancel(ctx, team["ada"], request.id, "not yet").status == "cancelled"
    with pytest.raises(InvalidInput, match="already cancelled"):
        promotion.approve(ctx, team["rita"], request.id, "ok")


def test_approval_is_refused_when_the_alias_moved_since_the_request(ctx, team) -> None:  # noqa: ANN001
    register_version(ctx, "v3")
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    serving.serve(ctx, Principal.shell(ctx), "v3", "hotfix", break_glass="a hotfix from the shell while the request waits")
    with pytest.raises(InvalidInput, match="moved since the request"):
        promotion.approve(ctx, team["rita"], request.id, "ok")
    assert production(ctx) == "v3" and _status(ctx, request.id) == "pending"


def test_bad_requests_store_nothing(ctx, team) -> None:  # noqa: ANN001
    with pytest.raises(InvalidInput, match="already holds"):
        promotion.request_promotion(ctx, team["ada"], "v1", "production", "again")
    with pytest.raises(InvalidInput, match="reason"):
        promotion.request_promotion(ctx, team["ada"], "v2", "production", " ")
    with pytest.raises(InvalidInput, match="lower-case"):
        promotion.request_promotion(ctx, team["ada"], "v2", "Prod!", "x")
    promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    with pytest.raises(InvalidInput, match="already pending"):
        promotion.request_promotion(ctx, team["otto"], "v2", "production", "me too")
    assert len(promotion.list_requests(ctx, team["rita"])) == 1


def test_only_admins_request_and_only_reviewers_or_admins_decide(ctx, team, make_user) -> None:  # noqa: ANN001
    with pytest.raises(AccessDenied):
        promotion.request_promotion(ctx, team["rita"], "v2", "production", "x")
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    with pytest.raises(AccessDenied):
        promotion.approve(ctx, make_user("olga", "operator", "analyst"), request.id, "x")


# --- rollback ---------------------------------------------------------------------------------------------------


def test_rollback_returns_production_to_the_previous_version(ctx, team) -> None:  # noqa: ANN001
    with pytest.raises(InvalidInput, match="no previous production version"):
        promotion.rollback(ctx, team["otto"], "nothing before")
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    promotion.approve(ctx, team["rita"], request.id, "ok")
    assert watch.production_state(ctx, team["rita"]).previous == "v1"
    with pytest.raises(InvalidInput, match="reason"):
        promotion.rollback(ctx, team["otto"], "")
    result = promotion.rollback(ctx, team["otto"], "customers complain")
    assert (result.from_version, result.to_version, result.auto) == ("v2", "v1", False)
    assert production(ctx) == "v1"
    (event,) = events(ctx, "model.rollback")
    assert event.actor == "otto" and event.details["reason"] == "customers complain"
    with pytest.raises(AccessDenied):
        promotion.rollback(ctx, team["rita"], "reviewers cannot switch")


def test_a_rollback_cannot_be_rolled_back_to_put_back_the_version_it_took_away(ctx, team) -> None:  # noqa: ANN001
    """The second emergency rollback would be a move forward to the version just taken away, by one person."""
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    promotion.approve(ctx, team["rita"], request.id, "ok")
    promotion.rollback(ctx, team["otto"], "customers complain")
    with pytest.raises(InvalidInput, match="v1 holds production because of a rollback from v2; returning to v2 is a "
                                           "move forward, not a rollback: request a promotion"):
        promotion.rollback(ctx, team["otto"], "changed my mind")
    assert production(ctx) == "v1" and len(events(ctx, "model.rollback")) == 1
    state = watch.production_state(ctx, team["rita"])
    assert state.previous is None and state.no_rollback is not None and "request a promotion" in state.no_rollback
    # Moving forward again is a promotion like any other: the second person, and then a rollback is offered again.
    again = promotion.request_promotion(ctx, team["ada"], "v2", "production", "fixed")
    promotion.approve(ctx, team["rita"], again.id, "ok")
    assert production(ctx) == "v2" and watch.production_state(ctx, team["rita"]).previous == "v1"


def test_a_pending_request_says_when_its_alias_moved_since_and_only_a_rejection_is_left(ctx, team) -> None:  # noqa: ANN001
    first = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    promotion.approve(ctx, team["rita"], first.id, "ok")
    waiting = promotion.request_promotion(ctx, team["ada"], "v1", "staging", "try it")  # another alias: unaffected
    (view,) = [r for r in promotion.list_requests(ctx, team["rita"], "pending") if r.id == waiting.id]
    assert (view.from_version, view.alias_now, view.moved_since) == (None, None, False)
    back = promotion.request_promotion(ctx, team["ada"], "v1", "production", "v2 is slow")
    promotion.rollback(ctx, team["otto"], "customers complain")  # production moves under the pending request
    (view,) = [r for r in promotion.list_requests(ctx, team["rita"], "pending") if r.id == back.id]
    assert (view.from_version, view.alias_now, view.moved_since) == ("v2", "v1", True)
    with pytest.raises(InvalidInput, match="moved since the request"):
        promotion.approve(ctx, team["rita"], back.id, "ok", override_reason="v1 was fine")


def test_old_reports_without_paired_timings_fail_the_latency_gate_with_their_numbers(ctx, team) -> None:  # noqa: ANN001
    # As in the issue: 185.8 ms against 31.7 ms measured in another process at another time.
    evaluate(ctx, "v1", latency={"ttft_p95_ms": 31.7}, latency_comparison=None)
    evaluate(ctx, "v2", latency={"ttft_p95_ms": 185.8}, latency_comparison=None)
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "new prompts")
    (gate,) = request.failed_gates
    assert gate.name == "ttft_p95" and gate.value == 185.8
    assert "cannot compare like with like" in (gate.note or "") and "186 ms against v1's 32 ms" in (gate.note or "")


def test_the_latency_gate_needs_no_baseline_report_when_both_were_timed_in_one_run(ctx, team, make_user) -> None:  # noqa: ANN001
    register_version(ctx, "v0")
    serving.serve(ctx, Principal.shell(ctx), "v0", "a version never evaluated", break_glass="the test puts v0 in production")
    evaluate(ctx, "v2", latency_comparison={"baseline_version": "v0"})
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    gates = {g.name: g for g in request.gates}
    assert gates["ttft_p95"].passed and "vs v0 (95% CI -3.0..+6.0 ms, 40 paired prompts" in (
        gates["ttft_p95"].note or "")
    assert not gates["topic_accuracy"].passed and gates["topic_accuracy"].note == "v0 has no evaluation"


# --- history ----------------------------------------------------------------------------------------------------


def test_version_history_tells_the_story_in_order(ctx, team, switched) -> None:  # noqa: ANN001
    traffic(ctx, switched["operator"], "v2", switched["switch"].ts, 10, ttft=200.0)
    watch.Watcher(ctx).run_once()
    timeline = timelines.version_history(ctx, team["rita"], "v2")
    kinds = [t.kind for t in timeline]
    assert kinds == ["registered", "evaluation", "request", "alias", "approved", "switch", "watch", "alias",
                     "rollback"]
    assert [t.at for t in timeline] == sorted(t.at for t in timeline)
    assert timeline[2].actor == "ada" and timeline[4].actor == "rita"
    assert "automatic rollback from v2 to v1" in timeline[-1].summary


def test_served_timeline_gives_one_interval_per_production_holder(ctx, team, clock) -> None:  # noqa: ANN001
    start = utcnow() - timedelta(hours=1)
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    promotion.approve(ctx, team["rita"], request.id, "ok")
    promotion.rollback(ctx, team["otto"], "back")
    clock.now = utcnow() + timedelta(minutes=5)
    intervals = timelines.served_timeline(ctx, team["rita"], start)
    assert [(i.version, i.current) for i in intervals] == [("v1", False), ("v2", False), ("v1", True)]
    assert all(a.end == b.start for a, b in zip(intervals, intervals[1:], strict=False))
    assert intervals[-1].end == clock.now
    later = timelines.served_timeline(ctx, team["rita"], clock.now)
    assert [(i.version, i.start) for i in later] == [("v1", clock.now)]


def test_the_promotions_page_words_a_moved_request_and_a_rollback_in_its_banner(ctx, team) -> None:  # noqa: ANN001
    from console.services import promotions_view_model as pvm

    first = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    promotion.approve(ctx, team["rita"], first.id, "ok")
    back = promotion.request_promotion(ctx, team["ada"], "v1", "production", "v2 is slow")
    (view,) = promotion.list_requests(ctx, team["rita"], "pending")
    assert pvm.request_heading(view).startswith(f"**#{back.id}** · move **production** to **v1** (from v2 when asked)")
    assert pvm.moved_warning(view) is None
    promotion.rollback(ctx, team["otto"], "customers complain")
    (view,) = promotion.list_requests(ctx, team["rita"], "pending")
    assert pvm.moved_warning(view) == ("production has moved since: it now points at v1, so this request's gates "
                                       "compared with another version. It can only be rejected; request again.")
    notices = pvm.production_notices(watch.production_state(ctx, team["rita"]))
    (rolled,) = [n for n in notices if n.level == "warning"]
    assert "production returned from v2 to v1 (customers complain). v2 is no longer watched." in rolled.text
    assert rolled.icon == ":material/arrow_back:"
    assert [g["value"] for g in pvm.gate_rows(view)] and "None" not in str(pvm.gate_rows(view) + pvm.report_rows(view))
