"""Canary releases: a share of new conversations goes to the candidate for a time box, decided by a sequential test.

A promotion request of the production alias may carry a :class:`CanaryPlan` (share, duration, metrics, margins),
approved with it by a second person. Approval then starts the canary (the request's status becomes ``canary``)
instead of moving the alias: every console's reconciler brings the candidate up beside the live version, and the
chat service sends a new conversation to the candidate when :func:`candidate_arm` says so (sticky: the same
conversation always lands on the same arm, on every replica). The canary ends ``approved`` (promoted: the alias
moved) or ``rolled_back``.

This module holds the plan, the arm assignment and the query for the running canary (seeded by the lead); the
sequential test and the decisions are added below it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from console.services.errors import InvalidInput
from db import model_versions as versions_q
from db.model_versions import PRODUCTION
from db.tables import PromotionRequest

RUNNING = "canary"  # PromotionRequest.status of a canary under way
METRICS = ("flag_rate", "error_rate", "p95_ttft")
METRIC_LABELS = {"flag_rate": "output flag rate", "error_rate": "error rate", "p95_ttft": "p95 time to first token"}

# Bounds of a plan's fields: (lowest, highest). A share above one half would make the candidate the main version.
SHARE_RANGE = (0.01, 0.5)
MINUTES_RANGE = (5, 7 * 24 * 60)
RATE_MARGIN_RANGE = (0.001, 0.5)  # absolute difference of two rates (0.02 = 2 percentage points)
TTFT_MARGIN_RANGE = (0.01, 5.0)  # relative: 0.2 = the candidate's p95 may be up to 20 % above the live one's
ALPHA_RANGE = (0.001, 0.2)
MIN_EXCHANGES_RANGE = (10, 100_000)


@dataclass(frozen=True)
class CanaryPlan:
    """What a canary does and how it is decided; stored as JSON in ``promotion_requests.canary_plan``.

    - ``share``: share of new conversations sent to the candidate (0.01-0.5).
    - ``minutes``: the time box; when it ends undecided, the canary is rolled back (not shown no worse).
    - ``metrics``: which of :data:`METRICS` decide (at least one).
    - ``flag_margin`` / ``error_margin``: how much higher (absolute, 0.02 = 2 percentage points) the candidate's
      output flag rate / error rate may be than the live version's in the same minutes and still count as no worse.
    - ``ttft_margin``: how much higher (relative, 0.2 = 20 %) its p95 time to first token may be.
    - ``alpha``: the chance, per metric, that the test decides wrongly (anytime-valid: it holds however often the
      test is looked at).
    - ``min_exchanges``: exchanges each arm needs before any decision.
    """

    share: float = 0.1
    minutes: int = 60
    metrics: tuple[str, ...] = METRICS
    flag_margin: float = 0.02
    error_margin: float = 0.01
    ttft_margin: float = 0.2
    alpha: float = 0.05
    min_exchanges: int = 100
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # unknown keys of stored plans

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        out["metrics"] = list(self.metrics)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CanaryPlan:
        """A stored plan (trusted: it was validated when requested)."""
        known = {k: raw[k] for k in ("share", "minutes", "flag_margin", "error_margin", "ttft_margin", "alpha",
                                     "min_exchanges") if k in raw}
        metrics = tuple(raw.get("metrics") or METRICS)
        extra = {k: v for k, v in raw.items() if k not in known and k != "metrics"}
        return cls(metrics=metrics, extra=extra, **known)


def _number(value: object, what: str, bounds: tuple[float, float], *, integer: bool = False) -> float:
    if isinstance(value, bool):
        raise InvalidInput(f"{what} must be a number.")
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be a number.") from None
    if not math.isfinite(number):
        raise InvalidInput(f"{what} must be a finite number.")
    if integer and number != int(number):
        raise InvalidInput(f"{what} must be a whole number.")
    low, high = bounds
    if not low <= number <= high:
        raise InvalidInput(f"{what} must be between {low:g} and {high:g}; got {number:g}.")
    return number


def parse_plan(*, share: object = CanaryPlan.share, minutes: object = CanaryPlan.minutes,
               metrics: object = METRICS, flag_margin: object = CanaryPlan.flag_margin,
               error_margin: object = CanaryPlan.error_margin, ttft_margin: object = CanaryPlan.ttft_margin,
               alpha: object = CanaryPlan.alpha, min_exchanges: object = CanaryPlan.min_exchanges) -> CanaryPlan:
    """A plan from a form or the command line, every field checked; :class:`InvalidInput` names the bad one."""
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    if not isinstance(metrics, list | tuple) or not metrics:
        raise InvalidInput(f"Choose at least one canary metric ({', '.join(METRICS)}).")
    unknown = [str(m) for m in metrics if m not in METRICS]
    if unknown:
        raise InvalidInput(f"Unknown canary metric {unknown[0]!r}; choose from {', '.join(METRICS)}.")
    return CanaryPlan(
        share=_number(share, "The canary share", SHARE_RANGE),
        minutes=int(_number(minutes, "The canary duration (minutes)", MINUTES_RANGE, integer=True)),
        metrics=tuple(m for m in METRICS if m in metrics),
        flag_margin=_number(flag_margin, "The flag rate margin", RATE_MARGIN_RANGE),
        error_margin=_number(error_margin, "The error rate margin", RATE_MARGIN_RANGE),
        ttft_margin=_number(ttft_margin, "The p95 TTFT margin", TTFT_MARGIN_RANGE),
        alpha=_number(alpha, "The error level (alpha)", ALPHA_RANGE),
        min_exchanges=int(_number(min_exchanges, "The minimum exchanges per arm", MIN_EXCHANGES_RANGE,
                                  integer=True)),
    )


def candidate_arm(request_id: int, conversation_id: int, share: float) -> bool:
    """Whether a conversation goes to the candidate of canary ``request_id``: the same answer on every replica and
    every turn (a hash of both ids, uniform in [0, 1), compared with ``share``)."""
    digest = hashlib.sha256(f"canary:{request_id}:conversation:{conversation_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


@dataclass(frozen=True)
class ActiveCanary:
    """The canary under way: who is compared with whom, since when, with which plan."""

    request_id: int
    candidate: str  # version name
    live: str | None  # the version holding production (None: nothing does)
    plan: CanaryPlan
    started_at: datetime
    ends_at: datetime


def active_canary(session: Session) -> ActiveCanary | None:
    """The running canary of the production alias (at most one runs at a time), or None."""
    request = session.scalars(
        select(PromotionRequest).where(PromotionRequest.status == RUNNING, PromotionRequest.alias == PRODUCTION)
        .order_by(PromotionRequest.id.desc()).limit(1)).first()
    if request is None or request.canary_started_at is None or request.canary_ends_at is None:
        return None
    candidate = versions_q.get_model_version(session, request.version_id)
    live = versions_q.version_for_alias(session, PRODUCTION)
    if candidate is None:
        return None
    return ActiveCanary(request_id=request.id, candidate=candidate.name, live=live.name if live else None,
                        plan=CanaryPlan.from_dict(request.canary_plan or {}), started_at=request.canary_started_at,
                        ends_at=request.canary_ends_at)


def conversation_arm(canary: ActiveCanary | None, conversation_id: int, conversation_created_at: datetime) -> bool:
    """Whether this conversation's next turn goes to the candidate: only conversations started during the canary,
    and of those the plan's share (sticky)."""
    if canary is None or conversation_created_at < canary.started_at:
        return False
    return candidate_arm(canary.request_id, conversation_id, canary.plan.share)
