"""Side-by-side chats: one prompt to the live version and to a candidate at once, both streamed and stored.

The candidate's engine is started on its backend (:func:`engine.backends.start_client`): an in-process version runs
in a short-lived child process (:class:`engine.child_client.ChildEngineClient`), because a second vLLM engine cannot
live in the console's process beside the live one; a managed-server version gets its own vLLM server; a server
version is simply connected (nothing starts). Each is an engine client like the live one, so the chat pipeline
answers with it unchanged. A :class:`CandidatePool` keeps at most one candidate engine per console process and
ends it after ``idle_s`` without use.

Both answers go through the whole chat pipeline (prompt scan and policy, output scan, one transaction with
findings and review items), each in its own conversation titled ``Comparison · ...`` with request ids
``cmp-live-...`` and ``cmp-candidate-...``, so they are stored, audited and reviewable like any chat; an audit
event ``model.compare`` ties the two exchanges together.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from console.services import chat as chat_svc
from console.services import registry, serving
from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import InvalidInput, ModelUnavailable
from console.services.periodic import PeriodicTask
from db import audit as audit_q
from engine import backends
from engine.client import EngineClient
from engine.errors import EmptyPromptError, EngineError, PromptTooLongError
from engine.types import ChatMessage, HostConfig, ModelSpec, ServerOptions

logger = logging.getLogger(__name__)

TITLE_PREFIX = chat_svc.COMPARISON_TITLE


class CandidatePool:
    """At most one candidate engine (a child process, a managed server, or a connected server) per console process;
    ended after ``idle_s`` unused. ``options`` reach and run vLLM servers (the installation's settings)."""

    def __init__(self, *, kv_cache_gib: float = 0.25, idle_s: float = 600.0, log_dir: Path | None = None,
                 trust_remote_code: bool = False, options: ServerOptions | None = None) -> None:
        self.kv_cache_gib, self.idle_s, self.log_dir = kv_cache_gib, idle_s, log_dir
        self.trust_remote_code = trust_remote_code  # the installation's setting, for every candidate
        self.options = options or ServerOptions()
        self._engine: EngineClient | None = None
        self._spec: ModelSpec | None = None
        self._used_at = 0.0
        self._lock = threading.Lock()
        self._reaper: _Reaper | None = None

    def engine_for(self, spec: ModelSpec) -> EngineClient:
        """The running candidate engine for ``spec``, started (and any other candidate ended) if needed."""
        with self._lock:
            current = self._engine
            if current is not None and (self._spec != spec or not _running(current)):
                current.shutdown()
                current = self._engine = None
            if current is None:
                log = None if self.log_dir is None else self.log_dir / "candidate-engine.log"
                # Refuses a spec with engine arguments outside the allowlist before any process starts.
                config = HostConfig(kv_cache_gib=self.kv_cache_gib, trust_remote_code=self.trust_remote_code)
                current = backends.start_client(spec, config, self.options, in_process="child", log_path=log)
                self._engine, self._spec = current, spec
            self._used_at = time.monotonic()
            return current

    def reap(self) -> bool:
        """End the candidate if it has been idle for ``idle_s``; True if it did."""
        with self._lock:
            engine = self._engine
            if engine is None or time.monotonic() - max(self._used_at, getattr(engine, "last_used", 0.0)) < self.idle_s:
                return False
            self._engine = self._spec = None
        engine.shutdown()
        return True

    def start_reaper(self, every_s: float = 60.0) -> CandidatePool:
        """Check for an idle candidate every ``every_s`` on a daemon thread (ended by :meth:`shutdown`)."""
        self._reaper = _Reaper(self, every_s).start()
        return self

    def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.stop()
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()


def _running(engine: EngineClient) -> bool:
    """True while a candidate engine may still answer (a child process runs; a server's client is not dead)."""
    alive = getattr(engine, "alive", None)
    if callable(alive):
        return bool(alive())
    return engine.status().state in ("ready", "loading")


class _Reaper(PeriodicTask):
    """Ends the pool's candidate once it has been idle long enough."""

    def __init__(self, pool: CandidatePool, every_s: float) -> None:
        super().__init__(every_s, name="candidate-reaper")
        self.pool = pool

    def run_once(self) -> bool:
        return self.pool.reap()


@dataclass
class Comparison:
    """Two chat turns on the same prompt; iterate each side's ``deltas()`` (on threads, to stream both)."""

    live: chat_svc.ChatTurn
    candidate: chat_svc.ChatTurn
    live_version: str
    candidate_version: str


@requires("models.evaluate")
def candidate_versions(ctx: AppContext, actor: Principal) -> list[str]:
    """Registered, not retired versions other than the one being served: what a comparison can use."""
    from db import model_versions as versions_q

    live = serving.serving_status(ctx).model_version
    with ctx.db.session() as s:
        return [v.name for v in versions_q.list_model_versions(s) if v.retired_at is None and v.name != live]


@requires("models.evaluate")
def start_comparison(ctx: AppContext, actor: Principal, candidate: str, prompt: str, *, temperature: float,
                     top_p: float, max_tokens: int) -> Comparison:
    """Send ``prompt`` to the live version and to ``candidate``; both answers stream, are scanned and stored."""
    pool: CandidatePool | None = ctx.candidates
    if pool is None:
        raise ModelUnavailable("Side-by-side chats are not available in this console process.")
    live = serving.serving_status(ctx)
    if not live.ready or not live.model_version:
        raise ModelUnavailable("No model is being served right now, so there is nothing to compare with.")
    spec = registry.loadable_spec(ctx, candidate)
    if spec.name == live.model_version:
        raise InvalidInput(f"{spec.name} is the live version; choose another version to compare with it.")
    sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
    try:
        engine = pool.engine_for(spec)
    except EngineError as exc:
        raise ModelUnavailable(str(exc)) from exc
    try:  # a prompt the candidate's context cannot hold is refused before either side stores anything
        engine.check_chat([ChatMessage("user", prompt)])
    except EmptyPromptError:
        pass  # the live side's turn refuses it in the chat page's words
    except PromptTooLongError as exc:
        raise InvalidInput(f"{spec.name}: {exc}") from exc
    live_turn = chat_svc.start_comparison_turn(ctx, actor, prompt, **sampling, side="live")
    candidate_ctx = dataclasses.replace(ctx, host_factory=lambda: engine)  # the candidate answers as the host
    candidate_turn = chat_svc.start_comparison_turn(candidate_ctx, actor, prompt, **sampling, side="candidate")
    with ctx.db.session() as s:
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="model.compare",
                             object_type="conversation", object_id=live_turn.conversation_id,
                             details={"live": live.model_version, "candidate": spec.name,
                                      "live_conversation_id": live_turn.conversation_id,
                                      "candidate_conversation_id": candidate_turn.conversation_id})
    return Comparison(live_turn, candidate_turn, live.model_version, spec.name)


@dataclass(frozen=True)
class SideView:
    """One side of a finished comparison, as the page shows it under the answer."""

    version: str
    exchange_id: int | None
    status: str
    text: str
    ttft_ms: float | None
    tokens_per_s: float | None
    output_tokens: int | None
    prompt_action: str | None
    output_action: str | None
    notice: str | None


def side_view(turn: chat_svc.ChatTurn, version: str) -> SideView:
    """What one side produced (after its deltas were consumed)."""
    out = turn.outcome
    if out is None:
        return SideView(version, None, "error", "", None, None, None, None, None, None)
    result = out.result
    return SideView(version, out.exchange_id, out.status, out.text,
                    None if result is None or result.ttft_s is None else round(result.ttft_s * 1000, 1),
                    None if result is None or result.tokens_per_s is None else round(result.tokens_per_s, 1),
                    None if result is None else result.output_tokens, out.prompt_action, out.output_action,
                    out.notice)


def drain(turn: chat_svc.ChatTurn, into: list[str], errors: list[str]) -> None:
    """Consume a turn's deltas into ``into`` (for a reader thread); a failure's message lands in ``errors``."""
    try:
        for delta in turn.deltas():
            into.append(delta)
    except Exception as exc:  # shown next to the answer; the exchange is stored as error either way
        errors.append(str(exc))


def run_both(comparison: Comparison) -> tuple[Any, Any]:
    """Stream both sides to the end on two threads (for callers that do not display as they go)."""
    out: dict[str, tuple[list[str], list[str]]] = {"live": ([], []), "candidate": ([], [])}
    threads = [threading.Thread(target=drain, args=(getattr(comparison, side), *out[side])) for side in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return comparison.live.outcome, comparison.candidate.outcome
