"""The watch window after a production switch: the new version's live traffic against the previous version's,
with a one-sided Fisher exact test on the rates, and an automatic rollback (or a proposed one) on a regression.

A :class:`Watcher` runs in every console process; each switch gets one finding (``model.watch_regression`` or
``model.watch_ended`` in the audit log), even with several consoles on one database. :func:`production_state`
is what the Promotions page shows of it.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from console.services import promotion
from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import ConsoleError, InvalidInput
from console.services.periodic import PeriodicTask
from console.settings import Settings
from db import audit as audit_q
from db import feedback as feedback_q
from db import model_versions as versions_q
from db import promotions as promo_q
from db.feedback import FeedbackCounts
from db.model_versions import PRODUCTION
from db.promotions import WindowStats
from db.tables import AuditEvent

logger = logging.getLogger(__name__)

WATCH_ACTOR = "watch"  # the actor of everything the watch window does by itself
WATCH_ACTIONS = ("model.watch_regression", "model.watch_ended")
EPSILON = 1e-9
RECENT = timedelta(days=1)  # how long the page keeps showing a regression the watch found


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

    metric: str  # "error_rate", "flag_rate" (answers the policy flagged or blocked), "ttft_p95_ms" or
    # "thumbs_down_rate" (reported only: :func:`feedback_test`)
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


def feedback_test(settings: Settings, before: FeedbackCounts, after: FeedbackCounts) -> WatchTest:
    """The thumbs-down share of rated answers, old version's window against the new one's: reported with the other
    figures (Fisher exact, one-sided), never a regression by itself. Ratings are few, and come in after the answer
    (an answer of the window may be rated after the window ends), so a handful of people could otherwise undo an
    approved promotion; a reviewer reads it beside the error and flag rates."""
    p = fisher_greater(after.down, after.rated, before.down, before.rated)
    return WatchTest("thumbs_down_rate", None if not before.rated else round(before.down / before.rated, 4),
                     None if not after.rated else round(after.down / after.rated, 4), before.rated, after.rated,
                     min(before.rated, after.rated) >= settings.watch_min_samples, False, p, before.down, after.down)


def describe_test(test: dict[str, Any]) -> str:
    """One comparison of a watch finding (its ``tests``) in words: the metric, both sides with their sample
    sizes, the statistic and the decision."""
    decision = "regression" if test.get("regression") else ("compared" if test.get("enough") else "too few to compare")
    p_value = "not computed" if test.get("p_value") is None else test.get("p_value")
    if test.get("metric") == "ttft_p95_ms":
        before, after = (_ms(test.get(side)) for side in ("before", "after"))
        return (f"p95 time to first token {before} → {after} "
                f"({test.get('n_before')} / {test.get('n_after')} answers): {decision}")
    if test.get("metric") == "thumbs_down_rate":
        return (f"thumbs down {test.get('k_before')}/{test.get('n_before')} → {test.get('k_after')}/"
                f"{test.get('n_after')} rated answers, one-sided Fisher p = {p_value}: reported only "
                "(feedback never rolls back by itself)")
    what = "error rate" if test.get("metric") == "error_rate" else "flagged answers"
    return (f"{what} {test.get('k_before')}/{test.get('n_before')} → {test.get('k_after')}/{test.get('n_after')}, "
            f"one-sided Fisher p = {p_value}: {decision}")


def _ms(value: Any) -> str:
    """A p95 in milliseconds, or "no answers" when the window had none to take it from."""
    return "no answers" if value is None else f"{value} ms"


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
    return not str(event.details.get("reason") or "").startswith(promotion.ROLLBACK_PREFIX)


def watched_switch(session: Session) -> AuditEvent | None:
    """The production switch the watch window is about: the newest ``model.switch``, or with several console
    replicas (each records its own switch of one move, seconds or minutes apart) the first of the newest run of
    switches between the same two versions, so one move gets one window, from when it first served."""
    recent = audit_q.events_about(session, ("model.switch",), limit=SWITCH_RUN_LIMIT)  # oldest first
    if not recent:
        return None
    first = recent[-1]
    for event in reversed(recent[:-1]):
        if (event.details.get("from"), event.details.get("to")) != (first.details.get("from"), first.details.get("to")):
            break
        first = event
    return first


SWITCH_RUN_LIMIT = 64  # more replicas than this switching for one move would each start a window of their own


class Watcher(PeriodicTask):
    """Watches the version a production switch brought in; one per console process, on its own thread.

    For ``watch_minutes`` after the latest ``model.switch`` it compares the new version's p95 time to first token,
    error rate and flag rate of answers since the switch with the previous version's over the same length of time
    before it: real users' exchanges only, outside load tests, and only the policy's verdicts on answers (not on
    prompts); each comparison needs ``watch_min_samples`` on both sides, and a rate a significant rise
    (:func:`watch_tests`). On a regression it rolls back (``watch_auto_rollback``)
    or only proposes a rollback; either way it writes ``model.watch_regression`` saying why. A window that ends
    without one gets ``model.watch_ended``. Each production move gets one finding, even though several console replicas
    each record their own switch for it (:func:`watched_switch`); one
    replica per interval looks (the ``model-watch`` lease).
    A rollback's own switch is not watched (it returns to the version just compared against).
    """

    def __init__(self, ctx: AppContext, *, interval_s: float | None = None) -> None:
        super().__init__(ctx.settings.watch_check_seconds if interval_s is None else interval_s, name="model-watch",
                         job="model-watch", db=ctx.db)
        self.ctx = ctx
        self._lock = threading.Lock()

    def run_once(self) -> WatchFinding | None:
        """Look at the latest production switch once; returns the finding recorded now, if any."""
        with self._lock:
            settings = self.ctx.settings
            with self.ctx.db.session(readonly=True) as s:
                switch = watched_switch(s)
                if switch is None or switch.seq is None or not _watched(switch):
                    return None  # (a switch not chained yet, on PostgreSQL: the next round, milliseconds later)
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
                fb_after = feedback_q.feedback_counts(s, since=start, until=min(now, start + window), version=new)
                fb_before = feedback_q.feedback_counts(s, since=start - window, until=start, version=old)
            enough = min(after.requests, before.requests) >= settings.watch_min_samples
            tests = watch_tests(settings, before, after)
            tests.append(feedback_test(settings, fb_before.get(old, FeedbackCounts()),
                                       fb_after.get(new, FeedbackCounts())))
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
                    promotion.rollback_plan(s, expect_current=new, target=old, check=True)
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
                    plan = promotion.rollback_plan(s, expect_current=new, target=old)
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
                promotion.apply_rollback(s, *plan, actor=WATCH_ACTOR, actor_id=None, auto=True,
                             reason=f"watch window after the switch to {new}: " + "; ".join(reasons))
            if verdict == "regression":
                logger.warning("watch: %s regressed against %s (%s); %s", new, old, "; ".join(reasons), action)
            return _finding(event)


@dataclass(frozen=True)
class ProductionMoveView:
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
    moved_away: ProductionMoveView | None = None


@dataclass(frozen=True)
class ProductionView:
    current: str | None
    previous: str | None  # where a rollback would return to
    watch: WatchView | None
    recent_regression: WatchFinding | None  # the last regression the watch found in the past day, if any
    last_rollback: ProductionMoveView | None = None  # the latest move of production, if it was a rollback in the past day
    no_rollback: str | None = None  # why there is no rollback to offer, when there is none


def _move_view(s: Session, move: Any) -> ProductionMoveView:
    def name(version_id: int | None) -> str | None:
        version = None if version_id is None else versions_q.get_model_version(s, version_id)
        return None if version is None else version.name

    rolled = move.reason.startswith(promotion.ROLLBACK_PREFIX)
    return ProductionMoveView(name(move.from_version_id), name(move.to_version_id), move.actor, move.created_at,
                         move.reason.removeprefix(promotion.ROLLBACK_PREFIX), rolled)


@requires("promotion.view")
def production_state(ctx: AppContext, actor: Principal) -> ProductionView:
    """Which version holds production, where a rollback would go, and what the watch window says."""
    with ctx.db.session(readonly=True) as s:
        current = versions_q.version_for_alias(s, PRODUCTION)
        no_rollback: str | None = None
        try:
            previous: str | None = promotion.rollback_plan(s)[1].name
        except ConsoleError as exc:
            previous, no_rollback = None, str(exc)
        switch = watched_switch(s)
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
    return ProductionView(current.name if current else None, previous, watch, recent, rollback, no_rollback)


