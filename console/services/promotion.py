"""Four-eyes promotion of model versions, the watch window after a production switch, rollback, and history.

A request to move an alias freezes the candidate's latest evaluation report, the alias holder's (the baseline) and
the gates computed from both. Somebody else approves or rejects it: the requester never can, whatever roles they
hold (duty rule ``promotion.decide``). A failed gate needs an override reason, recorded with the approval. An
approved ``production`` request moves the production alias, the desired state every console's reconciler serves.

After a production switch the :class:`Watcher` compares the new version's live traffic with the previous
version's for ``watch_minutes`` and, on a regression, rolls back (or only proposes it) and says why.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from console.services import serving
from console.services.access import DutyRule, Principal, ensure_separation, register_duty_rule, requires
from console.services.context import AppContext
from console.services.errors import AccessDenied, ConsoleError, InvalidInput, NotFound
from console.services.periodic import PeriodicTask
from console.services.text import clean_text
from console.settings import Settings
from db import audit as audit_q
from db import evaluations as evaluations_q
from db import model_versions as versions_q
from db import promotions as promo_q
from db import users as users_q
from db.model_versions import PRODUCTION
from db.promotions import WindowStats
from db.tables import AuditEvent, ModelVersion, PromotionRequest

logger = logging.getLogger(__name__)

MAX_TEXT_CHARS = 1000
WATCH_ACTOR = "watch"  # the actor of everything the watch window does by itself
ROLLBACK_PREFIX = "rollback: "  # starts the reason of every alias move a rollback makes (the switch event shows it)
WATCH_ACTIONS = ("model.watch_regression", "model.watch_ended")
EPSILON = 1e-9
RECENT = timedelta(days=1)  # how long the page keeps showing a regression the watch found


def _text(value: str | None, what: str) -> str:
    text = clean_text(value or "").strip()
    if not text:
        raise InvalidInput(f"Give {what}; it is recorded in the audit log.")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInput(f"Keep {what} under {MAX_TEXT_CHARS:,} characters.")
    return text


def _requester_of(session: Session, request_id: str) -> int | None:
    request = promo_q.get_request(session, int(request_id))
    return None if request is None else request.requested_by_id


DECIDE_RULE = register_duty_rule(
    DutyRule("promotion.decide", "nobody approves or rejects their own promotion request", owner_of=_requester_of)
)


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

    @property
    def failed_gates(self) -> tuple[Gate, ...]:
        return tuple(g for g in self.gates if not g.passed)


def _view(s: Session, r: PromotionRequest) -> RequestView:
    def version_name(version_id: int | None) -> str | None:
        version = None if version_id is None else versions_q.get_model_version(s, version_id)
        return None if version is None else version.name

    def username(user_id: int | None) -> str | None:
        user = None if user_id is None else users_q.get_user(s, user_id)
        return None if user is None else user.username

    return RequestView(
        r.id, r.alias, version_name(r.version_id) or "?", version_name(r.from_version_id), r.evaluation_id, r.report,
        r.baseline_report, tuple(Gate.from_record(g) for g in r.gates or []), r.reason,
        username(r.requested_by_id) or "?", r.requested_by_id, r.status, username(r.decided_by_id), r.decision_note,
        r.override_reason, r.created_at, r.decided_at,
    )


def _version(s: Session, name: str) -> ModelVersion:
    version = versions_q.get_model_version_by_name(s, (name or "").strip())
    if version is None:
        raise NotFound(f"No model version named {name!r} is registered.")
    return version


@requires("promotion.request")
def request_promotion(ctx: AppContext, actor: Principal, version_name: str, alias: str, reason: str) -> RequestView:
    """Ask to move ``alias`` to a version; freezes its latest evaluation, the alias holder's and the gates."""
    alias = (alias or "").strip().lower()
    if not serving.ALIAS.match(alias):
        raise InvalidInput("An alias has 1-60 lower-case letters, digits, '-' or '_' and starts with a letter.")
    reason = _text(reason, "a reason for the promotion")
    with ctx.db.session() as s:
        version = _version(s, version_name)
        if version.retired_at is not None:
            raise InvalidInput(f"Model version {version.name} is retired; it cannot be promoted.")
        holder = versions_q.version_for_alias(s, alias)
        if holder is not None and holder.id == version.id:
            raise InvalidInput(f"{version.name} already holds {alias}.")
        pending = promo_q.pending_request_for(s, alias, version.id)
        if pending is not None:
            raise InvalidInput(f"Request #{pending.id} to move {alias} to {version.name} is already pending.")
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
        )
        logger.info("promotion requested: #%s %s -> %s by %s", request.id, alias, version.name, actor.username)
        return _view(s, request)


@requires("promotion.view")
def list_requests(ctx: AppContext, actor: Principal, status: str | None = None, limit: int = 100
                  ) -> list[RequestView]:
    """Promotion requests, newest first (``status``: pending, approved, rejected or cancelled)."""
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


def _ensure_not_own(ctx: AppContext, actor: Principal, request_id: int) -> None:
    # In a read-only unit of work before the write transaction: the refusal is audited in its own transaction,
    # which on SQLite would wait behind a write lock held by the caller. The requester never changes.
    with ctx.db.session(readonly=True) as s:
        ensure_separation(ctx, s, actor, DECIDE_RULE.name, str(request_id))


def _locked_pending(s: Session, request_id: int) -> PromotionRequest:
    request = promo_q.lock_request(s, request_id)
    if request is None:
        raise NotFound(f"There is no promotion request #{request_id}.")
    if request.status != "pending":
        raise InvalidInput(f"Request #{request_id} is already {request.status}.")
    return request


@requires("promotion.approve")
def approve(ctx: AppContext, actor: Principal, request_id: int, note: str,
            override_reason: str | None = None) -> RequestView:
    """Approve someone else's request and move the alias (production: every console switches to it).

    A failed gate needs ``override_reason``; the approval fails if the alias moved since the request (its gates
    compared with another version) or the version was retired meanwhile.
    """
    _ensure_not_own(ctx, actor, request_id)
    note = _text(note, "a note")
    override = (override_reason or "").strip() or None
    with ctx.db.session(readonly=True) as s:
        asked = promo_q.get_request(s, request_id)
        wanted = None if asked is None else versions_q.get_model_version(s, asked.version_id)
        if asked is not None and wanted is not None and asked.alias == PRODUCTION:
            serving.check_files(wanted)  # hashes the weights: outside the write transaction
    with ctx.db.session() as s:
        request = _locked_pending(s, request_id)
        failed = [Gate.from_record(g) for g in request.gates or [] if not g.get("passed")]
        if failed and override is None:
            names = ", ".join(g.label for g in failed)
            raise InvalidInput(f"Gates failed ({names}): approving needs an override reason, which is recorded.")
        if override is not None and len(override) > MAX_TEXT_CHARS:
            raise InvalidInput(f"Keep the override reason under {MAX_TEXT_CHARS:,} characters.")
        version = versions_q.get_model_version(s, request.version_id)
        if version is None or version.retired_at is not None:
            raise InvalidInput("The requested version is retired; reject the request.")
        holder = versions_q.version_for_alias(s, request.alias)
        if (holder.id if holder else None) != request.from_version_id:
            raise InvalidInput(f"{request.alias} moved since the request (it now points at "
                               f"{holder.name if holder else 'nothing'}), so its gates compared with another "
                               "version. Reject it and request again.")
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
    _ensure_not_own(ctx, actor, request_id)
    note = _text(note, "a note saying why")
    with ctx.db.session() as s:
        request = _locked_pending(s, request_id)
        promo_q.decide(s, request.id, status="rejected", actor=actor.username, actor_id=actor.user_id, note=note)
        return _view(s, request)


@requires("promotion.request")
def cancel(ctx: AppContext, actor: Principal, request_id: int, note: str | None = None) -> RequestView:
    """Withdraw one's own pending request (only the requester may)."""
    if note is not None and len(note) > MAX_TEXT_CHARS:
        raise InvalidInput(f"Keep the note under {MAX_TEXT_CHARS:,} characters.")
    note = None if note is None else clean_text(note)
    with ctx.db.session() as s:
        request = _locked_pending(s, request_id)
        if request.requested_by_id != actor.user_id:
            raise AccessDenied("Only the person who asked for a promotion can cancel it; reject it instead.")
        promo_q.decide(s, request.id, status="cancelled", actor=actor.username, actor_id=actor.user_id,
                       note=(note or "").strip() or None)
        return _view(s, request)


# --- rollback --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RollbackResult:
    from_version: str
    to_version: str
    reason: str
    auto: bool


def _rollback_plan(s: Session, *, expect_current: str | None = None, target: str | None = None,
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
    if target is None:
        # The version that held production just before the current one (a retried switch moves nothing).
        moves = versions_q.alias_moves(s, alias=PRODUCTION, limit=50)
        previous_id = next((m.from_version_id for m in moves if m.from_version_id != m.to_version_id), None)
        previous = None if previous_id is None else versions_q.get_model_version(s, previous_id)
    else:
        previous = versions_q.get_model_version_by_name(s, target)
    if previous is None or previous.id == current.id:
        raise InvalidInput("There is no previous production version to roll back to.")
    if previous.retired_at is not None:
        raise InvalidInput(f"The previous production version {previous.name} is retired; serve another one.")
    if check:
        serving.check_files(previous)
    return current, previous


def _do_rollback(s: Session, current: ModelVersion, target: ModelVersion, *, actor: str, actor_id: int | None,
                 reason: str, auto: bool) -> RollbackResult:
    move = versions_q.move_alias(s, PRODUCTION, target, actor=actor, actor_id=actor_id,
                                 reason=ROLLBACK_PREFIX + reason)
    audit_q.append_event(s, actor=actor, actor_id=actor_id, action="model.rollback", object_type="model_version",
                         object_id=target.id, details={"from": current.name, "to": target.name, "reason": reason,
                                                       "auto": auto, "move_id": move.id})
    logger.warning("rollback from %s to %s by %s: %s", current.name, target.name, actor, reason)
    return RollbackResult(current.name, target.name, reason, auto)


def _emergency_rollback(ctx: AppContext, actor: str, actor_id: int | None, reason: str) -> RollbackResult:
    reason = _text(reason, "a reason for the emergency rollback")
    with ctx.db.session(readonly=True) as s:
        current, target = _rollback_plan(s, check=True)
    with ctx.db.session() as s:
        current, target = _rollback_plan(s, expect_current=current.name, target=target.name)
        result = _do_rollback(s, current, target, actor=actor, actor_id=actor_id, reason=reason, auto=False)
        versions_q.record_emergency(s, kind="rollback", alias=PRODUCTION, from_version=current, to_version=target,
                                    actor=actor, actor_id=actor_id, reason=reason, break_glass=False)
        return result


@requires("models.emergency_rollback")
def rollback(ctx: AppContext, actor: Principal, reason: str) -> RollbackResult:
    """The emergency rollback: one admin returns production to the version that held it just before the current
    one (no other), with a reason; every console switches back. Audited as ``model.emergency_rollback`` and shown
    to every admin until another admin acknowledges it (:func:`serving.acknowledge_emergency`)."""
    return _emergency_rollback(ctx, actor.username, actor.user_id, reason)


def rollback_cli(ctx: AppContext, reason: str) -> RollbackResult:
    """:func:`rollback` from the command line (actor ``cli``)."""
    return _emergency_rollback(ctx, "cli", None, reason)


# --- the watch window ------------------------------------------------------------------------------------------


def _stats(w: WindowStats) -> dict[str, Any]:
    return {"requests": w.requests, "errors": w.errors, "flagged": w.flagged, "error_rate": round(w.error_rate, 4),
            "flag_rate": round(w.flag_rate, 4), "ttft_count": w.ttft_count,
            "ttft_p95_ms": None if w.ttft_p95_ms is None else round(w.ttft_p95_ms, 1)}


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_greater(k_after: int, n_after: int, k_before: int, n_before: int) -> float:
    """One-sided Fisher exact p-value that the after rate is higher than the before rate: the chance, with both
    windows' events shared out at random over their exchanges, that the after window gets ``k_after`` or more.
    Exact at any sample size (no normal approximation), so a handful of events cannot look significant."""
    total, events = n_after + n_before, k_after + k_before
    if n_after <= 0 or n_before <= 0 or events == 0:
        return 1.0
    log_all = _log_comb(total, n_after)
    top = min(events, n_after)
    p = sum(math.exp(_log_comb(events, x) + _log_comb(total - events, n_after - x) - log_all)
            for x in range(k_after, top + 1) if n_after - x <= total - events)
    return min(1.0, p)


@dataclass(frozen=True)
class WatchTest:
    """One comparison the watch made: a rate (Fisher exact, one-sided, at ``alpha``, and past ``margin``) or the
    p95 time to first token (past ``margin`` of the old one), with the sample sizes on each side."""

    metric: str  # "error_rate", "flag_rate" (answers the policy flagged or blocked) or "ttft_p95_ms"
    before: float | None
    after: float | None
    n_before: int
    n_after: int
    enough: bool  # both sides have watch_min_samples
    regression: bool
    p_value: float | None = None
    k_before: int | None = None
    k_after: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "before": self.before, "after": self.after, "n_before": self.n_before,
                "n_after": self.n_after, "k_before": self.k_before, "k_after": self.k_after,
                "p_value": None if self.p_value is None else float(f"{self.p_value:.3g}"), "enough": self.enough,
                "regression": self.regression}


def watch_tests(settings: Settings, before: WindowStats, after: WindowStats) -> list[WatchTest]:
    """The watch's comparisons of the new version's window with the old one's.

    A rate regresses only when both sides have ``watch_min_samples`` exchanges, it rose by more than its margin,
    *and* a one-sided Fisher exact test puts the rise below ``watch_significance``: a few unlucky answers, or a
    few users set on tripping the policy, cannot undo an approved promotion. The p95 time to first token regresses
    when both sides have ``watch_min_samples`` timed answers and it rose by more than ``watch_ttft_margin``.
    """
    n = settings.watch_min_samples
    rates = [("error_rate", before.errors, after.errors, settings.watch_error_margin),
             ("flag_rate", before.flagged, after.flagged, settings.watch_flag_margin)]
    out = []
    for metric, k_before, k_after, margin in rates:
        enough = min(before.requests, after.requests) >= n
        rate_before = k_before / before.requests if before.requests else 0.0
        rate_after = k_after / after.requests if after.requests else 0.0
        p = fisher_greater(k_after, after.requests, k_before, before.requests)
        regression = enough and rate_after > rate_before + margin + EPSILON and p < settings.watch_significance
        out.append(WatchTest(metric, round(rate_before, 4), round(rate_after, 4), before.requests, after.requests,
                             enough, regression, p, k_before, k_after))
    enough = min(before.ttft_count, after.ttft_count) >= n
    slower = before.ttft_p95_ms is not None and after.ttft_p95_ms is not None and \
        after.ttft_p95_ms > before.ttft_p95_ms * (1 + settings.watch_ttft_margin)
    out.append(WatchTest("ttft_p95_ms", None if before.ttft_p95_ms is None else round(before.ttft_p95_ms, 1),
                         None if after.ttft_p95_ms is None else round(after.ttft_p95_ms, 1), before.ttft_count,
                         after.ttft_count, enough, enough and slower))
    return out


def _reason(settings: Settings, t: WatchTest) -> str:
    if t.metric == "ttft_p95_ms":
        return (f"p95 time to first token rose from {t.before:.0f} ms to {t.after:.0f} ms "
                f"(more than {settings.watch_ttft_margin:.0%}; {t.n_before} and {t.n_after} answers)")
    what = "error rate" if t.metric == "error_rate" else "flag rate of answers"
    return (f"{what} rose from {t.before or 0:.1%} ({t.k_before}/{t.n_before}) to {t.after or 0:.1%} "
            f"({t.k_after}/{t.n_after}); one-sided Fisher exact p = {t.p_value:.2g} < {settings.watch_significance}")


def describe_test(test: dict[str, Any]) -> str:
    """One comparison of a watch finding (its ``tests``) in words: the metric, both sides with their sample
    sizes, the statistic and the decision."""
    decision = "regression" if test.get("regression") else ("compared" if test.get("enough") else "too few to compare")
    if test.get("metric") == "ttft_p95_ms":
        return (f"p95 time to first token {test.get('before')} → {test.get('after')} ms "
                f"({test.get('n_before')} / {test.get('n_after')} answers): {decision}")
    what = "error rate" if test.get("metric") == "error_rate" else "flagged answers"
    return (f"{what} {test.get('k_before')}/{test.get('n_before')} → {test.get('k_after')}/{test.get('n_after')}, "
            f"one-sided Fisher p = {test.get('p_value')}: {decision}")


def regressions(settings: Settings, before: WindowStats, after: WindowStats) -> list[str]:
    """Why the new version's window is worse than the old one's (empty: it is not), see :func:`watch_tests`."""
    return [_reason(settings, t) for t in watch_tests(settings, before, after) if t.regression]


@dataclass(frozen=True)
class WatchFinding:
    """What the watch concluded about one production switch (the ``model.watch_*`` audit event as a view)."""

    switch_seq: int
    from_version: str
    to_version: str
    switched_at: datetime
    verdict: str  # "regression", "passed" or "too_few_samples"
    action: str  # "rolled_back", "proposed", "rollback_failed" or "none"
    reasons: tuple[str, ...]
    before: dict[str, Any]
    after: dict[str, Any]
    at: datetime
    error: str | None = None
    tests: tuple[dict[str, Any], ...] = ()  # each comparison: statistic, sample sizes, decision (WatchTest)


def _finding(event: AuditEvent | audit_q.AppendedEvent) -> WatchFinding:
    d = event.details
    return WatchFinding(int(event.object_id or 0), d.get("from") or "", d.get("to") or "",
                        datetime.fromisoformat(d["switched_at"]), d.get("verdict", ""), d.get("action", "none"),
                        tuple(d.get("reasons") or ()), d.get("before") or {}, d.get("after") or {}, event.ts,
                        d.get("error"), tuple(d.get("tests") or ()))


def _watched(event: AuditEvent | None) -> bool:
    """A switch the watch looks at: from one version to another, not itself a rollback."""
    if event is None or not event.details.get("from") or not event.details.get("to"):
        return False
    return not str(event.details.get("reason") or "").startswith(ROLLBACK_PREFIX)


class Watcher(PeriodicTask):
    """Watches the version a production switch brought in; one per console process, on its own thread.

    For ``watch_minutes`` after the latest ``model.switch`` it compares the new version's p95 time to first token,
    error rate and flag rate of answers since the switch with the previous version's over the same length of time
    before it: real users' exchanges only, outside load tests, and only the policy's verdicts on answers (not on
    prompts); each comparison needs ``watch_min_samples`` on both sides, and a rate a significant rise
    (:func:`watch_tests`). On a regression it rolls back (``watch_auto_rollback``)
    or only proposes a rollback; either way it writes ``model.watch_regression`` saying why. A window that ends
    without one gets ``model.watch_ended``. Each switch gets one finding, even with several console processes.
    A rollback's own switch is not watched (it returns to the version just compared against).
    """

    def __init__(self, ctx: AppContext, *, interval_s: float | None = None) -> None:
        super().__init__(ctx.settings.watch_check_seconds if interval_s is None else interval_s, name="model-watch")
        self.ctx = ctx
        self._lock = threading.Lock()

    def run_once(self) -> WatchFinding | None:
        """Look at the latest production switch once; returns the finding recorded now, if any."""
        with self._lock:
            settings = self.ctx.settings
            with self.ctx.db.session(readonly=True) as s:
                switch = audit_q.latest_event(s, "model.switch")
                if switch is None or not _watched(switch):
                    return None
                if audit_q.events_about(s, WATCH_ACTIONS, object_type="model_switch", object_id=str(switch.seq)):
                    return None
                old, new = str(switch.details["from"]), str(switch.details["to"])
                window = timedelta(minutes=settings.watch_minutes)
                now, start = self.ctx.now(), switch.ts
                ended = now >= start + window
                # Real users' traffic only: a load test slows every answer while it runs, so its time is left out.
                loaded = promo_q.load_test_periods(s, start - window, min(now, start + window))
                after = promo_q.window_stats(s, new, start, min(now, start + window), exclude=loaded)
                before = promo_q.window_stats(s, old, start - window, start, exclude=loaded)
            enough = min(after.requests, before.requests) >= settings.watch_min_samples
            tests = watch_tests(settings, before, after)
            reasons = [_reason(settings, t) for t in tests if t.regression]
            if reasons:
                return self._record(switch, "regression", reasons, before, after, tests)
            if ended:
                return self._record(switch, "passed" if enough else "too_few_samples", [], before, after, tests)
            return None

    def _record(self, switch: AuditEvent, verdict: str, reasons: list[str], before: WindowStats,
                after: WindowStats, tests: list[WatchTest]) -> WatchFinding | None:
        old, new = str(switch.details["from"]), str(switch.details["to"])
        files_error = None
        if verdict == "regression":
            try:
                with self.ctx.db.session(readonly=True) as s:
                    _rollback_plan(s, expect_current=new, target=old, check=True)
            except ConsoleError as exc:
                files_error = str(exc)
        with self.ctx.db.session() as s:
            promo_q.lock_alias(s, PRODUCTION)  # one finding per switch, even with several console processes
            if audit_q.events_about(s, WATCH_ACTIONS, object_type="model_switch", object_id=str(switch.seq)):
                return None
            holder = versions_q.version_for_alias(s, PRODUCTION)
            if verdict == "regression" and (holder is None or holder.name != new):
                return None  # production moved on meanwhile: the next switch is watched instead
            action, error, plan = "none", None, None
            if verdict == "regression":
                try:
                    if files_error is not None:
                        raise InvalidInput(files_error)
                    plan = _rollback_plan(s, expect_current=new, target=old)
                    action = "rolled_back" if self.ctx.settings.watch_auto_rollback else "proposed"
                except ConsoleError as exc:
                    action, error = "rollback_failed", str(exc)
            details = {"from": old, "to": new, "switched_at": switch.ts.isoformat(), "verdict": verdict,
                       "action": action, "reasons": reasons, "before": _stats(before), "after": _stats(after),
                       "window_minutes": self.ctx.settings.watch_minutes, "error": error,
                       "min_samples": self.ctx.settings.watch_min_samples,
                       "significance": self.ctx.settings.watch_significance,
                       "tests": [t.as_dict() for t in tests]}
            action_name = "model.watch_regression" if verdict == "regression" else "model.watch_ended"
            event = audit_q.append_event(s, actor=WATCH_ACTOR, actor_id=None, action=action_name,
                                         object_type="model_switch", object_id=switch.seq, details=details)
            if plan is not None and action == "rolled_back":
                _do_rollback(s, *plan, actor=WATCH_ACTOR, actor_id=None, auto=True,
                             reason=f"watch window after the switch to {new}: " + "; ".join(reasons))
            if verdict == "regression":
                logger.warning("watch: %s regressed against %s (%s); %s", new, old, "; ".join(reasons), action)
            return _finding(event)


@dataclass(frozen=True)
class AliasMoveView:
    """A move of the production alias: from which version to which, who, when and why (``rollback``: a rollback,
    whose reason is shown without its prefix)."""

    from_version: str | None
    to_version: str | None
    by: str
    at: datetime
    reason: str
    rollback: bool


@dataclass(frozen=True)
class WatchView:
    """The latest production switch as the watch sees it: ``state`` is watching, regression, passed,
    too_few_samples, not_watched (a rollback's own switch, or the first version loaded), or, when production
    moved away from the watched version before the watch concluded, rolled_back or moved (``moved_away`` says
    who, when and why; the consoles may not have switched yet)."""

    from_version: str | None
    to_version: str
    switched_at: datetime
    ends_at: datetime
    state: str
    finding: WatchFinding | None
    moved_away: AliasMoveView | None = None


@dataclass(frozen=True)
class ProductionView:
    current: str | None
    previous: str | None  # where a rollback would return to
    watch: WatchView | None
    recent_regression: WatchFinding | None  # the last regression the watch found in the past day, if any
    last_rollback: AliasMoveView | None = None  # the latest move of production, if it was a rollback in the past day


def _move_view(s: Session, move: Any) -> AliasMoveView:
    def name(version_id: int | None) -> str | None:
        version = None if version_id is None else versions_q.get_model_version(s, version_id)
        return None if version is None else version.name

    rolled = move.reason.startswith(ROLLBACK_PREFIX)
    return AliasMoveView(name(move.from_version_id), name(move.to_version_id), move.actor, move.created_at,
                         move.reason.removeprefix(ROLLBACK_PREFIX), rolled)


@requires("promotion.view")
def production_state(ctx: AppContext, actor: Principal) -> ProductionView:
    """Which version holds production, where a rollback would go, and what the watch window says."""
    with ctx.db.session(readonly=True) as s:
        current = versions_q.version_for_alias(s, PRODUCTION)
        try:
            previous: str | None = _rollback_plan(s)[1].name
        except ConsoleError:
            previous = None
        switch = audit_q.latest_event(s, "model.switch")
        last_move = next(iter(versions_q.alias_moves(s, alias=PRODUCTION, limit=1)), None)
        moved_view = None if last_move is None else _move_view(s, last_move)
        watch = None
        if switch is not None:
            events = audit_q.events_about(s, WATCH_ACTIONS, object_type="model_switch", object_id=str(switch.seq))
            finding = _finding(events[-1]) if events else None
            ends = switch.ts + timedelta(minutes=ctx.settings.watch_minutes)
            state = finding.verdict if finding else ("watching" if _watched(switch) and ctx.now() < ends
                                                     else "not_watched")
            watched = str(switch.details.get("to"))
            moved = None
            if (current is None or current.name != watched) and last_move is not None \
                    and last_move.created_at >= switch.ts:
                # The alias left the switched-to version (a rollback, a promotion, a serve) and the switch that
                # follows has not happened yet: that version is no longer being watched.
                moved = moved_view
                if state == "watching" and moved_view is not None:
                    state = "rolled_back" if moved_view.rollback else "moved"
            watch = WatchView(switch.details.get("from"), watched, switch.ts, ends, state, finding, moved)
        last = audit_q.latest_event(s, "model.watch_regression")
        recent = _finding(last) if last is not None and last.ts >= ctx.now() - RECENT else None
        rollback = moved_view if moved_view is not None and moved_view.rollback \
            and moved_view.at >= ctx.now() - RECENT else None
    return ProductionView(current.name if current else None, previous, watch, recent, rollback)


# --- history ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionChoice:
    name: str
    retired: bool
    aliases: tuple[str, ...]


@requires("promotion.view")
def version_choices(ctx: AppContext, actor: Principal) -> list[VersionChoice]:
    """Every registered version (newest first) with its aliases, for the request form and the history."""
    with ctx.db.session(readonly=True) as s:
        aliases = versions_q.aliases_by_version(s)
        return [VersionChoice(v.name, v.retired_at is not None, tuple(aliases.get(v.id, [])))
                for v in versions_q.list_model_versions(s)]


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    kind: str  # registered, alias, evaluation, request, approved, rejected, cancelled, switch, switch_failed,
    #            rollback, emergency, watch, retired
    summary: str
    actor: str | None


HISTORY_EVENTS = ("model.switch", "model.switch_failed", "model.rollback", *WATCH_ACTIONS,
                  *versions_q.EMERGENCY_ACTIONS.values())


def _event_entry(e: AuditEvent) -> TimelineEntry:
    d = e.details
    if e.action == "model.rollback":
        how = "automatic rollback" if d.get("auto") else "rollback"
        return TimelineEntry(e.ts, "rollback", f"{how} from {d.get('from')} to {d.get('to')}: {d.get('reason')}",
                             e.actor)
    if e.action in versions_q.EMERGENCY_ACTIONS.values():
        how = "break-glass shell command" if d.get("break_glass") else "emergency rollback"
        return TimelineEntry(e.ts, "emergency", f"{how}: {d.get('alias')} from {d.get('from')} to {d.get('to')} "
                             f"without a second approval: {d.get('reason')}", e.actor)
    if e.action in WATCH_ACTIONS:
        reasons = "; ".join(d.get("reasons") or []) or d.get("verdict", "")
        return TimelineEntry(e.ts, "watch", f"watch after the switch {d.get('from')} → {d.get('to')}: {reasons} "
                             f"({d.get('action')})", e.actor)
    if e.action == "model.switch_failed":
        return TimelineEntry(e.ts, "switch_failed", f"switch from {d.get('from')} to {d.get('to')} failed: "
                             f"{d.get('error')}", d.get("requested_by") or e.actor)
    return TimelineEntry(e.ts, "switch", f"served: switched from {d.get('from') or 'nothing'} to {d.get('to')} in "
                         f"{d.get('seconds')} s", d.get("requested_by") or e.actor)


@requires("promotion.view")
def version_history(ctx: AppContext, actor: Principal, name: str) -> list[TimelineEntry]:
    """One version's timeline, oldest first: registration, alias moves, evaluations, promotion requests and their
    decisions, switches, rollbacks and watch findings, retirement."""
    with ctx.db.session(readonly=True) as s:
        version = _version(s, name)
        names = {v.id: v.name for v in versions_q.list_model_versions(s)}
        users: dict[int, str] = {}

        def username(user_id: int | None) -> str | None:
            if user_id is None:
                return None
            if user_id not in users:
                user = users_q.get_user(s, user_id)
                users[user_id] = user.username if user else "?"
            return users[user_id]

        out = [TimelineEntry(version.created_at, "registered", f"registered from {version.source}",
                             username(version.created_by_id))]
        for m in versions_q.alias_moves(s, version_id=version.id, limit=1000):
            if m.to_version_id == version.id:
                came = names.get(m.from_version_id) if m.from_version_id else None
                text = f"{m.alias} moved here" + (f" from {came}" if came else "") + f": {m.reason}"
            else:
                went = names.get(m.to_version_id) if m.to_version_id else None
                text = f"{m.alias} moved to {went}: {m.reason}" if went else f"{m.alias} removed: {m.reason}"
            out.append(TimelineEntry(m.created_at, "alias", text, m.actor))
        for ev in evaluations_q.list_evaluations(s, version.id, limit=1000):
            if ev.status != "done":
                continue
            report = ev.report or {}
            out.append(TimelineEntry(ev.finished_at or version.created_at, "evaluation",
                                     f"evaluation #{ev.id} ({ev.suite}): {report.get('n', '?')} prompts, topic "
                                     f"accuracy {report.get('topic_accuracy')}, flag rate "
                                     f"{report.get('flag_rate_any')}", None))
        for r in promo_q.list_requests(s, version_id=version.id, limit=1000):
            failed = [g["name"] for g in r.gates or [] if not g.get("passed")]
            out.append(TimelineEntry(r.created_at, "request", f"request #{r.id} to move {r.alias} here: {r.reason}"
                                     + (f" (failed gates: {', '.join(failed)})" if failed else ""),
                                     username(r.requested_by_id)))
            if r.decided_at is not None:
                text = f"request #{r.id} {r.status}" + (f": {r.decision_note}" if r.decision_note else "")
                if r.override_reason:
                    text += f" (override: {r.override_reason})"
                out.append(TimelineEntry(r.decided_at, r.status, text, username(r.decided_by_id)))
        for e in audit_q.events_about(s, HISTORY_EVENTS, limit=5000):
            if version.name in (e.details.get("from"), e.details.get("to")):
                out.append(_event_entry(e))
        if version.retired_at is not None:
            out.append(TimelineEntry(version.retired_at, "retired", "retired", None))
    return sorted(out, key=lambda t: t.at)


@dataclass(frozen=True)
class ServedInterval:
    version: str
    start: datetime
    end: datetime
    current: bool


@requires("promotion.view")
def served_timeline(ctx: AppContext, actor: Principal, since: datetime) -> list[ServedInterval]:
    """Which version held production when, since ``since``: one interval per holder, oldest first."""
    now = ctx.now()
    with ctx.db.session(readonly=True) as s:
        names = {v.id: v.name for v in versions_q.list_model_versions(s)}
        moves = promo_q.alias_moves_since(s, PRODUCTION, since)
    out = []
    for i, move in enumerate(moves):
        if move.to_version_id is None:
            continue
        start = max(move.created_at, since)
        last = i + 1 == len(moves)
        end = max(now, start) if last else moves[i + 1].created_at
        out.append(ServedInterval(names.get(move.to_version_id, "?"), start, end, last))
    return out
