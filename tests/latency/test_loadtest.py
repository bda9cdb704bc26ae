"""Load tests from the console: real chats through the chat service on the tiny vLLM engine, real SQLite."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from sqlalchemy import select

from console.services import loadtest
from console.services.errors import AccessDenied, InvalidInput, ModelUnavailable, NotFound
from db import audit as audit_q
from db.tables import Exchange

LONG_RUN_S = 60  # long enough never to end by itself before the test stops it


@pytest.fixture
def load(ctx, engine_host, make_user):
    """An operator, an admin and a context whose host is the real engine; no run is left behind."""
    ctx.host_factory = lambda: engine_host
    # No pause between runs unless a test sets one: the runs of earlier tests in this process ended just now.
    ctx.settings = dataclasses.replace(ctx.settings, loadtest_cooldown_seconds=0)
    op = make_user("olivia", "operator")
    admin = make_user("ada", "admin")
    yield ctx, op, admin
    running = loadtest._current
    if running is not None and running.final is None:
        running.stop("test teardown")
        loadtest.wait_for_load(timeout=120)


def _exchanges(ctx, user_id: int) -> list[Exchange]:
    with ctx.db.session(readonly=True) as s:
        return list(s.scalars(select(Exchange).where(Exchange.user_id == user_id)))


def _events(ctx, action: str) -> list:
    with ctx.db.session(readonly=True) as s:
        return list(audit_q.iter_events(s, action=action))


def test_a_short_run_sends_synthetic_chats_and_reports_when_it_ends(load) -> None:
    ctx, op, _ = load
    run = loadtest.start_load(ctx, op, "support", 2, 3)
    assert (run.concurrency, run.seconds, run.model_version, run.started_by) == (2, 3, "tiny-test", "olivia")
    report = loadtest.wait_for_load(timeout=180)
    assert report is not None and report.state == "finished" and not report.running
    assert report.run == run
    assert report.requests >= 2  # each of the two workers sent at least one chat
    assert report.errors == 0 and report.by_status == {"ok": report.requests}
    assert report.elapsed_s >= 3
    assert report.ttft_p50_ms is not None and report.ttft_p95_ms >= report.ttft_p50_ms > 0
    assert report.e2e_p50_ms is not None and report.e2e_p95_ms >= report.e2e_p50_ms >= report.ttft_p50_ms
    assert report.output_tokens > 0 and report.output_tokens_per_s > 0

    exchanges = _exchanges(ctx, op.user_id)
    assert len(exchanges) == report.requests
    assert all(ex.synthetic for ex in exchanges)
    assert {ex.status for ex in exchanges} == {"ok"} and {ex.model_version for ex in exchanges} == {"tiny-test"}
    assert sum(ex.output_tokens for ex in exchanges) == report.output_tokens
    prompts = {p for p in loadtest.PROMPT_SETS["support"].prompts}
    assert {ex.prompt for ex in exchanges} <= prompts

    [start] = _events(ctx, "loadtest.start")
    [end] = _events(ctx, "loadtest.end")
    assert start.actor == end.actor == "olivia" and start.object_id == end.object_id == run.run_id
    assert start.details == {"prompt_set": "support", "concurrency": 2, "seconds": 3, "model_version": "tiny-test"}
    assert end.details["requests"] == report.requests and end.details["state"] == "finished"
    assert loadtest.load_status(ctx, op) == report  # the last run's report stays readable


def test_a_second_start_is_refused_while_one_runs_and_a_stop_ends_it(load, make_user, clock) -> None:
    ctx, op, admin = load
    other = make_user("otto", "operator")
    run = loadtest.start_load(ctx, op, "off_topic", 1, LONG_RUN_S)
    ctx.settings = dataclasses.replace(ctx.settings, loadtest_cooldown_seconds=90)  # from this run's end on
    with pytest.raises(InvalidInput, match="already running"):
        loadtest.start_load(ctx, admin, "support", 1, 5)
    status = loadtest.load_status(ctx, other)
    assert status is not None and status.run == run and status.state == "running"
    assert loadtest.may_stop(op, run) and loadtest.may_stop(admin, run) and not loadtest.may_stop(other, run)

    # Another operator may watch it but not stop it (issue 21): refused, audited, the run goes on.
    with pytest.raises(AccessDenied, match="started by olivia"):
        loadtest.stop_load(ctx, other)
    [denied] = [e for e in _events(ctx, "access.denied") if e.object_type == "loadtest"]
    assert (denied.actor, denied.object_id, denied.details["action"]) == ("otto", run.run_id, "loadtest.stop")
    assert loadtest.load_status(ctx, op).state == "running"

    stopping = loadtest.stop_load(ctx, admin)  # an admin may stop anyone's (an admin without the operator role)
    assert stopping.state == "stopping" and stopping.stopped_by == "ada"
    report = loadtest.wait_for_load(timeout=180)
    assert report.state == "stopped" and report.stopped_by == "ada"
    assert report.elapsed_s < LONG_RUN_S
    assert all(ex.synthetic for ex in _exchanges(ctx, op.user_id))
    [stop] = _events(ctx, "loadtest.stop")
    assert (stop.actor, stop.details["started_by"]) == ("ada", "olivia")
    assert _events(ctx, "loadtest.end")[0].details["stopped_by"] == "ada"
    with pytest.raises(NotFound):
        loadtest.stop_load(ctx, op)
    # Ended: the next may start after the pause, and the refusal says when.
    ended = loadtest._current.finished_at
    clock.advance(seconds=89)
    with pytest.raises(InvalidInput, match=f"next may start at {(ended + timedelta(seconds=90)):%H:%M:%S} UTC"):
        loadtest.start_load(ctx, other, "long", 1, 1)
    clock.advance(seconds=1)
    mine = loadtest.start_load(ctx, other, "long", 1, 1)
    assert mine.started_by == "otto" and loadtest.may_stop(other, mine) and not loadtest.may_stop(op, mine)
    assert loadtest.wait_for_load(timeout=180).state == "finished"


def test_a_user_disabled_during_a_run_ends_it(load) -> None:
    from console.services import users as users_svc

    ctx, op, admin = load
    loadtest.start_load(ctx, op, "support", 1, LONG_RUN_S)
    users_svc.set_disabled(ctx, admin, op.user_id, True)
    report = loadtest.wait_for_load(timeout=180)
    assert report.state == "failed"
    assert any("no longer active" in m for m in report.error_messages)
    assert report.elapsed_s < LONG_RUN_S


@pytest.mark.parametrize("prompt_set,concurrency,seconds,message", [
    ("support", 0, 10, "concurrency must be between 1 and 8 .*LOADTEST_MAX_CONCURRENCY"),
    ("support", 9, 10, "concurrency must be between 1 and 8"),
    ("support", 2, 0, "duration in seconds must be between 1 and 120 .*LOADTEST_MAX_SECONDS"),
    ("support", 2, 121, "between 1 and 120"),
    ("support", 2.5, 10, "whole number"),
    ("support", True, 10, "whole number"),
    ("poems", 2, 10, "Unknown prompt set 'poems'; choose one of support, off_topic, long"),
])
def test_bounds_and_prompt_sets_are_checked_with_clear_errors(load, prompt_set, concurrency, seconds,
                                                              message) -> None:
    ctx, op, _ = load
    with pytest.raises(InvalidInput, match=message):
        loadtest.start_load(ctx, op, prompt_set, concurrency, seconds)
    assert loadtest._current is None or loadtest._current.final is not None  # nothing started
    assert _events(ctx, "loadtest.start") == []


def test_the_bounds_follow_the_settings(load) -> None:
    import dataclasses

    ctx, op, _ = load
    ctx.settings = dataclasses.replace(ctx.settings, loadtest_max_concurrency=2, loadtest_max_seconds=5)
    with pytest.raises(InvalidInput, match="between 1 and 2"):
        loadtest.start_load(ctx, op, "support", 3, 5)
    with pytest.raises(InvalidInput, match="between 1 and 5"):
        loadtest.start_load(ctx, op, "support", 2, 6)


def test_no_load_test_without_a_served_model(ctx, make_user) -> None:
    op = make_user("olivia", "operator")
    with pytest.raises(ModelUnavailable):
        loadtest.start_load(ctx, op, "support", 1, 5)


@pytest.mark.parametrize("role", ["reviewer", "analyst"])
def test_roles_other_than_operator_and_admin_are_refused(load, make_user, role) -> None:
    ctx, _, _ = load
    user = make_user(f"u-{role}", role)
    for call in (lambda: loadtest.start_load(ctx, user, "support", 1, 5), lambda: loadtest.load_status(ctx, user),
                 lambda: loadtest.stop_load(ctx, user)):
        with pytest.raises(AccessDenied):
            call()
    assert _events(ctx, "loadtest.start") == []


def test_percentiles_interpolate_between_closest_ranks() -> None:
    values = [40.0, 10.0, 30.0, 20.0]  # sorted: 10 20 30 40
    assert loadtest.percentile(values, 0.5) == pytest.approx(25.0)
    assert loadtest.percentile(values, 0.95) == pytest.approx(38.5)  # 30 + 0.85 * 10
    assert loadtest.percentile([7.0], 0.95) == 7.0
    assert loadtest.percentile([], 0.5) is None
