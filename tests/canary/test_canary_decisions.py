"""Canary decisions (services/canary.py): the sequential test against known cases and, by simulation, its error
level however often it is looked at; the judge on scripted traffic whose answer is known (worse candidates are
rolled back, an equal one is promoted, a time box without enough traffic rolls back undecided, the live version
moving ends the canary); stopping a canary by hand; role checks; two judges on one database deciding once.
Services over a real SQLite file, the canary started by the real request and approval."""

from __future__ import annotations

import bisect
import dataclasses
import math
import random
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest

from console.services import canary, promotion, serving
from console.services.access import Principal
from console.services.canary import CanaryJudge, CanaryPlan, MetricResult
from console.services.context import AppContext
from console.services.errors import AccessDenied, InvalidInput, NotFound
from db import audit as audit_q
from db import canary as canary_q
from db import chat as chat_q
from db.tables import PromotionRequest
from tests.models.promotion_support import evaluate, events, production, register_version

PLAN = CanaryPlan(share=0.2, minutes=60, flag_margin=0.05, error_margin=0.02, ttft_margin=0.2, alpha=0.05,
                  min_exchanges=50)


# --- the test itself -------------------------------------------------------------------------------------------


def test_the_confidence_sequence_radius_is_the_normal_mixture_boundary() -> None:
    # v = 0.001, tau^2 = 0.0004, alpha = 0.05: sqrt(0.001 * 3.5 * (log(1.4) + 2 log 20)) = 0.14882...
    assert canary.cs_radius(0.001, 0.0004, 0.05) == pytest.approx(0.14882, abs=1e-5)
    assert canary.cs_radius(0.0, 0.0004, 0.05) == math.inf
    # Tighter with more data, wider with a smaller error level.
    assert canary.cs_radius(1e-4, 4e-4, 0.05) < canary.cs_radius(1e-3, 4e-4, 0.05)
    assert canary.cs_radius(1e-4, 4e-4, 0.01) > canary.cs_radius(1e-4, 4e-4, 0.05)
    assert canary.rate_variance(0, 100) > 0  # zero events still vary
    assert canary.rate_variance(0, 0) == math.inf


@pytest.mark.parametrize(
    ("counts", "verdict"),
    [
        pytest.param((0, 0, 0, 0), "too_few", id="no-exchanges-at-all"),
        pytest.param((0, 10, 0, 10), "too_few", id="zero-events-tiny-samples"),
        pytest.param((3, 10, 0, 90), "too_few", id="three-of-ten-below-the-minimum"),
        pytest.param((0, 300, 0, 2000), "no_worse", id="zero-events-enough-samples"),
        pytest.param((5, 100, 0, 100), "undecided", id="five-in-a-hundred-against-none-is-not-enough-yet"),
        pytest.param((10, 100, 0, 100), "worse", id="ten-in-a-hundred-against-none-is"),
        pytest.param((60, 300, 30, 300), "worse", id="double-the-rate"),
        pytest.param((6, 300, 6, 300), "no_worse", id="equal-low-rates"),
        pytest.param((30, 300, 30, 300), "undecided", id="equal-rates-too-noisy-for-the-margin-yet"),
        pytest.param((3, 300, 9, 300), "no_worse", id="a-better-candidate"),
    ],
)
def test_rate_test_known_cases(counts: tuple[int, int, int, int], verdict: str) -> None:
    k_c, n_c, k_l, n_l = counts
    result = canary.rate_test("flag_rate", k_c, n_c, k_l, n_l, margin=0.05, alpha=0.05, min_n=50)
    assert result.verdict == verdict, result.text
    assert result.candidate_n == n_c and result.live_n == n_l
    if n_c and n_l:
        assert result.lower is not None and result.upper is not None and result.difference is not None
        assert result.lower < result.difference < result.upper
        assert result.difference == pytest.approx(k_c / n_c - k_l / n_l)
    else:
        assert result.difference is None and "no exchanges" in result.text
    words = {"worse": "shown worse", "no_worse": "shown no worse", "undecided": "not decided yet",
             "too_few": "too few exchanges"}
    assert words[verdict] in result.text and "output flag rate" in result.text.lower()


def test_rate_test_words_have_units() -> None:
    result = canary.rate_test("error_rate", 90, 300, 30, 300, margin=0.02, alpha=0.05, min_n=50)
    assert result.text.startswith("Error rate: candidate 30.0 % (90/300), live 10.0 % (30/300); difference "
                                  "+20.0 percentage points (95% bounds at every look: ")
    assert result.text.endswith("shown worse (even the lowest plausible difference is above 0).")


@pytest.mark.parametrize(
    ("slower", "timed", "live_timed", "verdict"),
    [
        pytest.param(0, 0, 500, "too_few", id="no-candidate-answers"),
        pytest.param(0, 20, 500, "too_few", id="below-the-minimum"),
        pytest.param(0, 300, 500, "no_worse", id="none-slower-than-the-threshold"),
        pytest.param(90, 300, 500, "worse", id="thirty-percent-slower"),
        pytest.param(15, 300, 500, "undecided", id="exactly-five-percent"),
        pytest.param(0, 300, 20, "too_few", id="live-arm-too-small"),
    ],
)
def test_ttft_test_known_cases(slower: int, timed: int, live_timed: int, verdict: str) -> None:
    result = canary.ttft_test(slower, timed, 300.0 if timed else None, 200.0, live_timed, margin=0.2,
                              alpha=0.05, min_n=50)
    assert result.verdict == verdict, result.text
    if timed:
        assert result.threshold_ms == pytest.approx(240.0) and "240 ms" in result.text
        assert result.text.startswith("P95 time to first token: candidate 300 ms, live 200 ms;")
    no_live = canary.ttft_test(0, 100, 300.0, None, 0, margin=0.2, alpha=0.05, min_n=50)
    assert no_live.verdict == "too_few" and no_live.difference is None


def _result(verdict: str, metric: str = "flag_rate") -> MetricResult:
    return MetricResult(metric, metric, None, None, None, None, None, 0.02, 100, 100, verdict, f"{metric} {verdict}")


@pytest.mark.parametrize(
    ("verdicts", "decision"),
    [
        pytest.param(("worse", "undecided"), "rollback", id="one-worse-rolls-back-at-once"),
        pytest.param(("worse", "no_worse"), "rollback", id="worse-beats-no-worse"),
        pytest.param(("no_worse", "no_worse"), "promote", id="all-no-worse"),
        pytest.param(("no_worse", "undecided"), "continue", id="one-open"),
        pytest.param(("no_worse", "too_few"), "continue", id="one-too-few"),
        pytest.param((), "continue", id="no-metrics"),
    ],
)
def test_decide(verdicts: tuple[str, ...], decision: str) -> None:
    got, reason = canary.decide([_result(v, f"m{i}") for i, v in enumerate(verdicts)])
    assert got == decision
    if decision == "rollback":
        assert reason.startswith("shown worse: m0 worse")


def _wrong_rollbacks(runs: int, looks: int, seed: int, alpha: float) -> tuple[float, float]:
    """Equal arms (5 % flags), 10 % of exchanges to the candidate, a look every 200 exchanges: the share of
    canaries wrongly rolled back by the confidence sequence, and by a one-sided z-test at ``alpha`` looked at as
    often."""
    rng = random.Random(seed)
    z = 1.6448536269514722  # one-sided 95 %
    wrong_cs = wrong_naive = 0
    for _ in range(runs):
        k_c = n_c = k_l = n_l = 0
        cs_hit = naive_hit = False
        for _ in range(looks):
            for _ in range(200):
                flagged = rng.random() < 0.05
                if rng.random() < 0.1:
                    n_c, k_c = n_c + 1, k_c + flagged
                else:
                    n_l, k_l = n_l + 1, k_l + flagged
            result = canary.rate_test("flag_rate", k_c, n_c, k_l, n_l, margin=0.02, alpha=alpha, min_n=50)
            cs_hit = cs_hit or result.verdict == "worse"
            v = canary.rate_variance(k_c, n_c) + canary.rate_variance(k_l, n_l)
            naive_hit = naive_hit or (min(n_c, n_l) >= 50 and (k_c / n_c - k_l / n_l) / math.sqrt(v) > z)
        wrong_cs += cs_hit
        wrong_naive += naive_hit
    return wrong_cs / runs, wrong_naive / runs


def test_the_test_keeps_its_error_level_however_often_it_is_looked_at() -> None:
    alpha = 0.05
    sequential, naive = _wrong_rollbacks(runs=300, looks=60, seed=24, alpha=alpha)
    bound = alpha + 0.03  # simulation noise of 300 runs: one standard error of a 5 % share is 1.3 points
    assert sequential <= bound
    # The same bound fails a fixed-sample test peeked at every round: peeking is what the sequence protects from.
    assert naive > bound


def _p95(ordered: list[float]) -> float:
    rank = 0.95 * (len(ordered) - 1)
    low = int(rank)
    return ordered[low] + (ordered[min(low + 1, len(ordered) - 1)] - ordered[low]) * (rank - low)


def _wrong_latency_rollbacks(runs: int, most: int, seed: int) -> float:
    """Equal log-normal TTFTs on both arms, a look after every 15 % more answers up to ``most`` per arm (the live
    p95 re-estimated at each look, as the judge does): the share of canaries rolled back on latency."""
    rng = random.Random(seed)
    wrong = 0
    for _ in range(runs):
        candidate: list[float] = []
        live: list[float] = []
        target = 100
        while len(candidate) < most:
            while len(candidate) < target:
                bisect.insort(candidate, 300 * math.exp(rng.gauss(0, 0.4)))
                bisect.insort(live, 300 * math.exp(rng.gauss(0, 0.4)))
            live_p95 = _p95(live)
            slower = len(candidate) - bisect.bisect_right(candidate, 1.2 * live_p95)
            result = canary.ttft_test(slower, len(candidate), _p95(candidate), live_p95, len(live), margin=0.2,
                                      alpha=0.05, min_n=100)
            if result.verdict == "worse":
                wrong += 1
                break
            target = int(target * 1.15)
    return wrong / runs


def test_the_latency_test_does_not_roll_back_an_equal_candidate_for_the_noise_of_the_live_p95() -> None:
    assert _wrong_latency_rollbacks(runs=100, most=2000, seed=24) <= 0.05 + 0.03


# --- the judge on scripted traffic -----------------------------------------------------------------------------


@pytest.fixture
def team(ctx: AppContext, make_user: Callable[..., Principal]) -> dict[str, Principal]:
    """ada (admin, reviewer) requests, rita (reviewer) approves, otto (admin), olivia (operator) chats; v1 holds
    production, v2 and v3 are evaluated candidates."""
    people = {"ada": make_user("ada", "admin", "reviewer"), "rita": make_user("rita", "reviewer"),
              "otto": make_user("otto", "admin"), "olivia": make_user("olivia", "operator")}
    for name in ("v1", "v2", "v3"):
        register_version(ctx, name)
        evaluate(ctx, name)
    serving.serve(ctx, Principal.shell(ctx), "v1", "first version")
    return people


def _start(ctx: AppContext, team: dict[str, Principal], plan: CanaryPlan = PLAN, version: str = "v2") -> int:
    request = promotion.request_promotion(ctx, team["ada"], version, "production", "try it", plan=plan)
    started = promotion.approve(ctx, team["rita"], request.id, "go")
    assert started.status == "canary"
    return request.id


def _arm(ctx: AppContext, user: Principal, version: str, start: datetime, n: int, *, flag_every: int = 0,
         error_every: int = 0, ttft: Callable[[int], float] = lambda i: 100.0 + i % 100) -> None:
    """``n`` exchanges of one arm, one a second from ``start``: every ``flag_every``-th answer flagged by the policy,
    every ``error_every``-th an error; time to first token ``ttft(i)``."""
    with ctx.db.session() as s:
        conv = chat_q.create_conversation(s, user_id=user.user_id, actor=user.username, title="t")
        for i in range(n):
            error = bool(error_every) and i % error_every == error_every - 1
            flagged = bool(flag_every) and i % flag_every == flag_every - 1
            chat_q.store_turn(s, chat_q.TurnRecord(
                conversation_id=conv.id, user_id=user.user_id, actor=user.username, model_version=version,
                prompt="p", response="r", status="error" if error else "ok", created_at=start + timedelta(seconds=i),
                prompt_action="allow", output_action="flag" if flagged else "allow",
                timings=chat_q.ExchangeTimings(ttft_ms=None if error else ttft(i), e2e_ms=500.0)))


def _request(ctx: AppContext, request_id: int) -> PromotionRequest:
    with ctx.db.session() as s:
        row = s.get(PromotionRequest, request_id)
        assert row is not None
        s.expunge(row)
        return row


def _chain_ok(ctx: AppContext) -> bool:
    with ctx.db.session(readonly=True) as s:
        return audit_q.verify_chain(s).ok


def _traffic(ctx, team, clock, *, n: int = 300, live_flag_every: int = 50, **candidate) -> None:  # noqa: ANN001
    start = clock.now + timedelta(seconds=1)
    _arm(ctx, team["olivia"], "v1", start, n, flag_every=live_flag_every)
    _arm(ctx, team["olivia"], "v2", start, n, **{"flag_every": 50, **candidate})
    clock.now = start + timedelta(seconds=n + 1)


def test_an_equal_candidate_is_promoted_audited_and_production_moves(ctx, team, clock) -> None:  # noqa: ANN001
    request_id = _start(ctx, team)
    judge = CanaryJudge(ctx)
    _arm(ctx, team["olivia"], "v2", clock.now + timedelta(seconds=1), 20)
    clock.advance(minutes=1)
    first = judge.run_once()
    assert first is not None and first.decision == "continue"  # 20 and 0 exchanges: too few
    assert all(m.verdict == "too_few" for m in first.metrics)
    _traffic(ctx, team, clock)
    found = judge.run_once()
    assert found is not None and found.decision == "promote", found.reason
    assert [m.verdict for m in found.metrics] == ["no_worse"] * 3
    assert (found.candidate_n, found.live_n) == (320, 300)
    assert production(ctx) == "v2"
    row = _request(ctx, request_id)
    assert row.status == "approved" and row.canary_result is not None
    assert row.canary_result["decision"] == "promote"
    (event,) = events(ctx, "promotion.canary_promoted")
    assert event.actor == "canary" and event.details["version"] == "v2" and event.details["live"] == "v1"
    assert event.details["candidate_n"] == 320 and len(event.details["metrics"]) == 3
    move = events(ctx, "model.alias")[-1]
    assert move.details["to"] == "v2" and move.details["reason"].startswith(f"canary #{request_id}: ")
    assert _chain_ok(ctx)
    with ctx.db.session() as s:
        assert [c.decision for c in canary_q.checks(s, request_id)] == ["promote", "continue"]
    assert judge.run_once() is None  # nothing runs any more
    view = canary.canary_view(ctx, team["rita"], request_id)
    assert view is not None and not view.running and view.decision == "promote"
    assert [r.decision for r in view.rounds] == ["promote", "continue"]
    flags = view.metrics[0]
    assert (flags.label, flags.candidate, flags.live) == ("output flag rate", "1.9 % (6/320)", "2.0 % (6/300)")
    assert flags.margin == "+5 percentage points" and flags.verdict == "no_worse"
    assert flags.bounds.endswith("percentage points") and "shown no worse" in flags.text
    ttft = view.metrics[2]
    assert ttft.candidate.endswith(" ms") and ttft.margin == "+20% on the live p95"


@pytest.mark.parametrize(
    ("candidate", "worse"),
    [
        pytest.param({"flag_every": 10}, ["flag_rate"], id="flags-five-times-as-often"),
        pytest.param({"flag_every": 10, "live_flag_every": 20, "n": 700}, ["flag_rate"], id="flags-twice-as-often"),
        pytest.param({"error_every": 10}, ["error_rate"], id="errors"),
        pytest.param({"ttft": lambda i: 1.5 * (100.0 + i % 100)}, ["p95_ttft"], id="p95-ttft-half-again-slower"),
    ],
)
def test_a_worse_candidate_is_rolled_back(ctx, team, clock, candidate, worse) -> None:  # noqa: ANN001
    request_id = _start(ctx, team)
    _traffic(ctx, team, clock, **candidate)
    found = CanaryJudge(ctx).run_once()
    assert found is not None and found.decision == "rollback", found.reason
    assert [m.metric for m in found.metrics if m.verdict == "worse"] == worse
    assert not found.undecided and production(ctx) == "v1"
    assert _request(ctx, request_id).status == "rolled_back"
    (event,) = events(ctx, "promotion.canary_rolled_back")
    assert event.details["worse"] == worse and event.details["version"] == "v2" and event.actor == "canary"
    assert event.details["reason"].startswith("shown worse: ")
    assert _chain_ok(ctx)
    view = canary.canary_view(ctx, team["rita"], request_id)
    assert view is not None and view.decision == "rollback" and view.status == "rolled_back"
    assert [m.verdict for m in view.metrics if m.metric in worse] == ["worse"]


def test_too_little_traffic_when_the_time_box_ends_rolls_back_undecided(ctx, team, clock) -> None:  # noqa: ANN001
    request_id = _start(ctx, team)
    _traffic(ctx, team, clock, n=20)
    judge = CanaryJudge(ctx)
    assert judge.run_once().decision == "continue"  # type: ignore[union-attr]
    # Exchanges after the time box do not count: the canary is judged on its own minutes.
    _arm(ctx, team["olivia"], "v2", clock.now + timedelta(minutes=61), 500)
    clock.advance(minutes=62)
    found = judge.run_once()
    assert found is not None and (found.decision, found.undecided) == ("rollback", True)
    assert found.candidate_n == 20 and found.reason.startswith("the time box (60 min) ended undecided")
    assert _request(ctx, request_id).status == "rolled_back" and production(ctx) == "v1"
    (event,) = events(ctx, "promotion.canary_rolled_back")
    assert event.details["undecided"] is True and "time box" in event.details["reason"]


def test_the_live_version_moving_mid_canary_ends_it(ctx, team, clock) -> None:  # noqa: ANN001
    request_id = _start(ctx, team)
    _traffic(ctx, team, clock, n=30)
    serving.serve(ctx, Principal.shell(ctx), "v3", "hotfix", break_glass="v1 leaks data")
    found = CanaryJudge(ctx).run_once()
    assert found is not None and found.decision == "rollback"
    assert found.reason == "the live version moved during the canary: production now points at v3, not v1"
    assert _request(ctx, request_id).status == "rolled_back" and production(ctx) == "v3"
    assert events(ctx, "promotion.canary_rolled_back")[0].details["reason"] == found.reason


def test_an_approver_stops_a_canary_and_other_roles_cannot(ctx, team, clock) -> None:  # noqa: ANN001
    request_id = _start(ctx, team)
    _traffic(ctx, team, clock, n=30)
    with pytest.raises(AccessDenied):
        canary.end_canary(ctx, team["olivia"], request_id, "stop")
    with pytest.raises(AccessDenied):
        canary.canary_view(ctx, team["olivia"], request_id)
    with pytest.raises(InvalidInput, match="The note saying why is required"):
        canary.end_canary(ctx, team["otto"], request_id, "  ")
    running = canary.canary_view(ctx, team["rita"], request_id)
    assert running is not None and running.running and running.time_left == timedelta(minutes=60) - timedelta(
        seconds=32)
    assert running.metrics == () and "has not looked yet" in running.reason
    view = canary.end_canary(ctx, team["otto"], request_id, "users complain")
    assert view.status == "rolled_back" and not view.running and view.decision == "rollback"
    assert view.reason == "stopped by otto" and view.candidate_n == 30
    (event,) = events(ctx, "promotion.canary_stopped")
    assert event.actor == "otto" and event.details["note"] == "users complain"
    assert "users complain" not in str(_request(ctx, request_id).canary_result)  # personal: only in the event
    assert audit_q.PERSONAL_DETAIL_KEYS["promotion.canary_stopped"] == ("note",)
    assert production(ctx) == "v1" and CanaryJudge(ctx).run_once() is None
    with pytest.raises(InvalidInput, match="is not a running canary"):
        canary.end_canary(ctx, team["otto"], request_id, "again")
    assert _chain_ok(ctx)
    plain = promotion.request_promotion(ctx, team["ada"], "v3", "staging", "for QA")
    assert canary.canary_view(ctx, team["rita"], plain.id) is None  # no plan, no canary
    with pytest.raises(InvalidInput, match="is not a running canary \\(it is pending\\)"):
        canary.end_canary(ctx, team["otto"], plain.id, "stop")
    with pytest.raises(NotFound):
        canary.canary_view(ctx, team["rita"], 999)


def test_two_judges_on_one_database_decide_once(ctx, team, clock) -> None:  # noqa: ANN001
    request_id = _start(ctx, team)
    _traffic(ctx, team, clock, flag_every=10)
    rounds = [CanaryJudge(ctx).run_round(), CanaryJudge(ctx).run_round()]
    assert sorted(r.ran for r in rounds) == [False, True]
    assert len(events(ctx, "promotion.canary_rolled_back")) == 1
    with ctx.db.session() as s:
        assert len(canary_q.checks(s, request_id)) == 1
    # Even without the lease (its interval over), a second look finds the canary decided and does nothing.
    assert CanaryJudge(ctx).run_once() is None


# --- PostgreSQL: two judges looking at once ----------------------------------------------------------------------


@pytest.fixture
def pg_ctx(pg_db, tmp_path, clock) -> Iterator[AppContext]:  # noqa: ANN001
    from console.settings import Settings
    from tests.conftest import console_env

    settings = dataclasses.replace(Settings.from_env(console_env(tmp_path)), database_url=pg_db.config.url)
    yield AppContext(settings, pg_db, clock=clock)


@pytest.mark.postgres
def test_two_judges_looking_at_once_on_postgresql_promote_once(pg_ctx, clock) -> None:  # noqa: ANN001
    from console.services.auth import hash_password
    from db import users as users_q
    from tests.conftest import STRONG_PASSWORD

    ctx = pg_ctx
    people = {}
    for username, roles in (("ada", ("admin", "reviewer")), ("rita", ("reviewer",)), ("olivia", ("operator",))):
        with ctx.db.session() as s:
            user = users_q.create_user(s, username, hash_password(STRONG_PASSWORD), roles, actor="system")
            people[username] = Principal(user.id, user.username, frozenset(user.roles))
    for name in ("v1", "v2"):
        register_version(ctx, name)
        evaluate(ctx, name)
    serving.serve(ctx, Principal.shell(ctx), "v1", "first version")
    request_id = _start(ctx, people)
    _traffic(ctx, people, clock)
    barrier = threading.Barrier(2)
    found: list[object] = []

    def look() -> None:
        barrier.wait()
        found.append(CanaryJudge(ctx).run_once())  # run_once: no lease, so both really look

    threads = [threading.Thread(target=look) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    decided = [f for f in found if f is not None]
    assert len(found) == 2 and len(decided) == 1  # the request row's lock: the second sees it decided
    assert decided[0].decision == "promote"  # type: ignore[attr-defined]
    assert production(ctx) == "v2" and len(events(ctx, "promotion.canary_promoted")) == 1
    with ctx.db.session() as s:
        assert len(canary_q.checks(s, request_id)) == 1
    assert _chain_ok(ctx)
