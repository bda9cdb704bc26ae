"""One chat turn: prompt scan and policy, streaming from the engine host, output scan, one transaction to store it."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from console.services import moderation
from console.services.access import Principal, requires
from console.services.context import Services
from console.services.errors import InvalidInput, NotFound
from db import chat as chat_q
from engine.errors import EngineError, EngineNotReadyError, PromptTooLongError
from engine.types import ChatMessage, GenerationResult, SamplingSettings

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 20_000
MAX_SYSTEM_PROMPT_CHARS = 4_000


@dataclass(frozen=True)
class ExchangeView:
    """A stored exchange as the chat page shows it (texts are the stored, redacted-by-default versions)."""

    id: int
    prompt: str
    response: str
    status: str
    error: str | None
    model_version: str | None
    ttft_ms: float | None
    tokens_per_s: float | None
    output_tokens: int | None
    prompt_action: str | None = None
    output_action: str | None = None
    findings: tuple[moderation.FindingView, ...] = ()
    review_status: str | None = None


@dataclass(frozen=True)
class ConversationView:
    id: int
    title: str
    system_prompt: str | None
    updated_at: Any


@dataclass
class TurnOutcome:
    exchange_id: int
    status: str
    text: str
    model_version: str | None
    result: GenerationResult | None
    prompt_action: str
    output_action: str
    notice: str | None = None


@dataclass
class ChatTurn:
    """An exchange in progress. Iterate :meth:`deltas` (e.g. with ``st.write_stream``); then read ``outcome``.

    Abandoning the iterator (the user pressed Stop, the browser went away) cancels the vLLM request and
    stores the partial answer as ``aborted``.
    """

    svc: Services
    actor: Principal
    conversation_id: int
    prompt_gate: moderation.GateResult
    notices: list[str] = field(default_factory=list)
    stream: Any = None
    request_id: str = ""
    sampling: SamplingSettings | None = None
    outcome: TurnOutcome | None = None
    _hold: bool = False

    @property
    def blocked(self) -> bool:
        return self.stream is None

    def deltas(self) -> Iterator[str]:
        if self.stream is None:
            return
        parts: list[str] = []
        finished = False
        error: EngineError | None = None
        try:
            for delta in self.stream:
                parts.append(delta)
                if not self._hold:
                    yield delta
            finished = True
        except EngineError as exc:
            error = exc
            raise
        finally:
            if not finished and error is None:
                self.stream.cancel()
            text = "".join(parts)
            status = "ok" if finished else ("error" if error else "aborted")
            shown = self._finish(text, status, error)
        if self._hold and shown:
            yield shown

    def _finish(self, text: str, status: str, error: EngineError | None) -> str:
        result: GenerationResult | None = getattr(self.stream, "result", None)
        gate = moderation.check_output(self.svc, text) if status != "error" else moderation.GateResult.empty(text)
        shown = gate.text_for_user
        if gate.action == "block":
            self.notices.append(moderation.BLOCKED_OUTPUT_NOTICE)
        self.outcome = _store(
            self.svc, self.actor, self.conversation_id, self.request_id, self.prompt_gate, gate,
            status=status, error=str(error) if error else None, sampling=self.sampling, result=result,
        )
        self.outcome.notice = " ".join(self.notices) or None
        return shown


def _store(svc: Services, actor: Principal, conversation_id: int, request_id: str,
           prompt_gate: moderation.GateResult, output_gate: moderation.GateResult | None, *, status: str,
           error: str | None, sampling: SamplingSettings | None, result: GenerationResult | None) -> TurnOutcome:
    host = svc.host
    served = host.serving.name if host is not None and host.serving is not None else None
    model_version = result.model_version if result is not None else served
    response_text = output_gate.text_for_storage if output_gate is not None else ""
    with svc.db.session() as s:
        exchange = chat_q.record_exchange(
            s,
            conversation_id=conversation_id,
            user_id=actor.user_id,
            request_id=request_id,
            model_version=model_version or "none",
            prompt=prompt_gate.text_for_storage,
            response=response_text,
            sampling=_sampling_dict(sampling),
            status=status,
            error=error,
            prompt_tokens=result.prompt_tokens if result else None,
            output_tokens=result.output_tokens if result else None,
            queue_ms=_ms(result.queue_s) if result else None,
            ttft_ms=_ms(result.ttft_s) if result else None,
            itl_ms=_ms(result.mean_itl_s) if result else None,
            e2e_ms=_ms(result.e2e_s) if result else None,
            tokens_per_s=result.tokens_per_s if result else None,
            prompt_action=prompt_gate.action,
            output_action=output_gate.action if output_gate is not None else None,
            policy_version=prompt_gate.policy_version,
            actor=actor.username,
        )
        moderation.store_findings(svc, s, exchange, actor, prompt_gate, output_gate)
        outcome = TurnOutcome(
            exchange_id=exchange.id,
            status=status,
            text=output_gate.text_for_user if output_gate is not None else "",
            model_version=model_version,
            result=result,
            prompt_action=prompt_gate.action,
            output_action=output_gate.action if output_gate is not None else "allow",
        )
    log.info("exchange %s stored: request=%s status=%s model=%s", outcome.exchange_id, request_id, status,
             model_version)
    return outcome


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _sampling_dict(sampling: SamplingSettings | None) -> dict[str, Any]:
    if sampling is None:
        return {}
    return {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens,
            "seed": sampling.seed}


def _owned_conversation(s, actor: Principal, conversation_id: int):  # noqa: ANN001, ANN202
    conv = chat_q.get_conversation(s, conversation_id)
    if conv is None or conv.user_id != actor.user_id:
        raise NotFound("That conversation does not exist or is not yours.")
    return conv


def _title(prompt: str) -> str:
    first = " ".join(prompt.split())
    return first[:60] + ("…" if len(first) > 60 else "")


def _stream_with_history(host, history: list[ChatMessage], prompt: str, sampling: SamplingSettings,  # noqa: ANN001
                         request_id: str):
    """Start the request; when the conversation outgrows the context, drop its oldest turns (keep the system)."""
    system = [m for m in history[:1] if m.role == "system"]
    turns = history[len(system):]
    while True:
        try:
            return host.stream_chat([*system, *turns, ChatMessage("user", prompt)], sampling, request_id=request_id)
        except PromptTooLongError:
            if not turns:
                raise
            turns = turns[2:]  # one user/assistant pair


@requires("chat.use")
def start_turn(svc: Services, actor: Principal, conversation_id: int | None, prompt: str,
               sampling: SamplingSettings, system_prompt: str | None = None) -> ChatTurn:
    """Scan the prompt, apply the policy and start streaming (unless blocked). See :class:`ChatTurn`."""
    if prompt is None or not prompt.strip():
        raise InvalidInput("Type a message first.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidInput(f"The message has {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}.")
    system_prompt = (system_prompt or "").strip() or None
    if system_prompt and len(system_prompt) > MAX_SYSTEM_PROMPT_CHARS:
        raise InvalidInput(f"The system prompt is limited to {MAX_SYSTEM_PROMPT_CHARS:,} characters.")
    host = svc.host
    if host is None:
        raise EngineNotReadyError("No model is being served. An admin can start one on the Models page.")

    prompt_gate = moderation.check_prompt(svc, prompt)
    with svc.db.session() as s:
        if conversation_id is None:
            conv = chat_q.create_conversation(s, user_id=actor.user_id, title=_title(prompt_gate.text_for_storage),
                                              system_prompt=system_prompt, actor=actor.username)
        else:
            conv = _owned_conversation(s, actor, conversation_id)
        conversation_id = conv.id
        # A conversation keeps the system prompt it was started with.
        history = [ChatMessage("system", conv.system_prompt)] if conv.system_prompt else []
        for ex in chat_q.list_exchanges(s, conversation_id):
            if ex.status in ("ok", "aborted") and ex.response:
                history.append(ChatMessage("user", ex.prompt))
                history.append(ChatMessage("assistant", ex.response))

    request_id = f"chat-{uuid.uuid4().hex[:12]}"
    turn = ChatTurn(svc, actor, conversation_id, prompt_gate, request_id=request_id, sampling=sampling,
                    _hold=moderation.hold_output(svc))
    if prompt_gate.notice:
        turn.notices.append(prompt_gate.notice)
    if prompt_gate.action == "block":
        turn.outcome = _store(svc, actor, conversation_id, request_id, prompt_gate, None, status="blocked",
                              error=None, sampling=sampling, result=None)
        turn.outcome.notice = " ".join(turn.notices)
        return turn
    try:
        turn.stream = _stream_with_history(host, history, prompt_gate.text_for_model, sampling, request_id)
    except EngineError as exc:
        _store(svc, actor, conversation_id, request_id, prompt_gate, None, status="error", error=str(exc),
               sampling=sampling, result=None)
        raise
    return turn


@requires("chat.use")
def list_conversations(svc: Services, actor: Principal, limit: int = 50) -> list[ConversationView]:
    with svc.db.session() as s:
        return [ConversationView(c.id, c.title, c.system_prompt, c.updated_at)
                for c in chat_q.list_conversations(s, actor.user_id)[:limit]]


@requires("chat.use")
def conversation_history(svc: Services, actor: Principal, conversation_id: int) -> list[ExchangeView]:
    with svc.db.session() as s:
        _owned_conversation(s, actor, conversation_id)
        out = []
        for ex in chat_q.list_exchanges(s, conversation_id):
            out.append(ExchangeView(
                id=ex.id, prompt=ex.prompt, response=ex.response or "", status=ex.status, error=ex.error,
                model_version=ex.model_version, ttft_ms=ex.ttft_ms, tokens_per_s=ex.tokens_per_s,
                output_tokens=ex.output_tokens, prompt_action=ex.prompt_action,
                output_action=ex.output_action,
                findings=moderation.findings_of(s, ex.id),
                review_status=ex.review_status,
            ))
        return out


@requires("chat.send_to_review")
def send_to_review(svc: Services, actor: Principal, exchange_id: int, note: str) -> int:
    """Put one of the user's own exchanges in the review queue with a note."""
    note = (note or "").strip()
    if not note:
        raise InvalidInput("Add a note that says what a reviewer should look at.")
    if len(note) > 2000:
        raise InvalidInput("Keep the note under 2,000 characters.")
    with svc.db.session() as s:
        ex = chat_q.get_exchange(s, exchange_id)
        if ex is None or ex.user_id != actor.user_id:
            raise NotFound("That message does not exist or is not yours.")
        return moderation.send_to_review(svc, s, ex, actor, note)
