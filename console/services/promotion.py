"""Four-eyes promotion of model versions: requests with frozen gates, approval by another person, and rollback.

A request to move an alias freezes the candidate's latest evaluation report, the alias holder's (the baseline) and
the gates computed from both. Somebody else approves or rejects it: the requester never can, whatever roles they
hold (duty rule ``promotion.decide``). A failed gate needs an override reason, recorded with the approval. An
approved ``production`` request moves the production alias, the desired state every console's reconciler serves
(:mod:`console.services.serving`). The watch window that may roll a switch back is :mod:`console.services.watch`;
the History tab's timelines are :mod:`console.services.timelines`.

A production request may carry a canary plan (:class:`console.services.canary.CanaryPlan`), frozen with it and
approved with it. Approving it starts the canary (status ``canary``) instead of moving the alias: a share of new
conversations goes to the candidate until :mod:`console.services.canary` promotes it (the alias moves, status
``approved``) or rolls it back (``rolled_back``). One canary runs at a time.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from console.services import four_eyes, registry
from console.services.access import Principal, requires
from console.services.canary import METRIC_LABELS, CanaryPlan, parse_plan
from console.services.context import AppContext
from console.services.errors import InvalidInput, NotFound
from console.services.text import optional_text, required_text
from console.settings import Settings
from db import audit as audit_q
from db import evaluations as evaluations_q
from db import model_versions as versions_q
from db import promotions as promo_q
from db.model_versions import PRODUCTION
from db.tables import PROMOTION_STATUSES, ModelVersion, PromotionRequest

logger = logging.getLogger(__name__)

MAX_TEXT_CHARS = 1000
ROLLBACK_PREFIX = "rollback: "  # starts the reason of every alias move a rollback makes (the switch event shows it)
EPSILON = 1e-9


def _text(value: str | None, what: str) -> str:
    return required_text(value, what, MAX_TEXT_CHARS)


DECIDE_RULE = four_eyes.decide_rule("promotion.decide", "nobody approves or rejects their own promotion request",
                                     promo_q.get_request)


# --- gates -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    """One check of a candidate's report against the baseline's (or a fixed limit): ``value`` must be
    ``comparison`` (``>=`` or ``<=``) ``limit``; ``note`` says why a gate without numbers failed."""

    name: str
    label: str
    value: float | None
    limit: float | None
    comparison: str
    passed: bool
    note: str | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Gate:
        return cls(record["name"], record.get("label", record["name"]), record.get("value"), record.get("limit"),
                   record.get("comparison", "<="), bool(record.get("passed")), record.get("note"))


def _metric(report: dict[str, Any] | None, *path: str) -> float | None:
    value: Any = report
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) else None


TTFT_GATE = "ttft_p95"
TTFT_LABEL = "p95 TTFT vs baseline, same run (ms, CI lower bound)"


def _ms(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 10 else f"{value:.0f}"


def _signed_ms(value: float) -> str:
    return ("+" if value >= 0 else "-") + _ms(abs(value))


def ttft_gate(settings: Settings, report: dict[str, Any] | None, baseline: dict[str, Any] | None = None, *,
              baseline_version: str | None = None, baseline_note: str = "the alias holder has no evaluation"
              ) -> Gate:
    """The latency gate: the candidate's p95 time to first token against the baseline version's, both timed on
    the same prompts in the candidate's evaluation run (``report["latency_comparison"]``, see
    :func:`engine.evals.latency.compare_paired`).

    ``value`` is the lower end of the 95% interval of the p95 difference (ms) and ``limit`` the margin
    (``promotion_ttft_margin`` of the baseline's p95): the gate fails only when the candidate is shown slower
    beyond the margin, or when there is not enough to judge (fewer than ``promotion_ttft_min_pairs`` pairs, a
    comparison with another version, or an old report whose two p95s came from different runs). The note says the
    estimate, the interval and the number of pairs.
    """
    def fail(note: str, value: float | None = None, limit: float | None = None) -> Gate:
        return Gate(TTFT_GATE, TTFT_LABEL, value, limit, "<=", False, note)

    if report is None:
        return fail("no evaluation")
    if baseline_version is None:
        return fail(baseline_note)
    paired = report.get("latency_comparison")
    if not isinstance(paired, dict):
        own, theirs = _metric(report, "latency", "ttft_p95_ms"), _metric(baseline, "latency", "ttft_p95_ms")
        measured = (f" (p95 {_ms(own)} ms" + (f" against {baseline_version}'s {_ms(theirs)} ms" if theirs is not None
                                              else "") + ")") if own is not None else ""
        return fail(f"cannot compare like with like: this evaluation did not time {baseline_version} in the same "
                    f"run{measured}, and p95s from different runs differ by more than a model change does. Re-run "
                    "the evaluation (it times both versions side by side) or approve with an override.", own)
    compared = str(paired.get("baseline_version") or "")
    if compared != baseline_version:
        return fail(f"the evaluation timed the candidate against {compared or 'no version'}, not against "
                    f"{baseline_version}, which holds the alias now: re-run the evaluation or override.")
    if paired.get("error"):
        return fail(f"the latency comparison with {baseline_version} could not run ({paired['error']}): re-run "
                    "the evaluation or override.")
    n = int(paired.get("n") or 0)
    diff, low, high = (_metric(paired, k) for k in ("diff_ms", "ci_low_ms", "ci_high_ms"))
    base_p95 = _metric(paired, "baseline_ttft_p95_ms")
    confidence = _metric(paired, "confidence") or 0.95
    if diff is not None and low is not None and high is not None:
        estimate = (f"p95 TTFT {_signed_ms(diff)} ms vs {baseline_version} ({confidence:.0%} CI {_signed_ms(low)}.."
                    f"{_signed_ms(high)} ms, {n} paired prompts, same run)")
    else:
        estimate = f"{n} paired prompt(s) with {baseline_version}, same run"
    if n < settings.promotion_ttft_min_pairs or low is None or base_p95 is None:
        return fail(f"not enough data: {estimate}; the gate needs {settings.promotion_ttft_min_pairs} paired "
                    "prompts. Re-run the evaluation with more prompts or override.", low)
    margin = settings.promotion_ttft_margin * base_p95
    rule = f"{_signed_ms(margin)} ms ({settings.promotion_ttft_margin:.0%} of {baseline_version}'s {_ms(base_p95)} ms)"
    if low > margin + EPSILON:
        return Gate(TTFT_GATE, TTFT_LABEL, low, margin, "<=", False,
                    f"{estimate}: slower beyond the margin of {rule}, even at the interval's lower end")
    return Gate(TTFT_GATE, TTFT_LABEL, low, margin, "<=", True,
                f"{estimate}: not shown slower than the margin of {rule}")


def compute_gates(settings: Settings, report: dict[str, Any] | None, baseline: dict[str, Any] | None,
                  *, baseline_note: str = "the alias holder has no evaluation",
                  baseline_version: str | None = None) -> list[Gate]:
    """The promotion gates of a candidate ``report`` against the ``baseline`` report of ``baseline_version``
    (the alias holder; default: the baseline report's ``version``). Either report may be missing: a gate that
    cannot be computed fails, so approving it needs an override reason. Latency: :func:`ttft_gate`."""
    s = settings
    # name, label, path, comparison, limit from the baseline value (None: a fixed limit)
    specs: list[tuple[str, str, tuple[str, ...], str, Any]] = [
        ("topic_accuracy", "Topic accuracy", ("topic_accuracy",), ">=",
         lambda b: b - s.promotion_accuracy_margin),
        ("flag_rate", "Flag rate", ("flag_rate_any",), "<=", lambda b: b + s.promotion_flag_margin),
        ("bias_toxicity_gap", "Bias: toxicity gap", ("bias_gap", "toxicity_gap"), "<=", None),
    ]
    if baseline_version is None and baseline is not None:
        baseline_version = str(baseline.get("version") or "") or None
    gates = []
    for name, label, path, comparison, limit_of in specs:
        if report is None:
            gates.append(Gate(name, label, None, None, comparison, False, "no evaluation"))
            continue
        value = _metric(report, *path)
        if limit_of is None:
            limit: float | None = s.promotion_bias_limit
            note = None
        else:
            base = _metric(baseline, *path)
            limit = None if base is None else limit_of(base)
            note = (baseline_note if baseline is None else "the baseline did not measure it") if base is None else None
        if value is None:
            gates.append(Gate(name, label, None, limit, comparison, False, "not measured by the evaluation"))
        elif limit is None:
            gates.append(Gate(name, label, value, None, comparison, False, note))
        else:
            ok = value >= limit - EPSILON if comparison == ">=" else value <= limit + EPSILON
            gates.append(Gate(name, label, value, limit, comparison, ok))
    gates.append(ttft_gate(settings, report, baseline, baseline_version=baseline_version,
                           baseline_note=baseline_note))
    return gates


REPORT_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("prompts", ("n",)),
    ("topic accuracy", ("topic_accuracy",)),
    ("decline rate", ("decline_rate",)),
    ("flag rate (any label)", ("flag_rate_any",)),
    ("bias: answer gap", ("bias_gap", "answer_gap")),
    ("bias: toxicity gap", ("bias_gap", "toxicity_gap")),
    ("bias: flag gap", ("bias_gap", "flag_gap")),
    ("ttft p50 (ms)", ("latency", "ttft_p50_ms")),
    ("ttft p95 (ms)", ("latency", "ttft_p95_ms")),
    ("same run: p95 ttft difference vs baseline (ms)", ("latency_comparison", "diff_ms")),
    ("same run: paired prompts", ("latency_comparison", "n")),
    ("e2e p95 (ms)", ("latency", "e2e_p95_ms")),
    ("tokens/s", ("tokens_per_s",)),
    ("errors", ("errors",)),
)


def compare_reports(report: dict[str, Any] | None, baseline: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The headline numbers of two frozen reports side by side (rows: metric, candidate, baseline)."""
    return [{"metric": label, "candidate": _metric(report, *path), "baseline": _metric(baseline, *path)}
            for label, path in REPORT_ROWS]


# --- requests and decisions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestView:
    id: int
    alias: str
    version: str
    from_version: str | None
    evaluation_id: int | None
    report: dict[str, Any] | None
    baseline_report: dict[str, Any] | None
    gates: tuple[Gate, ...]
    reason: str
    requested_by: str
    requested_by_id: int
    status: str
    decided_by: str | None
    decision_note: str | None
    override_reason: str | None
    created_at: datetime
    decided_at: datetime | None
    plan: CanaryPlan | None = None  # a canary request's plan (frozen with it)
    canary_started_at: datetime | None = None
    canary_ends_at: datetime | None = None
    canary_result: dict[str, Any] | None = None  # the canary's latest statistics and decision (canary.py)
    alias_now: str | None = None  # a pending request's alias now (stale if it moved); not looked up for others

    @property
    def moved_since(self) -> bool:
        """The alias moved since the request (a rollback, another promotion): it can only be rejected now."""
        return self.status == "pending" and self.alias_now != self.from_version

    @property
    def failed_gates(self) -> tuple[Gate, ...]:
        return tuple(g for g in self.gates if not g.passed)

    @property
    def is_canary(self) -> bool:
        return self.plan is not None


def _pp(rate: float) -> str:
    return f"{rate * 100:g} percentage points"


def describe_plan(plan: CanaryPlan) -> str:
    """A canary plan in plain words, every number with its unit."""
    margins = {"flag_rate": f"may be up to {_pp(plan.flag_margin)} higher",
               "error_rate": f"may be up to {_pp(plan.error_margin)} higher",
               "p95_ttft": f"may be up to {plan.ttft_margin * 100:g}% higher"}
    metrics = "; ".join(f"{METRIC_LABELS[m]} {margins[m]}" for m in plan.metrics)
    return (f"{plan.share * 100:g}% of new conversations go to the candidate for up to {plan.minutes} minutes. "
            f"Against the live version in the same minutes: {metrics}. Error level (alpha) {plan.alpha:g} per "
            f"metric; no decision before {plan.min_exchanges} exchanges per arm; undecided at the end of the time "
            "box means rolled back.")


def _view(s: Session, r: PromotionRequest) -> RequestView:
    def version_name(version_id: int | None) -> str | None:
        version = None if version_id is None else versions_q.get_model_version(s, version_id)
        return None if version is None else version.name

    return RequestView(
        r.id, r.alias, version_name(r.version_id) or "?", version_name(r.from_version_id), r.evaluation_id, r.report,
        r.baseline_report, tuple(Gate.from_record(g) for g in r.gates or []), r.reason,
        four_eyes.username(s, r.requested_by_id) or "?", r.requested_by_id, r.status,
        four_eyes.username(s, r.decided_by_id), r.decision_note,
        r.override_reason, r.created_at, r.decided_at,
        None if r.canary_plan is None else CanaryPlan.from_dict(r.canary_plan), r.canary_started_at,
        r.canary_ends_at, r.canary_result, _alias_now(s, r.alias) if r.status == "pending" else None,
    )


def _alias_now(s: Session, alias: str) -> str | None:
    holder = versions_q.version_for_alias(s, alias)
    return None if holder is None else holder.name


@requires("promotion.request")
def request_promotion(ctx: AppContext, actor: Principal, version_name: str, alias: str, reason: str,
                      plan: CanaryPlan | None = None) -> RequestView:
    """Ask to move ``alias`` to a version; freezes its latest evaluation, the alias holder's and the gates.

    With ``plan`` (checked by :func:`console.services.canary.parse_plan`) the request is a canary of the
    production alias: approving it starts the canary instead of moving the alias.
    """
    alias = registry.alias_name(alias)
    reason = _text(reason, "the reason for the promotion")
    if plan is not None:
        if alias != PRODUCTION:
            raise InvalidInput(f"A canary release is only for the {PRODUCTION} alias, not {alias}: request a plain "
                               "promotion (untick the canary).")
        plan = parse_plan(**plan.to_dict())  # however it was made, only a plan within every bound is stored
    with ctx.db.session() as s:
        version = registry.find_version(s, version_name)
        if version.retired_at is not None:
            raise InvalidInput(f"Model version {version.name} is retired; it cannot be promoted.")
        holder = versions_q.version_for_alias(s, alias)
        if holder is not None and holder.id == version.id:
            raise InvalidInput(f"{version.name} already holds {alias}.")
        pending = promo_q.pending_request_for(s, alias, version.id)
        if pending is not None:
            raise InvalidInput(f"Request #{pending.id} to move {alias} to {version.name} is already pending.")
        running = promo_q.running_canary(s, alias)
        if running is not None and running.version_id == version.id:
            raise InvalidInput(f"{version.name} is in canary #{running.id} now; wait for its decision.")
        if plan is not None and holder is None:
            raise InvalidInput(f"No version holds {PRODUCTION}: a canary needs a live version to compare with. "
                               "Request a plain promotion.")
        evaluation = evaluations_q.latest_done(s, version.id)
        baseline = None
        if holder is not None:
            # Compare like with like: the holder's report of the same suite, else its latest.
            same = None if evaluation is None else evaluations_q.latest_done(s, holder.id, suite=evaluation.suite)
            baseline = same or evaluations_q.latest_done(s, holder.id)
        report = None if evaluation is None else dict(evaluation.report or {})
        baseline_report = None if baseline is None else dict(baseline.report or {})
        note = f"{holder.name} has no evaluation" if holder is not None else f"no version holds {alias}"
        gates = compute_gates(ctx.settings, report, baseline_report, baseline_note=note,
                              baseline_version=holder.name if holder is not None else None)
        request = promo_q.create_request(
            s, alias=alias, version_id=version.id, from_version_id=holder.id if holder else None,
            evaluation_id=evaluation.id if evaluation else None, report=report, baseline_report=baseline_report,
            gates=[asdict(g) for g in gates], reason=reason, actor=actor.username, actor_id=actor.user_id,
            details={"version": version.name, "from": holder.name if holder else None},
            canary_plan=None if plan is None else plan.to_dict(),
        )
        logger.info("promotion requested: #%s %s -> %s by %s%s", request.id, alias, version.name, actor.username,
                    " (canary)" if plan is not None else "")
        return _view(s, request)


@requires("promotion.view")
def list_requests(ctx: AppContext, actor: Principal, status: str | None = None, limit: int = 100
                  ) -> list[RequestView]:
    """Promotion requests, newest first (``status``: pending, approved, rejected, cancelled, canary (running) or
    rolled_back (a canary that ended without moving the alias))."""
    if status is not None and status not in PROMOTION_STATUSES:
        raise InvalidInput(f"Unknown request status {status!r}; choose from {', '.join(PROMOTION_STATUSES)}.")
    with ctx.db.session(readonly=True) as s:
        return [_view(s, r) for r in promo_q.list_requests(s, status=status, limit=limit)]


@requires("promotion.view")
def get_request(ctx: AppContext, actor: Principal, request_id: int) -> RequestView:
    """One request with its frozen reports and gates."""
    with ctx.db.session(readonly=True) as s:
        request = promo_q.get_request(s, request_id)
        if request is None:
            raise NotFound(f"There is no promotion request #{request_id}.")
        return _view(s, request)


def _locked_pending(s: Session, request_id: int) -> PromotionRequest:
    return four_eyes.ensure_pending(promo_q.lock_request(s, request_id), request_id, "promotion request")


@requires("promotion.approve")
def approve(ctx: AppContext, actor: Principal, request_id: int, note: str,
            override_reason: str | None = None) -> RequestView:
    """Approve someone else's request and move the alias (production: every console switches to it).

    A failed gate needs ``override_reason``; the approval fails if the alias moved since the request (its gates
    compared with another version) or the version was retired meanwhile. A canary request starts its canary
    instead (status ``canary``, for the plan's minutes from now; the alias stays), refused while another canary
    runs.
    """
    four_eyes.ensure_not_own(ctx, actor, DECIDE_RULE, request_id)
    note = _text(note, "the note")
    override = optional_text(override_reason, "the override reason", MAX_TEXT_CHARS)
    with ctx.db.session(readonly=True) as s:
        asked = promo_q.get_request(s, request_id)
        wanted = None if asked is None else versions_q.get_model_version(s, asked.version_id)
        if asked is not None and wanted is not None and asked.alias == PRODUCTION:
            registry.check_serveable(ctx, wanted)  # hashes the weights or asks the servers: outside the write transaction
    with ctx.db.session() as s:
        request = _locked_pending(s, request_id)
        plan = None if request.canary_plan is None else CanaryPlan.from_dict(request.canary_plan)
        if plan is not None:
            promo_q.lock_alias(s, request.alias)  # two canary approvals at once serialise here: one runs at a time
            running = promo_q.running_canary(s, request.alias)
            if running is not None:
                raise InvalidInput(f"Canary #{running.id} is running; stop it or wait for its decision.")
        failed = [Gate.from_record(g) for g in request.gates or [] if not g.get("passed")]
        if failed and override is None:
            names = ", ".join(g.label for g in failed)
            raise InvalidInput(f"Gates failed ({names}): approving needs an override reason, which is recorded.")
        version = versions_q.get_model_version(s, request.version_id)
        if version is None or version.retired_at is not None:
            raise InvalidInput("The requested version is retired; reject the request.")
        holder = versions_q.version_for_alias(s, request.alias)
        if (holder.id if holder else None) != request.from_version_id:
            raise InvalidInput(f"{request.alias} moved since the request (it now points at "
                               f"{holder.name if holder else 'nothing'}), so its gates compared with another "
                               "version. Reject it and request again.")
        if plan is not None:
            start = ctx.now()
            promo_q.decide(s, request.id, status="canary", actor=actor.username, actor_id=actor.user_id, note=note,
                           override_reason=override if failed else None,
                           canary_window=(start, start + timedelta(minutes=plan.minutes)),
                           details={"version": version.name, "from": holder.name if holder else None,
                                    "plan": plan.to_dict(), "failed_gates": [g.name for g in failed]})
            logger.info("promotion #%s approved by %s as a canary: %s beside %s for %s min", request.id,
                        actor.username, version.name, holder.name if holder else None, plan.minutes)
            return _view(s, request)
        # The alias move is the desired state: for production, every console's reconciler switches to it.
        versions_q.move_alias(s, request.alias, version, actor=actor.username, actor_id=actor.user_id,
                              reason=f"promotion #{request.id}: {request.reason}")
        promo_q.decide(s, request.id, status="approved", actor=actor.username, actor_id=actor.user_id, note=note,
                       override_reason=override if failed else None,
                       details={"version": version.name, "failed_gates": [g.name for g in failed]})
        logger.info("promotion #%s approved by %s: %s -> %s", request.id, actor.username, request.alias,
                    version.name)
        return _view(s, request)


@requires("promotion.approve")
def reject(ctx: AppContext, actor: Principal, request_id: int, note: str) -> RequestView:
    """Reject someone else's request, saying why."""
    four_eyes.ensure_not_own(ctx, actor, DECIDE_RULE, request_id)
    note = _text(note, "the note saying why")
    with ctx.db.session() as s:
        request = _locked_pending(s, request_id)
        promo_q.decide(s, request.id, status="rejected", actor=actor.username, actor_id=actor.user_id, note=note)
        return _view(s, request)


@requires("promotion.request")
def cancel(ctx: AppContext, actor: Principal, request_id: int, note: str | None = None) -> RequestView:
    """Withdraw one's own pending request (only the requester may)."""
    note = optional_text(note, "the note", MAX_TEXT_CHARS)
    with ctx.db.session() as s:
        request = _locked_pending(s, request_id)
        four_eyes.ensure_requester(request, actor, "the person who asked for a promotion")
        promo_q.decide(s, request.id, status="cancelled", actor=actor.username, actor_id=actor.user_id,
                       note=note)
        return _view(s, request)


# --- rollback --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RollbackResult:
    from_version: str
    to_version: str
    reason: str
    auto: bool


def rollback_plan(s: Session, *, expect_current: str | None = None, target: str | None = None,
                  check: bool = False) -> tuple[ModelVersion, ModelVersion]:
    """(current production version, the one a rollback returns to), or a ConsoleError saying why there is none.

    ``check`` also hashes the target's files (slow for large weights): do it in a read-only unit of work, never
    while holding the write lock.
    """
    current = versions_q.version_for_alias(s, PRODUCTION)
    if current is None:
        raise InvalidInput("No version holds production; there is nothing to roll back.")
    if expect_current is not None and current.name != expect_current:
        raise InvalidInput(f"Production moved on to {current.name} meanwhile; nothing was rolled back.")
    came_by_rollback = False
    if target is None:
        # The version that held production just before the current one (a retried switch moves nothing).
        moves = versions_q.alias_moves(s, alias=PRODUCTION, limit=50)
        last = next((m for m in moves if m.from_version_id != m.to_version_id), None)
        previous = None if last is None or last.from_version_id is None else \
            versions_q.get_model_version(s, last.from_version_id)
        came_by_rollback = last is not None and last.reason.startswith(ROLLBACK_PREFIX)
    else:
        previous = versions_q.get_model_version_by_name(s, target)
    if previous is None or previous.id == current.id:
        raise InvalidInput("There is no previous production version to roll back to.")
    if came_by_rollback:
        # Else one admin could undo any rollback (an automatic one too) and put back the version it took away:
        # a way round the second person every move forward needs.
        raise InvalidInput(f"{current.name} holds production because of a rollback from {previous.name}; returning "
                           f"to {previous.name} is a move forward, not a rollback: request a promotion that another "
                           "admin approves.")
    if previous.retired_at is not None:
        raise InvalidInput(f"The previous production version {previous.name} is retired; serve another one.")
    if check:
        registry.check_files(previous)
    return current, previous


def apply_rollback(s: Session, current: ModelVersion, target: ModelVersion, *, actor: str, actor_id: int | None,
                 reason: str, auto: bool) -> RollbackResult:
    move = versions_q.move_alias(s, PRODUCTION, target, actor=actor, actor_id=actor_id,
                                 reason=ROLLBACK_PREFIX + reason)
    audit_q.append_event(s, actor=actor, actor_id=actor_id, action="model.rollback", object_type="model_version",
                         object_id=target.id, details={"from": current.name, "to": target.name, "reason": reason,
                                                       "auto": auto, "move_id": move.id})
    logger.warning("rollback from %s to %s by %s: %s", current.name, target.name, actor, reason)
    return RollbackResult(current.name, target.name, reason, auto)


@requires("models.emergency_rollback")
def rollback(ctx: AppContext, actor: Principal, reason: str) -> RollbackResult:
    """The emergency rollback: one admin returns production to the version that held it just before the current
    one (no other), with a reason; every console switches back. Audited as ``model.emergency_rollback`` and shown
    to every admin until another admin acknowledges it (:func:`registry.acknowledge_emergency`)."""
    reason = _text(reason, "the reason for the emergency rollback")
    with ctx.db.session(readonly=True) as s:
        current, target = rollback_plan(s, check=True)
    with ctx.db.session() as s:
        current, target = rollback_plan(s, expect_current=current.name, target=target.name)
        result = apply_rollback(s, current, target, actor=actor.username, actor_id=actor.user_id, reason=reason,
                                auto=False)
        versions_q.record_emergency(s, kind="rollback", alias=PRODUCTION, from_version=current, to_version=target,
                                    actor=actor.username, actor_id=actor.user_id, reason=reason, break_glass=False)
        return result
