"""Canary promotion requests: the plan is part of the request, frozen and approved with it by a second person;
approving starts the canary instead of moving production; one canary runs at a time. Services over a real SQLite
file (and two concurrent approvals on a real PostgreSQL). The decisions themselves are tests/canary/."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from console.services import canary, promotion, serving, timelines
from console.services.access import Principal
from console.services.canary import CanaryPlan
from console.services.context import AppContext
from console.services.errors import AccessDenied, InvalidInput, SeparationOfDuties
from db.tables import PromotionRequest
from tests.models.promotion_support import evaluate, events, production, register_version

PLAN = CanaryPlan(share=0.2, minutes=30, metrics=("flag_rate", "p95_ttft"), flag_margin=0.03, ttft_margin=0.25,
                  alpha=0.01, min_exchanges=50)


def _row(ctx, request_id: int) -> PromotionRequest:  # noqa: ANN001
    with ctx.db.session() as s:
        row = s.get(PromotionRequest, request_id)
        assert row is not None
        s.expunge(row)
        return row


def _requests(ctx) -> int:  # noqa: ANN001
    with ctx.db.session() as s:
        return s.query(PromotionRequest).count()


def test_a_canary_request_stores_its_plan_in_the_request_and_the_audit_event(ctx, team) -> None:  # noqa: ANN001
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "try it on a fifth", plan=PLAN)
    assert request.status == "pending" and request.is_canary and request.plan == PLAN
    assert _row(ctx, request.id).canary_plan == PLAN.to_dict()
    assert promotion.get_request(ctx, team["rita"], request.id).plan == PLAN
    (event,) = events(ctx, "promotion.request")
    assert event.details["canary_plan"] == PLAN.to_dict()
    words = promotion.describe_plan(PLAN)
    assert "20% of new conversations go to the candidate for up to 30 minutes" in words
    assert "output flag rate may be up to 3 percentage points higher" in words
    assert "p95 time to first token may be up to 25% higher" in words and "error rate" not in words
    assert "alpha) 0.01" in words and "50 exchanges per arm" in words
    plain = promotion.request_promotion(ctx, team["ada"], "v2", "staging", "for QA")
    assert plain.plan is None and not plain.is_canary


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"share": 0.9}, "The canary share must be between 0.01 and 0.5", id="share-too-large"),
        pytest.param({"share": "a tenth"}, "The canary share must be a number", id="share-not-a-number"),
        pytest.param({"minutes": 2}, "The canary duration \\(minutes\\) must be between 5", id="too-short"),
        pytest.param({"minutes": 7.5}, "must be a whole number", id="minutes-not-whole"),
        pytest.param({"metrics": []}, "Choose at least one canary metric", id="no-metric"),
        pytest.param({"metrics": ["latency"]}, "Unknown canary metric 'latency'", id="unknown-metric"),
        pytest.param({"flag_margin": 0}, "The flag rate margin must be between", id="flag-margin-zero"),
        pytest.param({"error_margin": float("nan")}, "The error rate margin must be a finite", id="error-margin-nan"),
        pytest.param({"ttft_margin": 9}, "The p95 TTFT margin must be between", id="ttft-margin-too-large"),
        pytest.param({"alpha": 0.5}, "The error level \\(alpha\\) must be between", id="alpha-too-large"),
        pytest.param({"min_exchanges": 3}, "The minimum exchanges per arm must be between", id="too-few"),
    ],
)
def test_a_bad_plan_field_gets_a_clear_error_and_stores_nothing(ctx, team, fields, message) -> None:  # noqa: ANN001
    # What the page does: the form's fields through parse_plan, then the request.
    with pytest.raises(InvalidInput, match=message):
        promotion.request_promotion(ctx, team["ada"], "v2", "production", "canary",
                                    plan=canary.parse_plan(**{**PLAN.to_dict(), **fields}))
    # A plan made without parse_plan is checked by the service all the same.
    with pytest.raises(InvalidInput, match=message):
        promotion.request_promotion(ctx, team["ada"], "v2", "production", "canary",
                                    plan=CanaryPlan(**{**PLAN.to_dict(), **fields}))
    assert _requests(ctx) == 0 and not events(ctx, "promotion.request")


def test_a_canary_is_only_for_production_and_needs_a_live_version(ctx, make_user) -> None:  # noqa: ANN001
    ada = make_user("ada", "admin")
    register_version(ctx, "v1")
    with pytest.raises(InvalidInput, match="No version holds production: a canary needs a live version"):
        promotion.request_promotion(ctx, ada, "v1", "production", "canary", plan=PLAN)
    with pytest.raises(InvalidInput, match="only for the production alias, not staging"):
        promotion.request_promotion(ctx, ada, "v1", "staging", "canary", plan=PLAN)
    assert _requests(ctx) == 0 and not events(ctx, "promotion.request")


def test_approval_by_another_person_starts_the_canary_and_production_stays(ctx, team, clock) -> None:  # noqa: ANN001
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "try it", plan=PLAN)
    started = promotion.approve(ctx, team["rita"], request.id, "watch it closely")
    assert (started.status, started.decided_by, started.decision_note) == ("canary", "rita", "watch it closely")
    assert started.canary_started_at == clock.now
    assert started.canary_ends_at == clock.now + timedelta(minutes=30)
    assert production(ctx) == "v1" and serving.desired_state(ctx).version == "v1"
    assert not events(ctx, "promotion.approve") and len(events(ctx, "model.alias")) == 1  # v1 served first
    (event,) = events(ctx, "promotion.canary_started")
    assert event.actor == "rita" and event.object_id == str(request.id)
    assert (event.details["version"], event.details["from"], event.details["plan"], event.details["note"]) == (
        "v2", "v1", PLAN.to_dict(), "watch it closely")
    with ctx.db.session() as s:
        running = canary.active_canary(s)
    assert running is not None
    assert (running.request_id, running.candidate, running.live, running.plan) == (request.id, "v2", "v1", PLAN)
    assert [r.id for r in promotion.list_requests(ctx, team["rita"], "canary")] == [request.id]
    # A running canary is decided by its test (or stopped), not by the request buttons.
    for decide in (lambda: promotion.reject(ctx, team["otto"], request.id, "no"),
                   lambda: promotion.cancel(ctx, team["ada"], request.id)):
        with pytest.raises(InvalidInput, match="already canary"):
            decide()
    # Nobody asks again for the version in canary meanwhile.
    with pytest.raises(InvalidInput, match="v2 is in canary"):
        promotion.request_promotion(ctx, team["otto"], "v2", "production", "all of it now")


def test_the_requester_cannot_approve_their_own_canary(ctx, team) -> None:  # noqa: ANN001
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "try it", plan=PLAN)
    with pytest.raises(SeparationOfDuties, match="own promotion request"):
        promotion.approve(ctx, team["ada"], request.id, "fine by me")
    row = _row(ctx, request.id)
    assert (row.status, row.canary_started_at) == ("pending", None)
    assert not events(ctx, "promotion.canary_started")


def test_a_failed_gate_needs_an_override_for_a_canary_too(ctx, team) -> None:  # noqa: ANN001
    evaluate(ctx, "v2", topic_accuracy=0.70)
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "try it", plan=PLAN)
    with pytest.raises(InvalidInput, match="override reason"):
        promotion.approve(ctx, team["rita"], request.id, "ok")
    assert _row(ctx, request.id).status == "pending"
    started = promotion.approve(ctx, team["rita"], request.id, "ok", override_reason="the canary will tell")
    assert started.status == "canary" and started.override_reason == "the canary will tell"
    (event,) = events(ctx, "promotion.canary_started")
    assert event.details["failed_gates"] == ["topic_accuracy"]


def test_a_second_canary_is_refused_while_one_runs(ctx, team) -> None:  # noqa: ANN001
    register_version(ctx, "v3")
    evaluate(ctx, "v3")
    first = promotion.request_promotion(ctx, team["ada"], "v2", "production", "v2 first", plan=PLAN)
    second = promotion.request_promotion(ctx, team["ada"], "v3", "production", "v3 too", plan=PLAN)
    promotion.approve(ctx, team["rita"], first.id, "go")
    with pytest.raises(InvalidInput, match=f"Canary #{first.id} is running; stop it or wait for its decision"):
        promotion.approve(ctx, team["otto"], second.id, "go too")
    assert _row(ctx, second.id).status == "pending" and len(events(ctx, "promotion.canary_started")) == 1


def test_only_admins_request_a_canary_and_only_reviewers_or_admins_approve_it(ctx, team, make_user) -> None:  # noqa: ANN001
    with pytest.raises(AccessDenied):
        promotion.request_promotion(ctx, team["rita"], "v2", "production", "x", plan=PLAN)
    with pytest.raises(AccessDenied):
        promotion.request_promotion(ctx, make_user("olga", "operator", "analyst"), "v2", "production", "x",
                                    plan=PLAN)
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "try it", plan=PLAN)
    with pytest.raises(AccessDenied):
        promotion.approve(ctx, make_user("opal", "operator", "analyst"), request.id, "x")
    assert _row(ctx, request.id).status == "pending"


def test_the_request_list_takes_every_status_and_refuses_others(ctx, team) -> None:  # noqa: ANN001
    for status in ("pending", "approved", "rejected", "cancelled", "canary", "rolled_back"):
        assert promotion.list_requests(ctx, team["rita"], status) == []
    with pytest.raises(InvalidInput, match="Unknown request status 'done'"):
        promotion.list_requests(ctx, team["rita"], "done")


def test_the_history_names_the_canary_approval(ctx, team) -> None:  # noqa: ANN001
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "try it", plan=PLAN)
    promotion.approve(ctx, team["rita"], request.id, "go")
    timeline = timelines.version_history(ctx, team["rita"], "v2")
    assert [t.kind for t in timeline] == ["registered", "evaluation", "request", "canary"]
    assert "canary request" in timeline[2].summary
    assert timeline[3].actor == "rita" and timeline[3].summary.startswith(
        f"request #{request.id} approved as a canary (20% of new conversations for up to 30 minutes): go")
    canary.end_canary(ctx, team["otto"], request.id, "enough")
    timeline = timelines.version_history(ctx, team["rita"], "v2")
    assert [t.kind for t in timeline][-2:] == ["canary", "rolled_back"]
    assert timeline[-1].actor == "otto" and timeline[-1].summary == (
        f"canary #{request.id} rolled back: stopped by otto (0 exchanges answered by v2, 0 by v1)")


# --- PostgreSQL: two approvals of two canaries at once -----------------------------------------------------------


@pytest.fixture
def pg_ctx(pg_db, tmp_path, clock) -> Iterator[AppContext]:  # noqa: ANN001
    from console.settings import Settings
    from tests.conftest import console_env

    settings = dataclasses.replace(Settings.from_env(console_env(tmp_path)), database_url=pg_db.config.url)
    yield AppContext(settings, pg_db, clock=clock)


def _user(ctx: AppContext, username: str, *roles: str) -> Principal:
    from console.services.auth import hash_password
    from db import users as users_q
    from tests.conftest import STRONG_PASSWORD

    with ctx.db.session() as s:
        user = users_q.create_user(s, username, hash_password(STRONG_PASSWORD), roles, actor="system")
        return Principal(user.id, user.username, frozenset(user.roles))


@pytest.mark.postgres
def test_two_canaries_approved_at_once_on_postgresql_only_one_starts(pg_ctx) -> None:  # noqa: ANN001
    ctx = pg_ctx
    ada, rita, otto = (_user(ctx, "ada", "admin"), _user(ctx, "rita", "reviewer"), _user(ctx, "otto", "admin"))
    for name in ("v1", "v2", "v3"):
        register_version(ctx, name)
        evaluate(ctx, name)
    serving.serve(ctx, Principal.shell(ctx), "v1", "first version")
    requests = [promotion.request_promotion(ctx, ada, name, "production", "canary", plan=PLAN)
                for name in ("v2", "v3")]
    barrier = threading.Barrier(2)
    outcomes: dict[str, Any] = {}

    def approve(who: Principal, request_id: int) -> None:
        barrier.wait()
        try:
            outcomes[who.username] = promotion.approve(ctx, who, request_id, "go")
        except InvalidInput as exc:
            outcomes[who.username] = exc

    threads = [threading.Thread(target=approve, args=(who, r.id)) for who, r in zip((rita, otto), requests,
                                                                                      strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [o for o in outcomes.values() if isinstance(o, promotion.RequestView)]
    refused = [o for o in outcomes.values() if isinstance(o, InvalidInput)]
    assert len(started) == 1 and len(refused) == 1 and "is running" in str(refused[0])
    assert [r.id for r in promotion.list_requests(ctx, rita, "canary")] == [started[0].id]
    assert len(events(ctx, "promotion.canary_started")) == 1 and production(ctx) == "v1"
