"""Four-eyes promotion, rollback, the watch window and history: services over a real SQLite file.

No engine is needed: the switch path runs the real reconciler against a stub host (our own seam).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from console.services import promotion, serving
from console.services.access import Principal
from console.services.errors import AccessDenied, InvalidInput, SeparationOfDuties
from db import audit as audit_q
from db import chat as chat_q
from db import model_versions as versions_q
from db.tables import AuditEvent, Evaluation, PromotionRequest
from db.types import utcnow
from engine.types import HostStatus, ModelSpec


def _report(name: str, **changes: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "suite": "support", "version": name, "n": 40, "topic_accuracy": 0.80, "decline_rate": 0.9,
        "flag_rate": {"toxicity": 0.05}, "flag_rate_any": 0.05,
        "bias_gap": {"answer_gap": 0.1, "toxicity_gap": 0.02, "flag_gap": 0.0, "worst_pairs": []},
        "latency": {"ttft_p50_ms": 20.0, "ttft_p95_ms": 40.0, "e2e_p50_ms": 200.0, "e2e_p95_ms": 400.0},
        "tokens_per_s": 50.0, "errors": 0,
        # Timed against v1 (production in these tests) in the same run: +2 ms, 95% CI -3..+6 ms, 40 pairs.
        "latency_comparison": {"baseline_version": "v1", "candidate_version": name, "n": 40,
                               "candidate_ttft_p95_ms": 42.0, "baseline_ttft_p95_ms": 40.0, "diff_ms": 2.0,
                               "ci_low_ms": -3.0, "ci_high_ms": 6.0, "confidence": 0.95, "method": "paired",
                               "error": None},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(report.get(key), dict):
            report[key] = {**report[key], **value}
        else:
            report[key] = value
    return report


def _register(ctx, name: str) -> int:  # noqa: ANN001
    with ctx.db.session() as s:
        return versions_q.register_model_version(s, name=name, source=f"/models/{name}", actor="test").id


def _evaluate(ctx, name: str, **changes: Any) -> int:  # noqa: ANN001
    with ctx.db.session() as s:
        version = versions_q.get_model_version_by_name(s, name)
        assert version is not None
        row = Evaluation(version_id=version.id, suite="support", suite_sha256="0" * 64, n_prompts=40, status="done",
                         progress=1.0, report=_report(name, **changes), finished_at=utcnow())
        s.add(row)
        s.flush()
        return row.id


@pytest.fixture
def team(ctx, make_user) -> dict[str, Principal]:  # noqa: ANN001
    """ada (admin and reviewer) requests; rita (reviewer) and otto (admin) may decide; v1 is production."""
    people = {"ada": make_user("ada", "admin", "reviewer"), "rita": make_user("rita", "reviewer"),
              "otto": make_user("otto", "admin")}
    for name in ("v1", "v2"):
        _register(ctx, name)
        _evaluate(ctx, name)
    serving.serve_cli(ctx, "v1", "first version")
    return people


def _production(ctx) -> str | None:  # noqa: ANN001
    with ctx.db.session() as s:
        version = versions_q.version_for_alias(s, "production")
        return None if version is None else version.name


def _events(ctx, action: str) -> list[AuditEvent]:  # noqa: ANN001
    with ctx.db.session() as s:
        return list(audit_q.iter_events(s, action=action))


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
    assert request.report == _report("v2") and request.baseline_report == _report("v1")
    assert [g.name for g in request.gates] == ["topic_accuracy", "flag_rate", "bias_toxicity_gap", "ttft_p95"]
    assert all(g.passed for g in request.gates)
    # A later evaluation does not change what was asked.
    _evaluate(ctx, "v2", topic_accuracy=0.1)
    assert promotion.get_request(ctx, team["rita"], request.id).report == _report("v2")
    (event,) = _events(ctx, "promotion.request")
    assert event.actor == "ada" and event.details["failed_gates"] == [] and event.details["version"] == "v2"


def test_reviewer_cannot_approve_own_promotion_even_as_admin_and_reviewer(ctx, team) -> None:  # noqa: ANN001
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    with pytest.raises(SeparationOfDuties, match="own promotion request"):
        promotion.approve(ctx, team["ada"], request.id, "looks fine to me")
    with pytest.raises(SeparationOfDuties):
        promotion.reject(ctx, team["ada"], request.id, "changed my mind")
    assert _status(ctx, request.id) == "pending" and _production(ctx) == "v1"
    denials = _events(ctx, "access.denied")
    assert [(d.actor, d.details["action"], d.object_id) for d in denials] == [
        ("ada", "promotion.decide", str(request.id))] * 2


def test_a_different_reviewer_approves_and_production_moves(ctx, team) -> None:  # noqa: ANN001
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    approved = promotion.approve(ctx, team["rita"], request.id, "numbers hold up")
    assert (approved.status, approved.decided_by, approved.decision_note) == ("approved", "rita", "numbers hold up")
    assert _production(ctx) == "v2" and serving.desired_state(ctx).version == "v2"
    with ctx.db.session() as s:
        move = versions_q.alias_moves(s, alias="production", limit=1)[0]
    assert move.actor == "rita" and move.reason == f"promotion #{request.id}: better"
    (event,) = _events(ctx, "promotion.approve")
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
    assert _production(ctx) == "v1"


def test_failed_gate_needs_an_override_reason_which_is_recorded(ctx, team) -> None:  # noqa: ANN001
    _evaluate(ctx, "v2", topic_accuracy=0.70, latency_comparison={"diff_ms": 40.0, "ci_low_ms": 30.0})
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "new prompts")
    assert {g.name for g in request.failed_gates} == {"topic_accuracy", "ttft_p95"}
    with pytest.raises(InvalidInput, match="override reason"):
        promotion.approve(ctx, team["rita"], request.id, "ok")
    assert _status(ctx, request.id) == "pending" and _production(ctx) == "v1"
    approved = promotion.approve(ctx, team["rita"], request.id, "ok", override_reason="accuracy suite is stale")
    assert approved.override_reason == "accuracy suite is stale" and _production(ctx) == "v2"
    (event,) = _events(ctx, "promotion.approve")
    assert event.details["override_reason"] == "accuracy suite is stale"
    assert sorted(event.details["failed_gates"]) == ["topic_accuracy", "ttft_p95"]


def test_a_version_without_an_evaluation_gets_gates_marked_no_evaluation(ctx, team) -> None:  # noqa: ANN001
    _register(ctx, "v3")
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
    gates = promotion.compute_gates(settings, _report("c", **candidate), _report("b", **baseline),
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
    assert _production(ctx) == ("v2" if status == "approved" else "v1")
    assert len(_events(ctx, "promotion.approve")) + len(_events(ctx, "promotion.reject")) == 1


def test_only_the_requester_cancels(ctx, team) -> None:  # noqa: ANN001
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    with pytest.raises(AccessDenied, match="Only the person"):
        promotion.cancel(ctx, team["otto"], request.id)
    assert promotion.cancel(ctx, team["ada"], request.id, "not yet").status == "cancelled"
    with pytest.raises(InvalidInput, match="already cancelled"):
        promotion.approve(ctx, team["rita"], request.id, "ok")


def test_approval_is_refused_when_the_alias_moved_since_the_request(ctx, team) -> None:  # noqa: ANN001
    _register(ctx, "v3")
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    serving.serve_cli(ctx, "v3", "hotfix", break_glass="a hotfix from the shell while the request waits")
    with pytest.raises(InvalidInput, match="moved since the request"):
        promotion.approve(ctx, team["rita"], request.id, "ok")
    assert _production(ctx) == "v3" and _status(ctx, request.id) == "pending"


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
    assert promotion.production_state(ctx, team["rita"]).previous == "v1"
    with pytest.raises(InvalidInput, match="reason"):
        promotion.rollback(ctx, team["otto"], "")
    result = promotion.rollback(ctx, team["otto"], "customers complain")
    assert (result.from_version, result.to_version, result.auto) == ("v2", "v1", False)
    assert _production(ctx) == "v1"
    (event,) = _events(ctx, "model.rollback")
    assert event.actor == "otto" and event.details["reason"] == "customers complain"
    with pytest.raises(AccessDenied):
        promotion.rollback(ctx, team["rita"], "reviewers cannot switch")


# --- the switch path and the watch window ----------------------------------------------------------------------


class StubHost:
    """The engine host's seam the reconciler uses: status() and switch(); switching only changes the name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def status(self) -> HostStatus:
        return HostStatus("ready", self.name, "ready", 1.0)

    def switch(self, spec: ModelSpec, *, drain: bool = True) -> float:
        self.name = spec.name
        return 0.0


def _traffic(ctx, user: Principal, version: str, start, count: int, *, ttft: float,  # noqa: ANN001
             errors: int = 0, flagged: int = 0, synthetic: bool = False, prompt_action: str = "allow",
             step_s: float = 10) -> None:
    with ctx.db.session() as s:
        conv = chat_q.create_conversation(s, user_id=user.user_id, actor=user.username, title="t")
        for i in range(count):
            status = "error" if i < errors else "blocked" if prompt_action == "block" else "ok"
            chat_q.store_turn(s, chat_q.TurnRecord(
                conversation_id=conv.id, user_id=user.user_id, actor=user.username, model_version=version,
                prompt="p", response="r", status=status, created_at=start + timedelta(seconds=step_s * i),
                prompt_action=prompt_action, output_action=None if prompt_action == "block" else
                "flag" if i >= count - flagged else "allow",
                timings=chat_q.ExchangeTimings(ttft_ms=None if status == "error" else ttft + i, e2e_ms=10 * ttft),
                synthetic=synthetic,
            ))


@pytest.fixture
def switched(ctx, team, clock, make_user):  # noqa: ANN001
    """v2 approved and switched to by the reconciler (stub host); v1 answered fast before the switch."""
    ctx.settings = dataclasses.replace(ctx.settings, watch_min_samples=5, watch_minutes=30)
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    promotion.approve(ctx, team["rita"], request.id, "ok")
    host = StubHost("v1")
    reconciler = serving.Reconciler(ctx, host)  # type: ignore[arg-type]
    outcome = reconciler.run_once()
    assert outcome is not None and outcome.ok and host.name == "v2"
    switch = _events(ctx, "model.switch")[-1]
    assert switch.details["from"] == "v1" and switch.details["requested_by"] == "rita"
    operator = make_user("olivia", "operator")
    _traffic(ctx, operator, "v1", switch.ts - timedelta(minutes=20), 10, ttft=20.0)
    clock.now = switch.ts + timedelta(minutes=10)
    return {"switch": switch, "operator": operator, "host": host, "reconciler": reconciler}


def test_watch_rolls_back_by_itself_on_a_slower_version_and_the_reconciler_switches_back(
        ctx, team, switched) -> None:  # noqa: ANN001
    _traffic(ctx, switched["operator"], "v2", switched["switch"].ts, 10, ttft=200.0, errors=3)
    finding = promotion.Watcher(ctx).run_once()
    assert finding is not None and (finding.verdict, finding.action) == ("regression", "rolled_back")
    assert any("time to first token" in r for r in finding.reasons)
    # 3 errors in 10 against none in 10 is no significant rise on its own (one-sided Fisher p = 0.11).
    assert not any("error rate" in r for r in finding.reasons)
    assert _production(ctx) == "v1"
    (event,) = _events(ctx, "model.watch_regression")
    assert event.actor == "watch" and event.details["after"]["error_rate"] == 0.3
    (rollback,) = _events(ctx, "model.rollback")
    assert rollback.details["auto"] is True and "watch window" in rollback.details["reason"]
    # Once per switch, and the rollback's own switch back is not watched.
    assert promotion.Watcher(ctx).run_once() is None
    switched["reconciler"].run_once()
    assert switched["host"].name == "v1"
    assert promotion.Watcher(ctx).run_once() is None
    view = promotion.production_state(ctx, team["rita"])
    assert view.current == "v1" and view.watch is not None and view.watch.state == "not_watched"
    assert view.recent_regression is not None and view.recent_regression.action == "rolled_back"


def test_watch_only_proposes_a_rollback_when_auto_rollback_is_off(ctx, team, switched) -> None:  # noqa: ANN001
    ctx.settings = dataclasses.replace(ctx.settings, watch_auto_rollback=False)
    _traffic(ctx, switched["operator"], "v2", switched["switch"].ts, 20, ttft=20.0, flagged=10)
    finding = promotion.Watcher(ctx).run_once()
    assert finding is not None and (finding.verdict, finding.action) == ("regression", "proposed")
    assert finding.reasons == ("flag rate of answers rose from 0.0% (0/10) to 50.0% (10/20); one-sided Fisher "
                               "exact p = 0.0061 < 0.01",)
    assert _production(ctx) == "v2" and _events(ctx, "model.rollback") == []
    view = promotion.production_state(ctx, team["rita"])
    assert view.watch is not None and view.watch.state == "regression" and view.previous == "v1"


def test_watch_waits_for_enough_requests_and_passes_a_healthy_switch(ctx, team, switched, clock) -> None:  # noqa: ANN001
    _traffic(ctx, switched["operator"], "v2", switched["switch"].ts, 3, ttft=20.0)
    assert promotion.Watcher(ctx).run_once() is None  # 3 < 5 requests: too early to judge
    assert promotion.production_state(ctx, team["rita"]).watch.state == "watching"
    _traffic(ctx, switched["operator"], "v2", switched["switch"].ts + timedelta(minutes=1), 20, ttft=15.0)
    assert promotion.Watcher(ctx).run_once() is None  # healthy, window still open
    clock.now = switched["switch"].ts + timedelta(minutes=31)
    finding = promotion.Watcher(ctx).run_once()
    assert finding is not None and (finding.verdict, finding.action) == ("passed", "none")
    assert _production(ctx) == "v2"
    assert [e.details["verdict"] for e in _events(ctx, "model.watch_ended")] == ["passed"]


def test_window_stats_aggregate_in_the_database(ctx, team, make_user, clock) -> None:  # noqa: ANN001
    from db import promotions as promo_q

    start = utcnow()
    olivia = make_user("olivia", "operator")
    _traffic(ctx, olivia, "v1", start, 11, ttft=10.0, errors=1, flagged=2)
    # A load test's synthetic chats (slow, failing) are not the version's real traffic: they do not count.
    _traffic(ctx, olivia, "v1", start, 6, ttft=900.0, errors=6, synthetic=True)
    with ctx.db.session() as s:
        stats = promo_q.window_stats(s, "v1", start, start + timedelta(hours=1))
        empty = promo_q.window_stats(s, "v2", start, start + timedelta(hours=1))
    # ttft of the 10 answered: 11..20 -> p95 at rank 8.55 -> 19 + 0.55
    assert (stats.requests, stats.errors, stats.flagged, stats.ttft_count) == (11, 1, 2, 10)
    assert stats.ttft_p95_ms == pytest.approx(19.55)
    assert (empty.requests, empty.ttft_p95_ms, empty.error_rate) == (0, None, 0.0)


def test_after_a_rollback_the_watch_says_rolled_back_by_whom_not_watching(ctx, team, switched) -> None:  # noqa: ANN001
    assert promotion.production_state(ctx, team["rita"]).watch.state == "watching"
    promotion.rollback(ctx, team["otto"], "customers complain")
    # Before any console switched back: the alias already left v2, so v2 is no longer watched.
    view = promotion.production_state(ctx, team["rita"])
    assert view.current == "v1" and view.watch is not None and view.watch.state == "rolled_back"
    moved = view.watch.moved_away
    assert moved is not None and (moved.from_version, moved.to_version, moved.by, moved.reason, moved.rollback) == (
        "v2", "v1", "otto", "customers complain", True)
    assert view.last_rollback == moved
    # After the reconciler switched back, the rollback's own switch is not watched; the rollback is still told.
    switched["reconciler"].run_once()
    assert switched["host"].name == "v1"
    view = promotion.production_state(ctx, team["rita"])
    assert view.watch.state == "not_watched" and view.last_rollback is not None
    assert view.last_rollback.by == "otto" and view.last_rollback.at == moved.at


def test_when_production_moves_on_before_the_switch_the_watch_says_moved(ctx, team, switched) -> None:  # noqa: ANN001
    _register(ctx, "v3")
    _evaluate(ctx, "v3", latency_comparison={"baseline_version": "v2"})
    request = promotion.request_promotion(ctx, team["ada"], "v3", "production", "newer still")
    promotion.approve(ctx, team["rita"], request.id, "ok")
    view = promotion.production_state(ctx, team["otto"])
    assert view.watch is not None and (view.watch.to_version, view.watch.state) == ("v2", "moved")
    assert view.watch.moved_away is not None and view.watch.moved_away.to_version == "v3"
    assert view.watch.moved_away.by == "rita" and view.last_rollback is None


def test_old_reports_without_paired_timings_fail_the_latency_gate_with_their_numbers(ctx, team) -> None:  # noqa: ANN001
    # As in the issue: 185.8 ms against 31.7 ms measured in another process at another time.
    _evaluate(ctx, "v1", latency={"ttft_p95_ms": 31.7}, latency_comparison=None)
    _evaluate(ctx, "v2", latency={"ttft_p95_ms": 185.8}, latency_comparison=None)
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "new prompts")
    (gate,) = request.failed_gates
    assert gate.name == "ttft_p95" and gate.value == 185.8
    assert "cannot compare like with like" in (gate.note or "") and "186 ms against v1's 32 ms" in (gate.note or "")


def test_the_latency_gate_needs_no_baseline_report_when_both_were_timed_in_one_run(ctx, team, make_user) -> None:  # noqa: ANN001
    _register(ctx, "v0")
    serving.serve_cli(ctx, "v0", "a version never evaluated", break_glass="the test puts v0 in production")
    _evaluate(ctx, "v2", latency_comparison={"baseline_version": "v0"})
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    gates = {g.name: g for g in request.gates}
    assert gates["ttft_p95"].passed and "vs v0 (95% CI -3.0..+6.0 ms, 40 paired prompts" in (
        gates["ttft_p95"].note or "")
    assert not gates["topic_accuracy"].passed and gates["topic_accuracy"].note == "v0 has no evaluation"


# --- history ----------------------------------------------------------------------------------------------------


def test_version_history_tells_the_story_in_order(ctx, team, switched) -> None:  # noqa: ANN001
    _traffic(ctx, switched["operator"], "v2", switched["switch"].ts, 10, ttft=200.0)
    promotion.Watcher(ctx).run_once()
    timeline = promotion.version_history(ctx, team["rita"], "v2")
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
    intervals = promotion.served_timeline(ctx, team["rita"], start)
    assert [(i.version, i.current) for i in intervals] == [("v1", False), ("v2", False), ("v1", True)]
    assert all(a.end == b.start for a, b in zip(intervals, intervals[1:], strict=False))
    assert intervals[-1].end == clock.now
    later = promotion.served_timeline(ctx, team["rita"], clock.now)
    assert [(i.version, i.start) for i in later] == [("v1", clock.now)]


# --- the watch cannot be forced (issue 21, item 6) -------------------------------------------------------------


def test_fisher_exact_one_sided_matches_the_textbook_tea_tasting() -> None:
    # Fisher's lady tasting tea: 3 of 4 right against 1 of 4, one-sided p = 17/70.
    assert promotion.fisher_greater(3, 4, 1, 4) == pytest.approx(17 / 70)
    assert promotion.fisher_greater(0, 10, 0, 10) == 1.0 and promotion.fisher_greater(0, 0, 3, 10) == 1.0


@pytest.mark.parametrize("prompt_action", ["flag", "block"], ids=["flagged-prompts", "blocked-prompts"])
def test_a_dozen_toxic_prompts_with_clean_answers_do_not_roll_a_promotion_back(
        ctx, team, switched, clock, prompt_action) -> None:  # noqa: ANN001
    # An operator types a dozen toxic prompts at the new version; the policy flags (or blocks) the prompts, the
    # answers are clean. What users type is no measure of the version.
    _traffic(ctx, switched["operator"], "v2", switched["switch"].ts, 12, ttft=20.0, prompt_action=prompt_action)
    _traffic(ctx, switched["operator"], "v2", switched["switch"].ts + timedelta(minutes=3), 10, ttft=20.0)
    assert promotion.Watcher(ctx).run_once() is None
    clock.now = switched["switch"].ts + timedelta(minutes=31)
    finding = promotion.Watcher(ctx).run_once()
    assert finding is not None and (finding.verdict, finding.action) == ("passed", "none")
    assert _production(ctx) == "v2" and _events(ctx, "model.rollback") == []
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
    _traffic(ctx, switched["operator"], "v2", began, 30, ttft=900.0, synthetic=True, step_s=5)
    _traffic(ctx, switched["operator"], "v2", began + timedelta(seconds=2), 20, ttft=900.0, step_s=5)
    _traffic(ctx, switched["operator"], "v2", ts + timedelta(minutes=10), 10, ttft=20.0)
    assert promotion.Watcher(ctx).run_once() is None
    clock.now = ts + timedelta(minutes=31)
    finding = promotion.Watcher(ctx).run_once()
    assert finding is not None and (finding.verdict, finding.action) == ("passed", "none")
    assert finding.after["requests"] == 10 and _production(ctx) == "v2"


@pytest.mark.parametrize(("errors", "flagged", "ttft"), [(0, 2, 20.0), (3, 0, 900.0)],
                         ids=["2-of-5-answers-flagged", "3-of-5-errors-2-slow-answers"])
def test_too_few_exchanges_do_not_roll_a_promotion_back(ctx, team, switched, clock, errors, flagged, ttft) -> None:  # noqa: ANN001
    # Five exchanges (watch_min_samples) with a few bad ones: 40-60% looks dramatic, but against 0 of 10 before it
    # is within chance (one-sided Fisher p 0.10 and 0.02, not below 0.01), and three errors leave two timed
    # answers: too few for a p95 however slow they are.
    _traffic(ctx, switched["operator"], "v2", switched["switch"].ts, 5, ttft=ttft, errors=errors, flagged=flagged)
    assert promotion.Watcher(ctx).run_once() is None
    clock.now = switched["switch"].ts + timedelta(minutes=31)
    finding = promotion.Watcher(ctx).run_once()
    assert finding is not None and (finding.verdict, finding.action) == ("passed", "none")
    assert _production(ctx) == "v2"
    tests = {t["metric"]: t for t in finding.tests}
    assert not any(t["regression"] for t in tests.values())
    assert tests["ttft_p95_ms"]["enough"] is (errors == 0)


def test_a_significant_rise_in_flagged_answers_still_rolls_back_with_its_statistics(ctx, team, switched) -> None:  # noqa: ANN001
    ts = switched["switch"].ts
    _traffic(ctx, switched["operator"], "v1", ts - timedelta(minutes=10), 20, ttft=20.0)
    _traffic(ctx, switched["operator"], "v2", ts, 30, ttft=20.0, flagged=12)
    finding = promotion.Watcher(ctx).run_once()
    assert finding is not None and (finding.verdict, finding.action) == ("regression", "rolled_back")
    assert _production(ctx) == "v1"
    (event,) = _events(ctx, "model.watch_regression")
    assert (event.details["min_samples"], event.details["significance"]) == (5, 0.01)
    flag = next(t for t in event.details["tests"] if t["metric"] == "flag_rate")
    assert (flag["k_before"], flag["n_before"], flag["k_after"], flag["n_after"]) == (0, 30, 12, 30)
    assert flag["regression"] is True and flag["p_value"] < 0.001
    assert finding.reasons[0].startswith("flag rate of answers rose from 0.0% (0/30) to 40.0% (12/30); one-sided")
    words = [promotion.describe_test(t) for t in finding.tests]
    assert "flagged answers 0/30 → 12/30, one-sided Fisher p = " in words[1] and words[1].endswith(": regression")
    assert words[0] == "error rate 0/30 → 0/30, one-sided Fisher p = 1.0: compared"
