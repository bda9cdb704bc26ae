"""Which version serves: the desired state (the ``production`` alias), aliases, retirement, restarts.

Services only write the desired state; the :class:`Reconciler` next to each console process's engine host
makes the host serve it (see ../shared/DESIGN.md, "Desired state and a reconciler"). So the Models page, the
CLI (from another process) and, later, an approved promotion all steer every running console the same way.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from console.services.access import DutyRule, Principal, ensure_separation, register_duty_rule, requires
from console.services.context import AppContext
from console.services.errors import AccessDenied, InvalidInput, ModelUnavailable, NotFound
from console.services.periodic import PeriodicTask
from console.services.text import clean_text
from db import audit as audit_q
from db import model_versions as versions_q
from db import state as state_q
from db.model_versions import PRODUCTION
from engine.errors import EngineError
from engine.fingerprint import changed_files
from engine.types import LORA_RANKS, LoraAdapter, ModelSpec

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from db.tables import ModelVersion
    from engine.host import EngineHost

logger = logging.getLogger(__name__)

ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,59}$")
RESTART_KEY = "engine_restart"
MAX_REASON_CHARS = 1000


@dataclass(frozen=True)
class DesiredState:
    """What every console process should serve: a version name, the alias move that chose it, and a restart
    generation (bumped by a restart request)."""

    version: str
    move_id: int | None
    restart_generation: int


@dataclass(frozen=True)
class SwitchOutcome:
    """What one reconciliation did: switched (or restarted), or failed, with how long it took."""

    action: str  # "switch" or "restart"
    from_version: str | None
    to_version: str
    ok: bool
    seconds: float
    error: str | None = None


def _reason(reason: str | None, what: str) -> str:
    text = clean_text(reason or "").strip()
    if not text:
        raise InvalidInput(f"Give a reason for {what}; it is recorded in the audit log.")
    if len(text) > MAX_REASON_CHARS:
        raise InvalidInput(f"Keep the reason under {MAX_REASON_CHARS:,} characters.")
    return text


def _version(s: Session, name: str) -> ModelVersion:
    version = versions_q.get_model_version_by_name(s, (name or "").strip())
    if version is None:
        raise NotFound(f"No model version named {name!r} is registered.")
    return version


def check_files(version: ModelVersion) -> None:
    """Refuse a local version whose weight or tokenizer files changed since it was registered."""
    if not version.fingerprint:
        return  # a hub id (pinned by revision) or a version registered before fingerprints
    try:
        changed = changed_files(version.fingerprint_files or [], version.source)
    except OSError as exc:
        raise ModelUnavailable(f"The files of model version {version.name} cannot be read: {exc}") from exc
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise ModelUnavailable(
            f"The files of model version {version.name} changed since it was registered ({shown}); it will "
            "not be loaded. Register the new files under a new version name."
        )


def adapter_rank(path: str) -> int:
    """The rank ``r`` of the PEFT LoRA adapter in directory ``path``; InvalidInput if it is not one."""
    config_path = Path(path) / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path} is not a LoRA adapter: no readable adapter_config.json ({exc}).") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise InvalidInput(f"{path} is not a LoRA adapter: adapter_config.json has no peft_type LORA.")
    rank = config.get("r")
    if not isinstance(rank, int) or not 1 <= rank <= LORA_RANKS[-1]:
        raise InvalidInput(f"The LoRA adapter in {path} has rank {rank!r}; vLLM serves ranks 1 to {LORA_RANKS[-1]}.")
    return rank


def spec_of(version: ModelVersion, base: ModelVersion | None = None) -> ModelSpec:
    """The engine's view of a version record (a LoRA adapter version: its base model plus the adapter)."""
    model = base if base is not None else version
    engine_args = dict(model.engine_args or {})
    if model.quantization:
        engine_args["quantization"] = model.quantization
    lora = None
    if base is not None:
        lora = LoraAdapter(name=version.name, path=version.source, rank=adapter_rank(version.source))
    return ModelSpec(name=version.name, source=model.source, revision=model.revision, dtype=model.dtype or "auto",
                     max_model_len=model.max_model_len, engine_args=engine_args, lora=lora)


def loadable_spec(ctx: AppContext, name: str) -> ModelSpec:
    """The spec of a registered, not retired version whose files (and its base's) are unchanged; else a clear
    error."""
    with ctx.db.session(readonly=True) as s:
        version = _version(s, name)
        if version.retired_at is not None:
            raise InvalidInput(f"Model version {version.name} is retired and cannot be served.")
        check_files(version)
        base = None
        if version.base_version_id is not None:
            base = versions_q.get_model_version(s, version.base_version_id)
            if base is None or base.retired_at is not None:
                raise InvalidInput(f"The base version of LoRA adapter {version.name} is retired or gone.")
            check_files(base)
        return spec_of(version, base)


def desired_state(ctx: AppContext) -> DesiredState:
    """The production alias (else the configured default version) and the restart generation."""
    with ctx.db.session(readonly=True) as s:
        row = versions_q.get_alias(s, PRODUCTION)
        version = None if row is None else versions_q.get_model_version(s, row.version_id)
        moves = versions_q.alias_moves(s, alias=PRODUCTION, limit=1)
        restart = state_q.get_state(s, RESTART_KEY) or {}
    name = version.name if version is not None else ctx.settings.default_model
    return DesiredState(name, moves[0].id if moves else None, int(restart.get("generation", 0)))


def protected_move_refused(alias: str, holder: str, *, shell: bool) -> AccessDenied:
    """The refusal of a one-person move of a protected alias, saying which ways are open."""
    way = ("on the server, `--break-glass REASON` moves it anyway (recorded, and shown to every admin until "
           "another admin acknowledges it)" if shell else
           "a shell command with `--break-glass REASON` on the server is the last resort")
    rollback = (" In an emergency, production can be rolled back to the version that held it before "
                "(Promotions page, Emergency rollback, or `llm-console model rollback`)." if alias == PRODUCTION
                else "")
    return AccessDenied(f"{alias} is protected (it points at {holder}): it moves only through an approved "
                        f"promotion, which one person asks for and another approves (Promotions page).{rollback} "
                        f"{way[0].upper() + way[1:]}.")


def _record_refusal(ctx: AppContext, actor: str, actor_id: int | None, action: str, alias: str, version: str,
                    refusal: AccessDenied) -> AccessDenied:
    # In its own unit of work, after the refused one ended: the attempt stays on record.
    with ctx.db.session() as s:
        audit_q.append_event(s, actor=actor, actor_id=actor_id, action="access.denied", object_type="model_alias",
                             object_id=alias, details={"action": action, "reason": "four eyes: protected alias",
                                                       "alias": alias, "to": version})
    logger.warning("refused: %s tried to move the protected alias %s to %s alone", actor, alias, version)
    return refusal


def _break_glass(value: str | None) -> str | None:
    return None if value is None else _reason(value, "breaking the glass")


def _production_holder(ctx: AppContext, s: Session) -> ModelVersion | None:
    """The version production points at. With no alias row yet: the configured default version if registered
    (the consoles serve it: see :func:`desired_state`), else the version a console last switched to (a console
    started with another default), so serving another one is a move like any other."""
    row = versions_q.get_alias(s, PRODUCTION)
    if row is not None:
        return versions_q.get_model_version(s, row.version_id)
    default = versions_q.get_model_version_by_name(s, ctx.settings.default_model)
    if default is not None:
        return default
    switched = audit_q.latest_event(s, "model.switch")
    served = None if switched is None else (switched.details or {}).get("to")
    return None if not served else versions_q.get_model_version_by_name(s, str(served))


def _serve(ctx: AppContext, actor: str, actor_id: int | None, name: str, reason: str,
           break_glass: str | None = None) -> str:
    reason = _reason(reason, "serving a version")
    glass = _break_glass(break_glass)
    with ctx.db.session(readonly=True) as s:
        version = _version(s, name)
        if version.retired_at is not None:
            raise InvalidInput(f"Model version {version.name} is retired and cannot be served.")
        check_files(version)  # hashes the weights: never inside the write transaction (it holds the writer lock)
        name = version.name
    with ctx.db.session() as s:
        version = _version(s, name)
        if version.retired_at is not None:
            raise InvalidInput(f"Model version {version.name} is retired and cannot be served.")
        current = _production_holder(ctx, s)
        if current is not None and current.id == version.id and serving_status(ctx).model_version == version.name:
            raise InvalidInput(f"{version.name} already holds the production alias and is being served.")
        # Serving the production version again while it is not served (its switch failed) retries the switch;
        # it moves nothing. Only the first version of an installation (nothing holds production, no default
        # version is registered) may be given production by one person.
        moving = current is not None and current.id != version.id
        if moving and glass is None:
            assert current is not None
            refused = protected_move_refused(PRODUCTION, current.name, shell=actor == "cli")
        else:
            versions_q.move_alias(s, PRODUCTION, version, actor=actor, actor_id=actor_id, reason=reason)
            if moving and glass is not None:
                versions_q.record_emergency(s, kind="serve", alias=PRODUCTION, from_version=current,
                                            to_version=version, actor=actor, actor_id=actor_id, reason=glass,
                                            break_glass=True)
                logger.warning("break glass: %s moved production from %s to %s: %s", actor,
                               current.name if current else None, version.name, glass)
            return version.name
    raise _record_refusal(ctx, actor, actor_id, "models.switch", PRODUCTION, name, refused)


@requires("models.switch")
def serve(ctx: AppContext, actor: Principal, name: str, reason: str) -> str:
    """Give ``name`` the production alias while no version holds it (the first version of an installation), or
    retry the switch to the version that holds it; any other move of production needs an approved promotion."""
    return _serve(ctx, actor.username, actor.user_id, name, reason)


def serve_cli(ctx: AppContext, name: str, reason: str, break_glass: str | None = None) -> str:
    """:func:`serve` from the command line; with ``break_glass`` (its reason) it moves production without a
    promotion, recorded as ``model.break_glass`` and shown to every admin until another admin acknowledges it."""
    return _serve(ctx, "cli", None, name, reason, break_glass)


def _request_restart(ctx: AppContext, actor: str, actor_id: int | None, reason: str) -> int:
    reason = _reason(reason, "a restart")
    with ctx.db.session() as s:
        current = state_q.get_state(s, RESTART_KEY) or {}
        generation = int(current.get("generation", 0)) + 1
        state_q.set_state(s, RESTART_KEY, {"generation": generation, "by": actor, "reason": reason},
                          actor=actor, actor_id=actor_id)
    return generation


@requires("models.switch")
def request_restart(ctx: AppContext, actor: Principal, reason: str) -> int:
    """Ask every running console to restart its engine (e.g. after it died); returns the restart generation."""
    return _request_restart(ctx, actor.username, actor.user_id, reason)


def request_restart_cli(ctx: AppContext, reason: str) -> int:
    """:func:`request_restart` from the command line."""
    return _request_restart(ctx, "cli", None, reason)


def _alias_name(alias: str) -> str:
    alias = (alias or "").strip().lower()
    if not ALIAS.match(alias):
        raise InvalidInput("An alias has 1-60 lower-case letters, digits, '-' or '_' and starts with a letter.")
    return alias


def _set_alias(ctx: AppContext, actor: str, actor_id: int | None, name: str, alias: str, reason: str,
               break_glass: str | None = None) -> str:
    alias = _alias_name(alias)
    if alias == PRODUCTION:
        raise InvalidInput("The production alias moves through an approved promotion (Promotions page).")
    reason = _reason(reason, "moving an alias")
    glass = _break_glass(break_glass)
    with ctx.db.session() as s:
        version = _version(s, name)
        if version.retired_at is not None:
            raise InvalidInput(f"Model version {version.name} is retired; it cannot hold an alias.")
        holder = versions_q.version_for_alias(s, alias)
        # A protected alias no version holds yet may be set by one person, like production's first version.
        moving = holder is not None and holder.id != version.id and versions_q.is_protected(s, alias)
        if moving and glass is None:
            assert holder is not None
            refused = protected_move_refused(alias, holder.name, shell=actor == "cli")
        else:
            versions_q.move_alias(s, alias, version, actor=actor, actor_id=actor_id, reason=reason)
            if moving and glass is not None:
                versions_q.record_emergency(s, kind="alias", alias=alias, from_version=holder, to_version=version,
                                            actor=actor, actor_id=actor_id, reason=glass, break_glass=True)
            return alias
    raise _record_refusal(ctx, actor, actor_id, "models.register", alias, name, refused)


@requires("models.register")
def set_alias(ctx: AppContext, actor: Principal, name: str, alias: str, reason: str) -> str:
    """Point an alias such as ``staging`` or ``candidate`` at a version; returns the alias as stored. A protected
    alias a version holds moves only through an approved promotion."""
    return _set_alias(ctx, actor.username, actor.user_id, name, alias, reason)


def set_alias_cli(ctx: AppContext, name: str, alias: str, reason: str, break_glass: str | None = None) -> str:
    """:func:`set_alias` from the command line (``break_glass``: see :func:`serve_cli`)."""
    return _set_alias(ctx, "cli", None, name, alias, reason, break_glass)


def _protect(ctx: AppContext, actor: str, actor_id: int | None, alias: str, reason: str) -> bool:
    alias = _alias_name(alias)
    reason = _reason(reason, "protecting an alias")
    with ctx.db.session() as s:
        return versions_q.protect_alias(s, alias, actor=actor, actor_id=actor_id, reason=reason)


@requires("models.protect")
def protect_alias(ctx: AppContext, actor: Principal, alias: str, reason: str) -> bool:
    """Mark an alias protected: from now on, once a version holds it, it moves only through an approved
    promotion. Audited (``model.alias_protect``); False if it already was. There is no page action to undo it."""
    return _protect(ctx, actor.username, actor.user_id, alias, reason)


def protect_alias_cli(ctx: AppContext, alias: str, reason: str) -> bool:
    """:func:`protect_alias` from the command line."""
    return _protect(ctx, "cli", None, alias, reason)


def unprotect_alias_cli(ctx: AppContext, alias: str, break_glass: str) -> bool:
    """Remove an alias's protection: only from the shell, with ``--break-glass REASON``, recorded as
    ``model.break_glass`` and shown to every admin until another admin acknowledges it. ``production`` stays
    protected. False if the alias was not protected."""
    alias = _alias_name(alias)
    if alias == PRODUCTION:
        raise InvalidInput("The production alias is always protected.")
    glass = _reason(break_glass, "breaking the glass")
    with ctx.db.session() as s:
        if not versions_q.unprotect_alias(s, alias):
            return False
        holder = versions_q.version_for_alias(s, alias)
        versions_q.record_emergency(s, kind="unprotect", alias=alias, from_version=holder, to_version=holder,
                                    actor="cli", actor_id=None, reason=glass, break_glass=True)
    return True


def _retire(ctx: AppContext, actor: str, actor_id: int | None, name: str, reason: str) -> str:
    reason = _reason(reason, "retiring a version")
    with ctx.db.session() as s:
        version = _version(s, name)
        if version.retired_at is not None:
            raise InvalidInput(f"{version.name} is already retired.")
        aliases = versions_q.aliases_by_version(s).get(version.id, [])
        if PRODUCTION in aliases:
            raise InvalidInput(f"{version.name} is the production version; promote another one before retiring "
                               "it.")
        protected = [a for a in aliases if versions_q.is_protected(s, a)]
        if protected:
            # Retiring would free the alias, and a free protected alias may be set by one person.
            raise InvalidInput(f"{version.name} holds the protected alias {', '.join(protected)}; move it to "
                               "another version through an approved promotion before retiring this one.")
        for alias in aliases:
            versions_q.remove_alias(s, alias, actor=actor, actor_id=actor_id, reason=f"retired: {reason}")
        versions_q.retire_version(s, version, actor=actor, actor_id=actor_id, reason=reason)
        return version.name


@requires("models.register")
def retire(ctx: AppContext, actor: Principal, name: str, reason: str) -> str:
    """Retire a version: it loses its aliases and can no longer be served."""
    return _retire(ctx, actor.username, actor.user_id, name, reason)


def retire_cli(ctx: AppContext, name: str, reason: str) -> str:
    """:func:`retire` from the command line."""
    return _retire(ctx, "cli", None, name, reason)


# The host's states in the words the pages show: "dead" (the engine stopped working while serving) is a failure
# to the people waiting for an answer, like a version that failed to load.
_SERVING_STATES = {"loading": "loading", "ready": "ready", "failed": "failed", "dead": "failed", "stopped": "stopped"}


@dataclass(frozen=True)
class ServingView:
    """What this console process serves right now, for the sidebar and the pages.

    ``state`` is one of ``none`` (no engine host: nothing is served), ``loading``, ``ready``, ``switching``
    (chats may be sent: they wait and are answered once the switch ends), ``failed`` or ``stopped``;
    ``progress`` is 0..1 while loading; ``error`` says why it failed; ``switching_to`` names the version a switch
    under way moves to.
    """

    model_version: str | None
    state: str
    progress: float
    message: str
    error: str | None = None
    switching_to: str | None = None

    @property
    def ready(self) -> bool:
        """True when a chat may be sent now (during a switch it waits for the new version)."""
        return self.state in ("ready", "switching")


def serving_status(ctx: AppContext) -> ServingView:
    """The model version this process serves and how it is doing; never blocks (loading happens elsewhere)."""
    host = ctx.host
    if host is None:
        return ServingView(None, "none", 0.0, "No model is being served.")
    status = host.status()
    if status.switching_to is not None:
        return ServingView(status.model_version, "switching", min(max(status.progress, 0.0), 1.0), status.message,
                           None, status.switching_to)
    return ServingView(status.model_version, _SERVING_STATES.get(status.state, "failed"),
                       min(max(status.progress, 0.0), 1.0), status.message, status.error, status.switching_to)


@dataclass(frozen=True)
class SwitchProblem:
    """The newest failed switch or restart, if nothing succeeded after it (for the Models page)."""

    action: str
    version: str | None
    error: str
    at: datetime


def last_switch_problem(ctx: AppContext) -> SwitchProblem | None:
    """The latest ``model.switch_failed`` / ``model.restart_failed`` event not followed by a success."""
    with ctx.db.session(readonly=True) as s:
        newest = audit_q.events_about(s, ("model.switch", "model.restart", "model.switch_failed",
                                          "model.restart_failed"), limit=1)
    if not newest or not newest[0].action.endswith("_failed"):
        return None
    event = newest[0]
    details = event.details or {}
    return SwitchProblem(event.action.removeprefix("model.").removesuffix("_failed"), details.get("to"),
                         str(details.get("error") or "unknown error"), event.ts)


def ensure_production(ctx: AppContext) -> str | None:
    """At set-up: if no version holds ``production`` yet, give it to the configured default (if registered)."""
    with ctx.db.session() as s:
        if versions_q.get_alias(s, PRODUCTION) is not None:
            return None
        version = versions_q.get_model_version_by_name(s, ctx.settings.default_model)
        if version is None:
            return None
        versions_q.move_alias(s, PRODUCTION, version, actor="system", actor_id=None,
                              reason="initial version (the configured default)")
        return version.name


@dataclass(frozen=True)
class AliasMoveView:
    alias: str
    from_version: str | None
    to_version: str | None
    actor: str
    reason: str
    created_at: datetime


@requires("models.view")
def alias_history(ctx: AppContext, actor: Principal, limit: int = 200) -> list[AliasMoveView]:
    """Every alias move, newest first (who moved which alias from which version to which, and why)."""
    with ctx.db.session(readonly=True) as s:
        names = {v.id: v.name for v in versions_q.list_model_versions(s)}
        return [AliasMoveView(m.alias, names.get(m.from_version_id) if m.from_version_id else None,
                              names.get(m.to_version_id) if m.to_version_id else None, m.actor, m.reason,
                              m.created_at)
                for m in versions_q.alias_moves(s, limit=limit)]


@dataclass(frozen=True)
class ProtectedAliasView:
    alias: str
    version: str | None  # the version holding it, if any
    protected_by: str  # "always" for production
    reason: str


@requires("models.view")
def protected_aliases(ctx: AppContext, actor: Principal) -> list[ProtectedAliasView]:
    """Every protected alias (``production`` first) and the version holding it."""
    with ctx.db.session(readonly=True) as s:
        out = []
        for alias, row in versions_q.protected_aliases(s).items():
            holder = _production_holder(ctx, s) if alias == PRODUCTION else versions_q.version_for_alias(s, alias)
            out.append(ProtectedAliasView(alias, holder.name if holder else None,
                                          "always" if row is None else row.protected_by,
                                          "" if row is None else row.reason))
        return out


@dataclass(frozen=True)
class EmergencyView:
    """A single-person move of a protected alias no second admin has acknowledged yet."""

    id: int
    kind: str  # rollback, serve, alias or unprotect
    alias: str
    from_version: str | None
    to_version: str | None
    actor: str
    actor_id: int | None
    reason: str
    break_glass: bool
    at: datetime

    @property
    def summary(self) -> str:
        how = "break-glass shell command" if self.break_glass else "emergency rollback"
        if self.kind == "unprotect":
            what = f"removed the protection of {self.alias}"
        else:
            what = f"moved {self.alias} from {self.from_version or 'nothing'} to {self.to_version or 'nothing'}"
        return f"{how} #{self.id}: {self.actor} {what} without a second approval ({self.reason})"


def _emergency_owner(session: Session, move_id: str) -> int | None:
    move = versions_q.get_emergency(session, int(move_id))
    return None if move is None else move.actor_id


ACK_RULE = register_duty_rule(DutyRule("model.emergency_acknowledge",
                                       "nobody acknowledges their own emergency move", owner_of=_emergency_owner))


@requires("models.view")
def unacknowledged_emergencies(ctx: AppContext, actor: Principal) -> list[EmergencyView]:
    """Emergency rollbacks and break-glass moves no second admin has acknowledged yet, newest first."""
    with ctx.db.session(readonly=True) as s:
        names = {v.id: v.name for v in versions_q.list_model_versions(s)}
        return [EmergencyView(m.id, m.kind, m.alias, names.get(m.from_version_id or -1),
                              names.get(m.to_version_id or -1), m.actor, m.actor_id, m.reason, m.break_glass,
                              m.created_at)
                for m in versions_q.unacknowledged_emergencies(s)]


MAX_NOTE_CHARS = MAX_REASON_CHARS


@requires("models.acknowledge_emergency")
def acknowledge_emergency(ctx: AppContext, actor: Principal, move_id: int, note: str | None = None) -> int:
    """A second admin (never the one who made the move) acknowledges an emergency move; audited as
    ``model.emergency_acknowledged``. A break-glass command from the shell has no user, so any admin may."""
    with ctx.db.session(readonly=True) as s:
        ensure_separation(ctx, s, actor, ACK_RULE.name, str(int(move_id)))
    text = clean_text(note or "").strip() or None
    if text is not None and len(text) > MAX_NOTE_CHARS:
        raise InvalidInput(f"Keep the note under {MAX_NOTE_CHARS:,} characters.")
    with ctx.db.session() as s:
        move = versions_q.get_emergency(s, int(move_id), lock=True)
        if move is None:
            raise NotFound(f"There is no emergency move #{move_id}.")
        if move.acknowledged_at is not None:
            raise InvalidInput(f"Emergency move #{move_id} was already acknowledged by {move.acknowledged_by}.")
        versions_q.acknowledge_emergency(s, move, actor=actor.username, actor_id=actor.user_id, note=text)
        logger.info("emergency move #%s acknowledged by %s", move.id, actor.username)
        return move.id


class Reconciler(PeriodicTask):
    """Makes one console process's engine host serve the desired version; one per process, on its own thread.

    Every ``interval_s`` it reads the desired state; when the production alias names another version than the
    host serves, it switches (the host holds requests meanwhile); when the restart generation grew, it
    restarts the engine. Each switch, failure and restart is an audit event with who asked, why, from, to and
    how long it took. A version that failed to load is not retried until the alias moves again.
    """

    def __init__(self, ctx: AppContext, host: EngineHost, *, interval_s: float = 2.0) -> None:
        super().__init__(interval_s, name="model-reconciler")
        self.ctx, self.host = ctx, host
        self._failed: tuple[str, int | None] | None = None
        self._restart_seen: int | None = None
        self._lock = threading.Lock()  # one reconciliation at a time (the thread, or a test calling run_once)

    def start(self) -> Self:
        """Start the rounds; restart requests made before the process started are not replayed."""
        self._restart_seen = desired_state(self.ctx).restart_generation
        return super().start()

    def run_once(self) -> SwitchOutcome | None:
        """Compare desired and served once; switch or restart if needed. Returns what it did, if anything."""
        with self._lock:
            desired = desired_state(self.ctx)
            if self._restart_seen is None:
                self._restart_seen = desired.restart_generation
            status = self.host.status()
            if desired.restart_generation > self._restart_seen:
                self._restart_seen = desired.restart_generation
                if status.model_version == desired.version or self._failed == (desired.version, desired.move_id):
                    return self._restart()  # the engine serving now (the desired one, or the one kept after a failure)
                # Production moved too: the switch starts a fresh engine anyway, so do not load the old one twice.
                self._failed = None
                return self._switch(desired, status.model_version)
            if status.model_version == desired.version and status.state not in ("failed",):
                return None
            if self._failed == (desired.version, desired.move_id):
                return None
            if desired.move_id is None and not self._registered(desired.version):
                return None  # only the configured default, not registered (yet: e.g. the demo build is under way)
            return self._switch(desired, status.model_version)

    def _registered(self, name: str) -> bool:
        with self.ctx.db.session(readonly=True) as s:
            return versions_q.get_model_version_by_name(s, name) is not None

    def _audit(self, action: str, details: dict[str, Any]) -> None:
        with self.ctx.db.session() as s:
            audit_q.append_event(s, actor="system", actor_id=None, action=action, object_type="model_version",
                                 object_id=details.get("to"), details=details)

    def _requested(self) -> tuple[str | None, str | None]:
        with self.ctx.db.session(readonly=True) as s:
            moves = versions_q.alias_moves(s, alias=PRODUCTION, limit=1)
        return (moves[0].actor, moves[0].reason) if moves else (None, None)

    def _switch(self, desired: DesiredState, current: str | None) -> SwitchOutcome:
        by, reason = self._requested()
        details: dict[str, Any] = {"from": current, "to": desired.version, "requested_by": by, "reason": reason}
        started = time.monotonic()
        try:
            spec = loadable_spec(self.ctx, desired.version)
            self.host.switch(spec)
        except (EngineError, InvalidInput, NotFound, ModelUnavailable) as exc:
            seconds = time.monotonic() - started
            self._failed = (desired.version, desired.move_id)
            served = self.host.status().model_version
            logger.warning("switch to %s failed: %s (serving %s)", desired.version, exc, served)
            self._audit("model.switch_failed", {**details, "seconds": round(seconds, 3), "error": str(exc),
                                                "serving": served})
            return SwitchOutcome("switch", current, desired.version, False, seconds, str(exc))
        seconds = time.monotonic() - started
        self._failed = None
        logger.info("switched from %s to %s in %.1f s", current, desired.version, seconds)
        self._audit("model.switch", {**details, "seconds": round(seconds, 3)})
        return SwitchOutcome("switch", current, desired.version, True, seconds)

    def _restart(self) -> SwitchOutcome:
        current = self.host.status().model_version or ""
        with self.ctx.db.session(readonly=True) as s:
            asked = state_q.get_state(s, RESTART_KEY) or {}
        who = {"requested_by": asked.get("by"), "reason": asked.get("reason")}
        started = time.monotonic()
        try:
            self.host.restart(wait=True)
        except EngineError as exc:
            seconds = time.monotonic() - started
            self._audit("model.restart_failed", {"to": current, **who, "seconds": round(seconds, 3),
                                                 "error": str(exc)})
            return SwitchOutcome("restart", current, current, False, seconds, str(exc))
        seconds = time.monotonic() - started
        self._audit("model.restart", {"to": current, **who, "seconds": round(seconds, 3)})
        return SwitchOutcome("restart", current, current, True, seconds)
