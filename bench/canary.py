"""Benchmark of canary decisions: scripted canaries whose right answer is known, decided by the real judge.

Each scenario gives the live version and the candidate an output flag rate, an error rate and a time-to-first-token
distribution (log-normal); the right decision is known from how they differ (an equal or slightly better candidate
is promoted, a worse one rolled back). For each seed, exchanges of both arms (half the new conversations each) are
bulk-inserted into a temporary SQLite store in growing batches, and after each batch :class:`CanaryJudge` looks
once (the real :func:`console.services.canary.evaluate`, its rows, its decision and audit event). A canary that
reaches ``max_per_arm`` exchanges per arm undecided has its time box end: rolled back undecided, which counts as
wrong for an equal candidate.

Reports per scenario each seed's decision, the expected one and the exchanges (both arms) it took, and overall
``decisions_correct`` of ``decisions``, ``scenarios`` and ``median_exchanges_to_decision``.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from bench.store import throwaway_store
from console.services.canary import CanaryJudge, CanaryPlan
from console.services.context import AppContext
from db import model_versions as versions_q
from db import promotions as promo_q
from db.model_versions import PRODUCTION
from db.tables import Conversation, Exchange, User

logger = logging.getLogger(__name__)

START = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
# The plan every scenario runs with: the defaults, but half the conversations to the candidate (the bench measures
# the test, not the traffic split) and a week's time box (the bench ends a canary at max_per_arm instead).
PLAN = CanaryPlan(share=0.5, minutes=7 * 24 * 60)
FIRST_BATCH = 100  # exchanges per arm before the first look
GROWTH = 1.15  # each look comes after this many times as many exchanges per arm as the one before


@dataclass(frozen=True)
class Arm:
    """What one version's answers do: output flag rate, error rate, log-normal TTFT (median ms, sigma)."""

    flag_rate: float = 0.05
    error_rate: float = 0.01
    ttft_median_ms: float = 300.0
    ttft_sigma: float = 0.4


@dataclass(frozen=True)
class Scenario:
    name: str
    expected: str  # promote or rollback
    candidate: Arm
    live: Arm = Arm()


SCENARIOS = (
    Scenario("equal", "promote", Arm()),
    Scenario("slightly_better", "promote", Arm(flag_rate=0.04, error_rate=0.008, ttft_median_ms=285.0)),
    Scenario("equal_high_noise", "promote", Arm(flag_rate=0.2, ttft_sigma=0.8),
             Arm(flag_rate=0.2, ttft_sigma=0.8)),
    Scenario("flags_x2", "rollback", Arm(flag_rate=0.10)),
    Scenario("flags_x1.5", "rollback", Arm(flag_rate=0.075)),
    Scenario("errors_x3", "rollback", Arm(error_rate=0.03)),
    Scenario("p95_ttft_x1.5", "rollback", Arm(ttft_median_ms=450.0)),
)


def _rows(arm: Arm, version: str, n: int, start: datetime, span: timedelta, rng: random.Random,
          conversation_id: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        created = start + span * (i / max(n, 1))
        error = rng.random() < arm.error_rate
        ttft = None if error else arm.ttft_median_ms * math.exp(rng.gauss(0.0, arm.ttft_sigma))
        rows.append({"conversation_id": conversation_id, "user_id": 1, "model_version": version, "prompt": "p",
                     "response": "" if error else "r", "sampling": {}, "status": "error" if error else "ok",
                     "created_at": created, "finished_at": created, "prompt_action": "allow",
                     "output_action": None if error else "flag" if rng.random() < arm.flag_rate else "allow",
                     "ttft_ms": ttft, "synthetic": False})
    return rows


def _run(ctx: AppContext, clock: list[datetime], scenario: Scenario, seed: int, index: int,
         max_per_arm: int) -> dict[str, Any]:
    """One canary of ``scenario``: returns its decision and the exchanges it took."""
    rng = random.Random(f"{scenario.name}:{seed}")
    live, candidate = f"live-{index}", f"candidate-{index}"
    started = START + timedelta(days=8 * index)  # each canary in its own week: earlier runs' rows are not scanned
    with ctx.db.session() as s:
        versions = {name: versions_q.register_model_version(s, name=name, source=f"/models/{name}", actor="bench")
                    for name in (live, candidate)}
        versions_q.move_alias(s, PRODUCTION, versions[live], actor="bench", actor_id=None, reason="bench: live")
        request = promo_q.create_request(
            s, alias=PRODUCTION, version_id=versions[candidate].id, from_version_id=versions[live].id,
            evaluation_id=None, report=None, baseline_report=None, gates=[], reason="bench", actor="bench",
            actor_id=1)
        request.canary_plan = PLAN.to_dict()
        request.status, request.canary_started_at = "canary", started
        request.canary_ends_at = started + timedelta(minutes=PLAN.minutes)
        s.add(Conversation(id=index + 1, user_id=1, title="", created_at=started, updated_at=started))
    judge = CanaryJudge(ctx, interval_s=3600)
    per_arm, target, now = 0, FIRST_BATCH, started
    found = None
    while True:
        batch = min(target, max_per_arm) - per_arm
        span = timedelta(minutes=1) * batch / 10  # ten exchanges a minute per arm
        with ctx.db.engine.begin() as conn:
            conn.execute(insert(Exchange), _rows(scenario.live, live, batch, now, span, rng, index + 1)
                         + _rows(scenario.candidate, candidate, batch, now, span, rng, index + 1))
        per_arm, now = per_arm + batch, now + span
        if per_arm >= max_per_arm:
            now = started + timedelta(minutes=PLAN.minutes)  # the time box ends with what was seen
        clock[0] = now + timedelta(seconds=1)
        found = judge.run_once()
        if found is None or found.decision != "continue":
            break
        target = max(target + 1, int(target * GROWTH))
    assert found is not None
    decision = found.decision
    return {"seed": seed, "decision": decision, "undecided": found.undecided,
            "worse": [m.metric for m in found.metrics if m.verdict == "worse"],
            "exchanges_to_decision": found.candidate_n + found.live_n, "correct": decision == scenario.expected
            and not found.undecided}


def run_canary_bench(*, seeds: int = 3, max_per_arm: int = 20_000, scenarios: Sequence[str] | None = None,
                     data_dir: Path | None = None) -> dict[str, Any]:
    """Run every scenario (or those named) with ``seeds`` seeds each; see the module docstring for the result."""
    chosen = [s for s in SCENARIOS if scenarios is None or s.name in scenarios]
    unknown = sorted(set(scenarios or ()) - {s.name for s in SCENARIOS})
    if unknown:
        raise ValueError(f"unknown scenario {unknown[0]!r}; choose from {', '.join(s.name for s in SCENARIOS)}")
    t0 = time.perf_counter()
    clock = [START]
    with throwaway_store(data_dir) as (settings, db):
        with db.engine.begin() as conn:
            conn.execute(insert(User), [{"id": 1, "username": "bench", "disabled": False,
                                         "failed_login_count": 0, "created_at": START, "updated_at": START}])
        ctx = AppContext(settings, db, clock=lambda: clock[0])
        out, index = [], 0
        for scenario in chosen:
            runs = []
            for seed in range(seeds):
                runs.append(_run(ctx, clock, scenario, seed, index, max_per_arm))
                index += 1
            out.append({"scenario": scenario.name, "expected": scenario.expected,
                        "decisions": [r["decision"] + (" (undecided)" if r["undecided"] else "") for r in runs],
                        "correct": sum(r["correct"] for r in runs),
                        "exchanges_to_decision": [r["exchanges_to_decision"] for r in runs],
                        "worse": [r["worse"] for r in runs]})
    every = [n for s in out for n in s["exchanges_to_decision"]]
    result = {
        "scenarios": len(out),
        "seeds": seeds,
        "decisions": len(every),
        "decisions_correct": sum(s["correct"] for s in out),
        "median_exchanges_to_decision": statistics.median(every) if every else None,
        "max_per_arm": max_per_arm,
        "plan": PLAN.to_dict(),
        "results": out,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    logger.info("canary bench: %s of %s decisions correct", result["decisions_correct"], result["decisions"])
    return result
