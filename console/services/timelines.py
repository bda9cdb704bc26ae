"""Model version timelines for the Promotions page's History tab: which version held production when, and one
version's story (registration, alias moves, evaluations, promotion requests and decisions, switches, rollbacks,
watch findings, retirement), read from the registry, the promotion requests and the audit log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from console.services import registry
from console.services.access import Principal, requires
from console.services.canary import CANARY_ACTIONS, CanaryPlan
from console.services.context import AppContext
from console.services.watch import WATCH_ACTIONS
from db import audit as audit_q
from db import evaluations as evaluations_q
from db import model_versions as versions_q
from db import promotions as promo_q
from db import users as users_q
from db.model_versions import PRODUCTION
from db.tables import AuditEvent


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
    kind: str  # registered, alias, evaluation, request, approved, rejected, cancelled, canary (approved as one),
    #            canary_promoted, rolled_back (a canary's end), switch, switch_failed, rollback, emergency, watch,
    #            retired
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
        version = registry.find_version(s, name)
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
            plan = CanaryPlan.from_dict(r.canary_plan) if r.canary_plan is not None else None
            what = "canary request" if plan is not None else "request"
            out.append(TimelineEntry(r.created_at, "request", f"{what} #{r.id} to move {r.alias} here: {r.reason}"
                                     + (f" (failed gates: {', '.join(failed)})" if failed else ""),
                                     username(r.requested_by_id)))
            if r.decided_at is not None:
                # A canary's approval started it (its end is the canary's own audit event, or the alias move).
                status = "canary" if plan is not None and r.canary_started_at is not None else r.status
                how = (f"approved as a canary ({plan.share * 100:g}% of new conversations for up to {plan.minutes} "
                       "minutes)") if status == "canary" and plan is not None else r.status
                text = f"request #{r.id} {how}" + (f": {r.decision_note}" if r.decision_note else "")
                if r.override_reason:
                    text += f" (override: {r.override_reason})"
                out.append(TimelineEntry(r.decided_at, status, text, username(r.decided_by_id)))
        for e in audit_q.events_about(s, HISTORY_EVENTS, limit=5000):
            if version.name in (e.details.get("from"), e.details.get("to")):
                out.append(_event_entry(e))
        for e in audit_q.events_about(s, CANARY_ACTIONS, object_type="promotion_request", limit=1000):
            if e.details.get("version") == version.name:
                d = e.details
                promoted = e.action == "promotion.canary_promoted"
                out.append(TimelineEntry(
                    e.ts, "canary_promoted" if promoted else "rolled_back",
                    f"canary #{e.object_id} {'promoted' if promoted else 'rolled back'}: {d.get('reason')} "
                    f"({d.get('candidate_n')} exchanges answered by {version.name}, {d.get('live_n')} by "
                    f"{d.get('live') or 'the live version'})", e.actor))
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
