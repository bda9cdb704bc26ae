"""Which version every console serves: the desired state, and the reconciler that makes an engine serve it.

The desired state is the ``production`` alias of the registry (:mod:`console.services.registry`) plus a restart
generation. Services only write it -- :func:`serve` (the first version of an installation, a retried switch or a
break-glass move from the shell), :func:`request_restart`, or an approved promotion -- and every console process
runs a :class:`Reconciler` that makes its engine match it (see docs/architecture.md, "Desired state and a
reconciler"). So the Models page, the CLI (from another process) and a promotion steer every running console the
same way, and several consoles on one database converge on the same version.

The reconciler drives anything that is a :class:`ServedEngine` (:mod:`engine.switching`): in the console a
:class:`engine.switching.SwitchingEngine`, which serves a version on any backend (in-process, a vLLM server, a managed
server) and switches blue-green where a server is involved; a bare :class:`engine.host.EngineHost` in tests.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self

from console.services import canary as canary_svc
from console.services import registry
from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import InvalidInput, ModelUnavailable, NotFound
from console.services.periodic import PeriodicTask
from db import audit as audit_q
from db import model_versions as versions_q
from db import state as state_q
from db.model_versions import PRODUCTION
from engine.errors import EngineError
from engine.switching import CanaryEngine, switch_message
from engine.switching import ServedEngine as _ServedEngine

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

RESTART_KEY = "engine_restart"
# A canary whose candidate failed to start (or died) is tried again after this long, not every round.
CANARY_RETRY_S = 120.0


# ---------------------------------------------------------------------------------------------- desired state


@dataclass(frozen=True)
class DesiredState:
    """What every console process should serve: a version name, the alias move that chose it, and a restart
    generation (bumped by a restart request)."""

    version: str
    move_id: int | None
    restart_generation: int


def desired_state(ctx: AppContext) -> DesiredState:
    """The production alias (else the configured default version) and the restart generation."""
    with ctx.db.session(readonly=True) as s:
        return _desired_state(ctx, s)


def _desired_state(ctx: AppContext, s: Session) -> DesiredState:
    row = versions_q.get_alias(s, PRODUCTION)
    version = None if row is None else versions_q.get_model_version(s, row.version_id)
    moves = versions_q.alias_moves(s, alias=PRODUCTION, limit=1)
    restart = state_q.get_state(s, RESTART_KEY) or {}
    name = version.name if version is not None else ctx.settings.default_model
    return DesiredState(name, moves[0].id if moves else None, int(restart.get("generation", 0)))


@requires("models.switch")
def serve(ctx: AppContext, actor: Principal, name: str, reason: str, break_glass: str | None = None) -> str:
    """Give ``name`` the production alias while no version holds it (the first version of an installation), or
    retry the switch to the version that holds it; any other move of production needs an approved promotion, or
    ``break_glass`` (its reason; the shell only) which moves it anyway, recorded as ``model.break_glass`` and
    shown to every admin until another admin acknowledges it."""
    reason = registry.required_reason(reason, "serving a version")
    glass = registry.break_glass_reason(ctx, actor, break_glass, "models.switch")
    with ctx.db.session(readonly=True) as s:
        version = registry.find_version(s, name)
        if version.retired_at is not None:
            raise InvalidInput(f"Model version {version.name} is retired and cannot be served.")
        registry.check_serveable(ctx, version)  # hashes the weights or asks the servers: never inside the write transaction (the writer lock)
        name = version.name
    with ctx.db.session() as s:
        version = registry.find_version(s, name)
        if version.retired_at is not None:
            raise InvalidInput(f"Model version {version.name} is retired and cannot be served.")
        current = registry.production_holder(ctx, s)
        if current is not None and current.id == version.id and serving_status(ctx).model_version == version.name:
            raise InvalidInput(f"{version.name} already holds the production alias and is being served.")
        # Serving the production version again while it is not served (its switch failed) retries the switch;
        # it moves nothing. Only the first version of an installation (nothing holds production, no default
        # version is registered) may be given production by one person.
        refused = registry.move_protected(s, actor, PRODUCTION, version, current, protected=True, reason=reason,
                                          glass=glass, kind="serve")
        if refused is None:
            return version.name
    raise registry.refuse_move(ctx, actor, "models.switch", PRODUCTION, name, refused)


@requires("models.switch")
def request_restart(ctx: AppContext, actor: Principal, reason: str) -> int:
    """Ask every running console to restart its engine (e.g. after it died); returns the restart generation."""
    reason = registry.required_reason(reason, "a restart")
    with ctx.db.session() as s:
        current = state_q.get_state(s, RESTART_KEY) or {}
        generation = int(current.get("generation", 0)) + 1
        state_q.set_state(s, RESTART_KEY, {"generation": generation, "by": actor.username, "reason": reason},
                          actor=actor.username, actor_id=actor.user_id)
    return generation


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


# ------------------------------------------------------------------------------ what this console serves now


# The host's states in the words the pages show: "dead" (the engine stopped working while serving) is a failure
# to the people waiting for an answer, like a version that failed to load.
_SERVING_STATES = {"loading": "loading", "ready": "ready", "failed": "failed", "dead": "failed", "stopped": "stopped"}


@dataclass(frozen=True)
class ServingView:
    """What this console process serves right now, for the sidebar and the pages.

    ``state`` is one of ``none`` (no engine host: nothing is served), ``loading``, ``ready``, ``switching``
    (chats may be sent: ``message`` says whether they wait for the new version -- a stop-then-load switch -- or are
    answered by the old one meanwhile -- blue-green), ``failed`` or ``stopped``;
    ``progress`` is 0..1 while loading; ``error`` says why it failed; ``switching_to`` names the version a switch
    under way moves to.
    """

    model_version: str | None
    state: str
    progress: float
    message: str
    error: str | None = None
    switching_to: str | None = None
    answering: bool = False  # during a switch: ``model_version`` still answers chats (blue-green)

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
        # The served engine says whether chats wait (engine.switching.switch_message); a bare in-process host
        # reports its loading step only, and its switches always hold chats.
        message = status.message if status.message.startswith("Switching to ") else switch_message(
            "in-process", status.switching_to, detail=status.message)
        return ServingView(status.model_version, "switching", min(max(status.progress, 0.0), 1.0), message,
                           None, status.switching_to,
                           answering=status.state == "ready" and status.model_version != status.switching_to)
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


# ---------------------------------------------------------------------------------------------- the reconciler


@dataclass(frozen=True)
class SwitchOutcome:
    """What one reconciliation did: switched (or restarted), or failed, with how long it took."""

    action: str  # "switch" or "restart"
    from_version: str | None
    to_version: str
    ok: bool
    seconds: float
    error: str | None = None


@dataclass(frozen=True)
class CanaryOutcome:
    """What one reconciliation did to the engine's canary slot: started the candidate beside the live version,
    stopped it (the canary ended), or failed to start it."""

    action: str  # "start" or "stop"
    version: str
    request_id: int | None
    ok: bool
    seconds: float
    error: str | None = None


# What the Reconciler needs of the engine it keeps on the desired version (status, switch, restart; the rest of the
# protocol is what the pages and the chat read): engine.switching.ServedEngine. SwitchingEngine.switch returns once
# the new version serves, or raises an EngineError and keeps serving what it served (blue-green: the old engine
# never stopped; stop-then-load: it was started again).
ServedEngine = _ServedEngine


class Reconciler(PeriodicTask):
    """Makes one console process's served engine serve the desired version; one per process, on its own thread.

    Every ``interval_s`` it reads the desired state; when the production alias names another version than the
    engine serves, it switches (blue-green where a vLLM server is involved; else requests wait meanwhile); when the restart generation grew, it
    restarts the engine. Each switch, failure and restart is an audit event with who asked, why, from, to and
    how long it took. A version that failed to load is not retried until the alias moves again.

    It also keeps the engine's canary slot on the running canary (:func:`console.services.canary.active_canary`):
    the candidate is brought up beside the live version while a canary runs (``model.canary_started``), and stopped
    once it ended (``model.canary_stopped``: rolled back, stopped, or promoted -- then the production alias names
    the candidate, and the switch to it adopts the canary's engine before the slot is looked at). A candidate that
    cannot start (or died) is audited once as ``model.canary_failed`` and tried again after ``canary_retry_s``;
    meanwhile every chat goes to the live version.
    """

    def __init__(self, ctx: AppContext, host: ServedEngine, *, interval_s: float = 2.0,
                 canary_retry_s: float = CANARY_RETRY_S) -> None:
        super().__init__(interval_s, name="model-reconciler")
        self.ctx, self.host = ctx, host
        self._failed: tuple[str, int | None] | None = None
        self._restart_seen: int | None = None
        self._lock = threading.Lock()  # one reconciliation at a time (the thread, or a test calling run_once)
        self.canary_retry_s = canary_retry_s
        self._canary_failed: tuple[int, str] | None = None  # (request id, version) whose start failed
        self._canary_retry_at = 0.0  # time.monotonic() after which that start is tried again
        self._canary_request: int | None = None  # the canary whose candidate this engine's slot serves
        self.canary_outcome: CanaryOutcome | None = None  # what the last round did to the canary slot, if anything

    def start(self) -> Self:
        """Start the rounds; restart requests made before the process started are not replayed."""
        self._restart_seen = desired_state(self.ctx).restart_generation
        return super().start()

    def run_once(self) -> SwitchOutcome | None:
        """Compare desired and served once; switch or restart if needed, then bring the canary slot to the running
        canary (what that did is :attr:`canary_outcome`). Returns what the switch or restart did, if anything."""
        with self._lock:
            with self.ctx.db.session(readonly=True) as s:  # one short read per round, on every replica
                desired = _desired_state(self.ctx, s)
                canary = canary_svc.active_canary(s)
            outcome = self._converge(desired)
            # After the switch: a promoted canary's engine was adopted by it, so the slot is empty by now.
            self.canary_outcome = self._converge_canary(canary)
            return outcome

    def _converge(self, desired: DesiredState) -> SwitchOutcome | None:
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

    def _converge_canary(self, canary: canary_svc.ActiveCanary | None) -> CanaryOutcome | None:
        host = self.host
        if not isinstance(host, CanaryEngine):
            if canary is not None and self._canary_failed != (canary.request_id, canary.candidate):
                self._canary_failed = (canary.request_id, canary.candidate)
                self._audit_canary("model.canary_failed", canary.candidate, canary.request_id, {
                    "error": "this console's engine cannot serve a second version beside the live one"})
            return None
        up = host.canary
        serving_now = self.host.status().model_version
        want = canary.candidate if canary is not None and canary.candidate != serving_now else None
        if up is not None and up.name == want and canary is not None:
            status = host.canary_status()
            if status is not None and status.state in ("failed", "dead", "stopped"):  # it died while serving
                host.stop_canary(drain=False)
                error = f"the candidate's engine stopped working ({status.error or status.message})"
                logger.warning("canary %s: %s; every chat goes to %s", want, error, serving_now)
                self._canary_failure(canary, want, error, 0.0, serving_now)
                return CanaryOutcome("start", want, canary.request_id, False, 0.0, error)
        if up is not None and up.name != want:
            started = time.monotonic()
            host.stop_canary(drain=True)
            seconds = time.monotonic() - started
            request_id, self._canary_request = self._canary_request, None
            self._audit_canary("model.canary_stopped", up.name, request_id,
                               {"seconds": round(seconds, 3), "serving": serving_now})
            return CanaryOutcome("stop", up.name, request_id, True, seconds)
        if want is None or up is not None or canary is None:
            return None
        key = (canary.request_id, want)
        if self._canary_failed == key and time.monotonic() < self._canary_retry_at:
            return None  # failed a moment ago: tried again after the back-off, not every round
        started = time.monotonic()
        try:
            spec = registry.loadable_spec(self.ctx, want)
            host.start_canary(spec)
        except (EngineError, InvalidInput, NotFound, ModelUnavailable) as exc:
            seconds = time.monotonic() - started
            logger.warning("canary %s could not start: %s (every chat goes to %s)", want, exc, serving_now)
            self._canary_failure(canary, want, str(exc), seconds, serving_now)
            return CanaryOutcome("start", want, canary.request_id, False, seconds, str(exc))
        seconds = time.monotonic() - started
        self._canary_failed, self._canary_request = None, canary.request_id
        logger.info("canary %s up beside %s in %.1f s", want, serving_now, seconds)
        self._audit_canary("model.canary_started", want, canary.request_id,
                           {"seconds": round(seconds, 3), "live": serving_now, "share": canary.plan.share})
        return CanaryOutcome("start", want, canary.request_id, True, seconds)

    def _canary_failure(self, canary: canary_svc.ActiveCanary, version: str, error: str, seconds: float,
                        serving_now: str | None) -> None:
        """Audited once per canary however often it is retried; the next try after the back-off."""
        key = (canary.request_id, version)
        if self._canary_failed != key:
            self._audit_canary("model.canary_failed", version, canary.request_id,
                               {"seconds": round(seconds, 3), "error": error, "serving": serving_now,
                                "retry_s": self.canary_retry_s})
        self._canary_failed, self._canary_retry_at = key, time.monotonic() + self.canary_retry_s

    def _audit_canary(self, action: str, version: str, request_id: int | None, details: dict[str, Any]) -> None:
        self._audit(action, {"to": version, "request_id": request_id, **details})

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
            spec = registry.loadable_spec(self.ctx, desired.version)
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
