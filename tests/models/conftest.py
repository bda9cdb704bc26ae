"""Fixtures of the model registry, promotion and watch-window tests: a team of people with two evaluated
versions (v1 in production), and v2 switched to by the reconciler with v1's traffic before the switch."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from console.services import promotion, serving
from console.services.access import Principal
from tests.models.promotion_support import StubHost, evaluate, events, register_version, traffic


@pytest.fixture
def team(ctx, make_user) -> dict[str, Principal]:  # noqa: ANN001
    """ada (admin and reviewer) requests; rita (reviewer) and otto (admin) may decide; v1 is production."""
    people = {"ada": make_user("ada", "admin", "reviewer"), "rita": make_user("rita", "reviewer"),
              "otto": make_user("otto", "admin")}
    for name in ("v1", "v2"):
        register_version(ctx, name)
        evaluate(ctx, name)
    serving.serve(ctx, Principal.shell(ctx), "v1", "first version")
    return people


@pytest.fixture
def switched(ctx, team, clock, make_user) -> dict[str, Any]:  # noqa: ANN001
    """v2 approved and switched to by the reconciler (stub host); v1 answered fast before the switch."""
    ctx.settings = dataclasses.replace(ctx.settings, watch_min_samples=5, watch_minutes=30)
    request = promotion.request_promotion(ctx, team["ada"], "v2", "production", "better")
    promotion.approve(ctx, team["rita"], request.id, "ok")
    host = StubHost("v1")
    reconciler = serving.Reconciler(ctx, host)  # type: ignore[arg-type]
    outcome = reconciler.run_once()
    assert outcome is not None and outcome.ok and host.name == "v2"
    switch = events(ctx, "model.switch")[-1]
    assert switch.details["from"] == "v1" and switch.details["requested_by"] == "rita"
    operator = make_user("olivia", "operator")
    traffic(ctx, operator, "v1", switch.ts - timedelta(minutes=20), 10, ttft=20.0)
    clock.now = switch.ts + timedelta(minutes=10)
    return {"switch": switch, "operator": operator, "host": host, "reconciler": reconciler}
