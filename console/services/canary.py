"""Canary releases: a share of new conversations goes to the candidate for a time box, decided by a sequential test.

A promotion request of the production alias may carry a :class:`CanaryPlan` (share, duration, metrics, margins),
approved with it by a second person. Approval then starts the canary (the request's status becomes ``canary``)
instead of moving the alias: every console's reconciler brings the candidate up beside the live version, and the
chat service sends a new conversation to the candidate when :func:`candidate_arm` says so (sticky: the same
conversation always lands on the same arm, on every replica). The canary ends ``approved`` (promoted: the alias
moved) or ``rolled_back``.

This module holds the plan, the arm assignment and the query for the running canary, then the sequential test
(:func:`rate_test`, :func:`ttft_test`: anytime-valid confidence sequences, so looking every round does not raise
the error level), :func:`evaluate` (one look at the running canary), the :class:`CanaryJudge` that looks once per
``canary_check_seconds`` across consoles and promotes or rolls back, :func:`end_canary` (an approver stops it) and
:func:`canary_view` (what the Promotions page shows).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import InvalidInput, NotFound
from console.services.periodic import PeriodicTask
from console.services.text import required_text
from db import audit as audit_q
from db import canary as canary_q
from db import feedback as feedback_q
from db import model_versions as versions_q
from db import promotions as promo_q
from db.feedback import FeedbackCounts
from db.model_versions import PRODUCTION
from db.tables import PromotionRequest

logger = logging.getLogger(__name__)

RUNNING = "canary"  # PromotionRequest.status of a canary under way
METRICS = ("flag_rate", "error_rate", "p95_ttft")
# Optional metrics a plan may choose (not in the default plan): "feedback_rate" is the thumbs-down share of rated
# answers (users' feedback, issue 25), tested like the flag rate; ratings are few, so it needs min_exchanges rated
# answers per arm before it decides (a canary that waits for them longer than its time box is rolled back).
OPTIONAL_METRICS = ("feedback_rate",)
ALL_METRICS = (*METRICS, *OPTIONAL_METRICS)
METRIC_LABELS = {"flag_rate": "output flag rate", "error_rate": "error rate", "p95_ttft": "p95 time to first token",
                 "feedback_rate": "negative feedback rate"}

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
    - ``metrics``: which of :data:`ALL_METRICS` decide (at least one; the default is :data:`METRICS`).
    - ``flag_margin`` / ``error_margin``: how much higher (absolute, 0.02 = 2 percentage points) the candidate's
      output flag rate / error rate may be than the live version's in the same minutes and still count as no worse.
    - ``ttft_margin``: how much higher (relative, 0.2 = 20 %) its p95 time to first token may be.
    - ``feedback_margin``: how much higher (absolute) its thumbs-down share of rated answers may be (optional
      metric ``feedback_rate``; plans stored before it existed get the default).
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
    feedback_margin: float = 0.05
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
        known = {k: raw[k] for k in ("share", "minutes", "flag_margin", "error_margin", "ttft_margin",
                                     "feedback_margin", "alpha", "min_exchanges") if k in raw}
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
               alpha: object = CanaryPlan.alpha, min_exchanges: object = CanaryPlan.min_exchanges,
               feedback_margin: object = CanaryPlan.feedback_margin) -> CanaryPlan:
    """A plan from a form or the command line, every field checked; :class:`InvalidInput` names the bad one."""
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    if not isinstance(metrics, list | tuple) or not metrics:
        raise InvalidInput(f"Choose at least one canary metric ({', '.join(ALL_METRICS)}).")
    unknown = [str(m) for m in metrics if m not in ALL_METRICS]
    if unknown:
        raise InvalidInput(f"Unknown canary metric {unknown[0]!r}; choose from {', '.join(ALL_METRICS)}.")
    return CanaryPlan(
        share=_number(share, "The canary share", SHARE_RANGE),
        minutes=int(_number(minutes, "The canary duration (minutes)", MINUTES_RANGE, integer=True)),
        metrics=tuple(m for m in ALL_METRICS if m in metrics),
        flag_margin=_number(flag_margin, "The flag rate margin", RATE_MARGIN_RANGE),
        error_margin=_number(error_margin, "The error rate margin", RATE_MARGIN_RANGE),
        ttft_margin=_number(ttft_margin, "The p95 TTFT margin", TTFT_MARGIN_RANGE),
        feedback_margin=_number(feedback_margin, "The negative feedback rate margin", RATE_MARGIN_RANGE),
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
    return None if request is None else _canary_of(session, request)


def _canary_of(session: Session, request: PromotionRequest) -> ActiveCanary | None:
    if request.canary_started_at is None or request.canary_ends_at is None:
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


# --- the sequential test ---------------------------------------------------------------------------------------

ROLLED_BACK = "rolled_back"  # PromotionRequest.status of a canary that ended without promoting
JUDGE_ACTOR = "canary"  # the actor of what the judge does by itself
CANARY_ACTIONS = ("promotion.canary_promoted", "promotion.canary_rolled_back", "promotion.canary_stopped")
DECISIONS = ("continue", "promote", "rollback")
PSEUDO_COUNT = 0.5  # added to each arm's events and non-events for the variance only: zero events still vary
TTFT_TAIL = 0.05  # a p95 is the time 5 % of answers exceed


def cs_radius(variance: float, tau2: float, alpha: float) -> float:
    """Half-width of the two-sided normal-mixture confidence sequence (Robbins; Howard et al. 2021, eq. 14) for an
    estimate with this ``variance``: ``|estimate - truth|`` stays below it at every look at once with chance at least
    ``1 - alpha``. ``tau2`` tunes where it is tightest (the square of the differences one expects to detect)."""
    if variance <= 0:
        return math.inf
    return math.sqrt(variance * (1 + variance / tau2) * (math.log(1 + tau2 / variance) + 2 * math.log(1 / alpha)))


def rate_variance(events: int, n: int) -> float:
    """The variance of a rate estimated from ``events`` in ``n`` (with :data:`PSEUDO_COUNT`); infinite when n is 0."""
    if n <= 0:
        return math.inf
    p = (events + PSEUDO_COUNT) / (n + 2 * PSEUDO_COUNT)
    return p * (1 - p) / n


@dataclass(frozen=True)
class MetricResult:
    """One metric's comparison in one look: each arm's value, the tested difference with its anytime-valid bounds,
    the margin and the verdict (``worse``, ``no_worse``, ``undecided`` or ``too_few``) in ``text``.

    Rates (``flag_rate``, ``error_rate``): values are rates (0-1), ``difference`` is candidate minus live,
    ``margin`` absolute. ``p95_ttft``: values are p95s in ms; ``difference`` is the candidate's share of timed
    answers slower than ``threshold_ms`` (the live p95 plus the margin) minus 5 %, ``margin`` relative.
    """

    metric: str
    label: str
    candidate: float | None
    live: float | None
    difference: float | None
    lower: float | None
    upper: float | None
    margin: float
    candidate_n: int
    live_n: int
    verdict: str
    text: str
    candidate_k: int | None = None
    live_k: int | None = None
    threshold_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: (float(f"{v:.6g}") if isinstance(v, float) and math.isfinite(v) else v)
                for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MetricResult:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in names})


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f} %"


def _points(diff: float) -> str:
    return f"{diff * 100:+.1f} percentage points"


def _rate_text(label: str, verdict: str, c: str, live: str, diff: str, bounds: str, margin: str, alpha: float,
               min_n: int) -> str:
    head = f"{label.capitalize()}: candidate {c}, live {live}"
    if verdict == "too_few":
        return f"{head}; too few exchanges to decide yet (each arm needs {min_n})."
    said = {"worse": "shown worse (even the lowest plausible difference is above 0)",
            "no_worse": f"shown no worse (even the highest plausible difference is below the {margin} margin)",
            "undecided": f"not decided yet (the bounds still hold both 0 and the {margin} margin)"}[verdict]
    return f"{head}; difference {diff} ({1 - alpha:.0%} bounds at every look: {bounds}): {said}."


def rate_test(metric: str, k_candidate: int, n_candidate: int, k_live: int, n_live: int, *, margin: float,
              alpha: float, min_n: int) -> MetricResult:
    """Compare two rates: the candidate's ``k/n`` with the live version's in the same minutes.

    The difference ``d = p_candidate - p_live`` gets the confidence sequence :func:`cs_radius` (``tau`` = the
    margin). With each arm at ``min_n`` or more: ``worse`` when its lower bound is above 0 (the candidate is shown
    worse), ``no_worse`` when its upper bound is below ``margin`` (shown no worse than the margin allows), else
    ``undecided``; below ``min_n``: ``too_few``.
    """
    label = METRIC_LABELS[metric]
    if n_candidate <= 0 or n_live <= 0:
        c = "no exchanges" if n_candidate <= 0 else f"{_pct(k_candidate / n_candidate)} ({k_candidate}/{n_candidate})"
        lv = "no exchanges" if n_live <= 0 else f"{_pct(k_live / n_live)} ({k_live}/{n_live})"
        return MetricResult(metric, label, None if n_candidate <= 0 else k_candidate / n_candidate,
                            None if n_live <= 0 else k_live / n_live, None, None, None, margin, n_candidate, n_live,
                            "too_few", _rate_text(label, "too_few", c, lv, "", "", "", alpha, min_n),
                            k_candidate, k_live)
    p_c, p_l = k_candidate / n_candidate, k_live / n_live
    d = p_c - p_l
    r = cs_radius(rate_variance(k_candidate, n_candidate) + rate_variance(k_live, n_live), margin**2, alpha)
    lower, upper = d - r, d + r
    if min(n_candidate, n_live) < min_n:
        verdict = "too_few"
    elif lower > 0:
        verdict = "worse"
    elif upper < margin:
        verdict = "no_worse"
    else:
        verdict = "undecided"
    text = _rate_text(label, verdict, f"{_pct(p_c)} ({k_candidate}/{n_candidate})", f"{_pct(p_l)} ({k_live}/{n_live})",
                      _points(d), f"{lower * 100:+.1f} to {upper * 100:+.1f} points", f"+{margin * 100:g}-point",
                      alpha, min_n)
    return MetricResult(metric, label, p_c, p_l, d, lower, upper, margin, n_candidate, n_live, verdict, text,
                        k_candidate, k_live)


def ttft_test(slower: int, timed_candidate: int, candidate_p95_ms: float | None, live_p95_ms: float | None,
              timed_live: int, *, margin: float, alpha: float, min_n: int) -> MetricResult:
    """Compare the p95 time to first token: is the candidate's p95 above the live one's plus ``margin`` (relative)?

    With ``T = (1 + margin) * live p95`` (the live p95 in the same minutes), the candidate's p95 is above ``T``
    exactly when more than 5 % of its answers are slower than ``T``. So the test is one rate, the candidate's share
    ``q`` of timed answers slower than ``T`` (``slower`` of ``timed_candidate``), against 5 %, with the confidence
    sequence :func:`cs_radius` on ``q - 0.05``: ``worse`` when its lower bound is above 0, ``no_worse`` when its
    upper bound is below 0. The live p95 is taken as known: the live arm is the larger one.
    """
    label = METRIC_LABELS["p95_ttft"]
    c = "no timed answers" if candidate_p95_ms is None else f"{candidate_p95_ms:.0f} ms"
    lv = "no timed answers" if live_p95_ms is None else f"{live_p95_ms:.0f} ms"
    head = f"{label.capitalize()}: candidate {c}, live {lv}"
    if live_p95_ms is None or timed_candidate <= 0:
        return MetricResult("p95_ttft", label, candidate_p95_ms, live_p95_ms, None, None, None, margin,
                            timed_candidate, timed_live, "too_few",
                            f"{head}; too few timed answers to decide yet (each arm needs {min_n}).", slower)
    threshold = (1 + margin) * live_p95_ms
    q = slower / timed_candidate
    d = q - TTFT_TAIL
    r = cs_radius(rate_variance(slower, timed_candidate), TTFT_TAIL**2, alpha)
    lower, upper = d - r, d + r
    if min(timed_candidate, timed_live) < min_n:
        verdict = "too_few"
    elif lower > 0:
        verdict = "worse"
    elif upper < 0:
        verdict = "no_worse"
    else:
        verdict = "undecided"
    share = (f"{_pct(q)} of the candidate's {timed_candidate} answers took longer than {threshold:.0f} ms (the live "
             f"p95 + {margin:.0%}), where 5 % may ({1 - alpha:.0%} bounds at every look: "
             f"{_pct(max(0.0, lower + TTFT_TAIL))} to {_pct(upper + TTFT_TAIL)})")
    said = {"too_few": f"too few timed answers to decide yet (each arm needs {min_n})",
            "worse": f"shown worse (its p95 is above the live p95 + {margin:.0%})",
            "no_worse": f"shown no worse (its p95 is within the live p95 + {margin:.0%})",
            "undecided": "not decided yet"}[verdict]
    return MetricResult("p95_ttft", label, candidate_p95_ms, live_p95_ms, d, lower, upper, margin, timed_candidate,
                        timed_live, verdict, f"{head}; {share}: {said}.", slower, None, threshold)


def decide(metrics: tuple[MetricResult, ...] | list[MetricResult]) -> tuple[str, str]:
    """(decision, reason in words) from one look's metrics: ``rollback`` as soon as one is shown worse, ``promote``
    when every one is shown no worse, else ``continue``."""
    worse = [m for m in metrics if m.verdict == "worse"]
    if worse:
        return "rollback", "shown worse: " + "; ".join(m.text for m in worse)
    if metrics and all(m.verdict == "no_worse" for m in metrics):
        return "promote", "every metric shown no worse within its margin: " + "; ".join(m.text for m in metrics)
    open_ = [m.label for m in metrics if m.verdict != "no_worse"]
    return "continue", "not decided yet: " + ", ".join(open_)


@dataclass(frozen=True)
class CanaryEvaluation:
    """One look at a canary: each arm's exchanges, every chosen metric's test, and what it leads to (``decision``:
    continue, promote or rollback; ``undecided``: rolled back because the time box ended first)."""

    request_id: int
    candidate: str
    live: str | None
    candidate_n: int
    live_n: int
    metrics: tuple[MetricResult, ...]
    decision: str
    reason: str
    checked_at: datetime
    undecided: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "candidate": self.candidate, "live": self.live,
                "candidate_n": self.candidate_n, "live_n": self.live_n,
                "metrics": [m.as_dict() for m in self.metrics], "decision": self.decision, "reason": self.reason,
                "checked_at": self.checked_at.isoformat(), "undecided": self.undecided}


def evaluate(session: Session, canary: ActiveCanary, now: datetime) -> CanaryEvaluation:
    """Look at the canary once (no writes): the candidate's exchanges against the live version's since the canary
    started (the same minutes; until the time box's end), real users' traffic only (not load tests' chats nor
    their minutes), tested metric by metric; when the time box is over with nothing decided, the decision is
    ``rollback`` with ``undecided``."""
    plan = canary.plan
    start, end = canary.started_at, min(now, canary.ends_at)
    loaded = promo_q.load_test_periods(session, start, end)
    c = promo_q.window_stats(session, canary.candidate, start, end, exclude=loaded)
    if canary.live is not None:
        live = promo_q.window_stats(session, canary.live, start, end, exclude=loaded)
    else:
        live = promo_q.WindowStats(0, 0, 0, 0, None)
    metrics: list[MetricResult] = []
    for metric in plan.metrics:
        if metric == "flag_rate":
            metrics.append(rate_test(metric, c.flagged, c.requests, live.flagged, live.requests,
                                     margin=plan.flag_margin, alpha=plan.alpha, min_n=plan.min_exchanges))
        elif metric == "error_rate":
            metrics.append(rate_test(metric, c.errors, c.requests, live.errors, live.requests,
                                     margin=plan.error_margin, alpha=plan.alpha, min_n=plan.min_exchanges))
        elif metric == "p95_ttft":
            slower = 0
            if live.ttft_p95_ms is not None and canary.live is not None:
                slower = canary_q.ttft_above(session, canary.candidate, start, end,
                                             (1 + plan.ttft_margin) * live.ttft_p95_ms, exclude=loaded)
            metrics.append(ttft_test(slower, c.ttft_count, c.ttft_p95_ms, live.ttft_p95_ms, live.ttft_count,
                                     margin=plan.ttft_margin, alpha=plan.alpha, min_n=plan.min_exchanges))
        elif metric == "feedback_rate":  # thumbs down out of rated answers, each arm's answers of these minutes
            fc = feedback_q.feedback_counts(session, since=start, until=end, version=canary.candidate)
            fl = feedback_q.feedback_counts(session, since=start, until=end, version=canary.live) \
                if canary.live is not None else {}
            fb_c, fb_l = fc.get(canary.candidate, FeedbackCounts()), fl.get(canary.live or "", FeedbackCounts())
            metrics.append(rate_test(metric, fb_c.down, fb_c.rated, fb_l.down, fb_l.rated,
                                     margin=plan.feedback_margin, alpha=plan.alpha, min_n=plan.min_exchanges))
    decision, reason = decide(metrics)
    undecided = False
    if decision == "continue" and now >= canary.ends_at:
        decision, undecided = "rollback", True
        reason = f"the time box ({plan.minutes} min) ended undecided ({reason.removeprefix('not decided yet: ')})"
    return CanaryEvaluation(canary.request_id, canary.candidate, canary.live, c.requests, live.requests,
                            tuple(metrics), decision, reason, now, undecided)


# --- the judge -------------------------------------------------------------------------------------------------


def _record(s: Session, request: PromotionRequest, evaluation: CanaryEvaluation) -> None:
    stats = evaluation.as_dict()
    canary_q.add_check(s, request.id, checked_at=evaluation.checked_at, candidate_n=evaluation.candidate_n,
                       live_n=evaluation.live_n, decision=evaluation.decision, stats=stats)
    request.canary_result = stats


def _details(evaluation: CanaryEvaluation, **more: Any) -> dict[str, Any]:
    return {"version": evaluation.candidate, "live": evaluation.live, "reason": evaluation.reason,
            "worse": [m.metric for m in evaluation.metrics if m.verdict == "worse"],
            "undecided": evaluation.undecided, "candidate_n": evaluation.candidate_n, "live_n": evaluation.live_n,
            "metrics": [m.as_dict() for m in evaluation.metrics], **more}


def _end(s: Session, request: PromotionRequest, evaluation: CanaryEvaluation, *, action: str, actor: str,
         actor_id: int | None, **more: Any) -> None:
    """Roll the canary back (the alias never moved: the reconcilers stop the candidate) with its audit event."""
    _record(s, request, evaluation)
    request.status = ROLLED_BACK
    audit_q.append_event(s, actor=actor, actor_id=actor_id, action=action, object_type="promotion_request",
                         object_id=request.id, details=_details(evaluation, **more))
    logger.warning("canary #%s of %s rolled back: %s", request.id, evaluation.candidate, evaluation.reason)


def _promote(s: Session, request: PromotionRequest, evaluation: CanaryEvaluation) -> None:
    candidate = versions_q.get_model_version(s, request.version_id)
    if candidate is None or candidate.retired_at is not None:
        _end(s, request, replace(evaluation, decision="rollback",
                                 reason=f"the candidate {evaluation.candidate} was retired during the canary"),
             action="promotion.canary_rolled_back", actor=JUDGE_ACTOR, actor_id=None)
        return
    _record(s, request, evaluation)
    move = versions_q.move_alias(s, PRODUCTION, candidate, actor=JUDGE_ACTOR, actor_id=None,
                                 reason=f"canary #{request.id}: every metric shown no worse within its margin")
    request.status = "approved"
    audit_q.append_event(s, actor=JUDGE_ACTOR, actor_id=None, action="promotion.canary_promoted",
                         object_type="promotion_request", object_id=request.id,
                         details=_details(evaluation, move_id=move.id))
    logger.info("canary #%s promoted %s to production", request.id, candidate.name)


class CanaryJudge(PeriodicTask):
    """Looks at the running canary every ``canary_check_seconds``, in one console per interval (the
    ``canary-judge`` lease): stores the round (a ``canary_checks`` row and the request's ``canary_result``) and
    applies its decision, each with its audit event in the same transaction: promote (production moves to the
    candidate, ``promotion.canary_promoted``), roll back (``promotion.canary_rolled_back``: a metric shown worse,
    the time box ended undecided, or the live version moved since the canary started).
    """

    def __init__(self, ctx: AppContext, *, interval_s: float | None = None) -> None:
        super().__init__(ctx.settings.canary_check_seconds if interval_s is None else interval_s,
                         name="canary-judge", job="canary-judge", db=ctx.db)
        self.ctx = ctx
        self._lock = threading.Lock()

    def run_once(self) -> CanaryEvaluation | None:
        """One look at the running canary, if any; returns what it found (and did)."""
        with self._lock, self.ctx.db.session() as s:
            running = active_canary(s)
            if running is None:
                return None
            # Locked and re-read: a stop by an approver (or another judge) since the query above wins.
            request = promo_q.lock_request(s, running.request_id)
            if request is None or request.status != RUNNING:
                return None
            evaluation = evaluate(s, running, self.ctx.now())
            holder = versions_q.version_for_alias(s, PRODUCTION)
            if (holder.id if holder else None) != request.from_version_id:
                was = versions_q.get_model_version(s, request.from_version_id) if request.from_version_id else None
                evaluation = replace(evaluation, decision="rollback", undecided=False, reason=(
                    f"the live version moved during the canary: production now points at "
                    f"{holder.name if holder else 'nothing'}, not {was.name if was else 'nothing'}"))
            if evaluation.decision == "promote":
                _promote(s, request, evaluation)
            elif evaluation.decision == "rollback":
                _end(s, request, evaluation, action="promotion.canary_rolled_back", actor=JUDGE_ACTOR, actor_id=None)
            else:
                _record(s, request, evaluation)
            return evaluation


# --- the page's view and the stop button -----------------------------------------------------------------------


@dataclass(frozen=True)
class MetricView:
    """One metric of a canary's latest look, in words: values with units, difference, bounds, margin, verdict."""

    metric: str
    label: str
    candidate: str
    live: str
    difference: str
    bounds: str
    margin: str
    verdict: str  # worse, no_worse, undecided or too_few
    text: str


@dataclass(frozen=True)
class CanaryRound:
    checked_at: datetime
    candidate_n: int
    live_n: int
    decision: str


@dataclass(frozen=True)
class CanaryView:
    """A canary as the Promotions page shows it (:func:`canary_view`); numbers from the judge's latest round."""

    request_id: int
    status: str
    running: bool
    candidate: str
    live: str | None
    plan: CanaryPlan
    started_at: datetime | None
    ends_at: datetime | None
    time_left: timedelta | None
    candidate_n: int
    live_n: int
    metrics: tuple[MetricView, ...]
    decision: str
    reason: str
    test: str
    rounds: tuple[CanaryRound, ...]


def describe_test(plan: CanaryPlan) -> str:
    """The sequential test in one paragraph, for the page."""
    return ("Every look compares the candidate's exchanges with the live version's in the same minutes (real "
            "users' traffic only). For the flag and error rates (and the negative feedback rate: thumbs down of rated "
            "answers, when chosen) it bounds the difference candidate minus live with "
            f"a {1 - plan.alpha:.0%} confidence sequence (valid however often it is looked at): the candidate is "
            "shown worse when even the lower bound is above 0 (rolled back at once) and shown no worse when the "
            "upper bound is below the margin. For the p95 time to first token it bounds the candidate's share of "
            "answers slower than the live p95 plus the margin: above 5 % is shown worse, below 5 % no worse. "
            f"Nothing is decided before {plan.min_exchanges} exchanges per arm; the canary is promoted when every "
            f"metric is shown no worse, and rolled back when the {plan.minutes}-minute time box ends undecided.")


def _metric_view(raw: dict[str, Any]) -> MetricView:
    m = MetricResult.from_dict(raw)

    def fmt(v: float | None, rate: bool) -> str:
        if v is None:
            return "no data"
        return _pct(v) if rate else f"{v:.0f} ms"

    if m.metric == "p95_ttft":
        threshold = "" if m.threshold_ms is None else f" than {m.threshold_ms:.0f} ms"
        share = "no data" if m.difference is None else \
            f"{_pct(m.difference + TTFT_TAIL)} of answers slower{threshold} (5 % may be)"
        bounds = "none yet" if m.lower is None or m.upper is None else \
            f"{_pct(max(0.0, m.lower + TTFT_TAIL))} to {_pct(m.upper + TTFT_TAIL)}"
        return MetricView(m.metric, m.label, fmt(m.candidate, False), fmt(m.live, False), share, bounds,
                          f"+{m.margin:.0%} on the live p95", m.verdict, m.text)
    def counts(k: int | None, n: int, v: float | None) -> str:
        return fmt(v, True) if k is None or v is None else f"{fmt(v, True)} ({k}/{n})"

    bounds = "none yet" if m.lower is None or m.upper is None else \
        f"{m.lower * 100:+.1f} to {m.upper * 100:+.1f} percentage points"
    return MetricView(m.metric, m.label, counts(m.candidate_k, m.candidate_n, m.candidate),
                      counts(m.live_k, m.live_n, m.live), "no data" if m.difference is None else _points(m.difference),
                      bounds, f"+{m.margin * 100:g} percentage points", m.verdict, m.text)


def _view(ctx: AppContext, s: Session, request: PromotionRequest) -> CanaryView | None:
    if request.canary_plan is None:
        return None
    plan = CanaryPlan.from_dict(request.canary_plan)
    running = request.status == RUNNING
    result = request.canary_result or {}
    candidate = versions_q.get_model_version(s, request.version_id)
    if running:
        holder = versions_q.version_for_alias(s, PRODUCTION)
        live = holder.name if holder else None
    else:
        was = versions_q.get_model_version(s, request.from_version_id) if request.from_version_id else None
        live = result.get("live") or (was.name if was else None)
    if result:
        reason = str(result.get("reason") or "")
    elif running:
        reason = f"The judge has not looked yet; it looks every {ctx.settings.canary_check_seconds:g} s."
    else:
        reason = "The canary starts when the request is approved." if request.status == "pending" else \
            "The canary never ran."
    time_left = None
    if running and request.canary_ends_at is not None:
        time_left = max(timedelta(0), request.canary_ends_at - ctx.now())
    rounds = tuple(CanaryRound(c.checked_at, c.candidate_n, c.live_n, c.decision)
                   for c in canary_q.checks(s, request.id))
    return CanaryView(request.id, request.status, running, candidate.name if candidate else "?", live, plan,
                      request.canary_started_at, request.canary_ends_at, time_left,
                      int(result.get("candidate_n") or 0), int(result.get("live_n") or 0),
                      tuple(_metric_view(m) for m in result.get("metrics") or ()),
                      str(result.get("decision") or "continue"), reason, describe_test(plan), rounds)


@requires("promotion.view")
def canary_view(ctx: AppContext, actor: Principal, request_id: int) -> CanaryView | None:
    """The canary of promotion request ``request_id`` for the page (None: the request has no canary plan)."""
    with ctx.db.session(readonly=True) as s:
        request = promo_q.get_request(s, request_id)
        if request is None:
            raise NotFound(f"There is no promotion request #{request_id}.")
        return _view(ctx, s, request)


@requires("promotion.approve")
def end_canary(ctx: AppContext, actor: Principal, request_id: int, note: str) -> CanaryView:
    """Stop a running canary now, saying why: rolled back (the alias never moved; every console stops the
    candidate), audited ``promotion.canary_stopped`` with the statistics of this last look. The note is personal
    free text: it is kept only in the audit event (erasable), not in the stored statistics."""
    note = required_text(note, "the note saying why", 1000)
    with ctx.db.session() as s:
        request = promo_q.lock_request(s, request_id)
        if request is None:
            raise NotFound(f"There is no promotion request #{request_id}.")
        running = _canary_of(s, request) if request.status == RUNNING else None
        if running is None:
            raise InvalidInput(f"Request #{request_id} is not a running canary (it is {request.status}).")
        evaluation = replace(evaluate(s, running, ctx.now()), decision="rollback", undecided=False,
                             reason=f"stopped by {actor.username}")
        _end(s, request, evaluation, action="promotion.canary_stopped", actor=actor.username,
             actor_id=actor.user_id, note=note)
        view = _view(ctx, s, request)
        assert view is not None  # it has a plan: it was running
        return view
