"""One chat turn: prompt scan and policy, streaming from the engine host, output scan, one transaction to store it."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from console.services import moderation
from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import ConsoleError, InvalidInput, ModelUnavailable, NotFound
from db import chat as chat_q
from db.chat import ExchangeTimings, TurnRecord
from engine.errors import EmptyPromptError, EngineError, InvalidSamplingError, PromptTooLongError
from engine.types import ChatMessage, GenerationResult, SamplingSettings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from db.tables import Conversation
    from engine.host import EngineHost
    from engine.stream import GenerationStream

logger = logging.getLogger(__name__)

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

    ctx: AppContext
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
        """The answer as it streams (or whole, once scanned, when the policy holds output back).

        An engine failure mid-stream stores the exchange as ``error`` and raises :class:`ModelUnavailable`.
        """
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
            raise _console_error(exc) from exc
        finally:
            if not finished and error is None:
                self.stream.cancel()
            text = "".join(parts)
            status = "ok" if finished else ("error" if error else "aborted")
            cut = getattr(self.stream, "result", None) if finished else None
            if cut is not None and cut.aborted:  # the engine cut it: a switch, restart or shutdown
                status = "aborted"
                self.notices.append(CUT_NOTICE.get(cut.finish_reason or "", CUT_NOTICE["shutdown"]))
            shown = self._finish(text, status, error)
        if self._hold and shown:
            yield shown

    def _finish(self, text: str, status: str, error: EngineError | None) -> str:
        result: GenerationResult | None = getattr(self.stream, "result", None)
        gate = moderation.check_output(self.ctx, text) if status != "error" else moderation.GateResult.empty(text)
        shown = gate.text_for_user
        if gate.action == "block":
            self.notices.append(moderation.BLOCKED_OUTPUT_NOTICE)
        self.outcome = _store(
            self.ctx, self.actor, self.conversation_id, self.request_id, self.prompt_gate, gate,
            status=status, error=str(error) if error else None, sampling=self.sampling, result=result,
        )
        self.outcome.notice = " ".join(self.notices) or None
        return shown


CUT_NOTICE = {
    "switch": "The answer was cut off: the served model version was switched. Ask again to get a full answer.",
    "restart": "The answer was cut off: the engine was restarted. Ask again to get a full answer.",
    "shutdown": "The answer was cut off: the engine stopped. Ask again to get a full answer.",
}


def _console_error(exc: EngineError) -> ConsoleError:
    """The console's own error for an engine error, with the engine's message (written for users)."""
    if isinstance(exc, PromptTooLongError | EmptyPromptError | InvalidSamplingError):
        return InvalidInput(str(exc))
    return ModelUnavailable(str(exc))


def _store(ctx: AppContext, actor: Principal, conversation_id: int, request_id: str,
           prompt_gate: moderation.GateResult, output_gate: moderation.GateResult | None, *, status: str,
           error: str | None, sampling: SamplingSettings | None, result: GenerationResult | None) -> TurnOutcome:
    model_version = result.model_version if result is not None else _served(ctx)
    # Everything is worked out first (findings, raw texts, severity, deadline); the store only writes.
    record = _turn_record(ctx, actor, conversation_id, request_id, prompt_gate, output_gate, status=status,
                          error=error, sampling=sampling, result=result, model_version=model_version)
    with ctx.db.session() as s:
        exchange_id = chat_q.store_turn(s, record).id
    logger.info("exchange %s stored: request=%s status=%s model=%s", exchange_id, request_id, status,
                model_version)
    return TurnOutcome(
        exchange_id=exchange_id,
        status=status,
        text=output_gate.text_for_user if output_gate is not None else "",
        model_version=model_version,
        result=result,
        prompt_action=prompt_gate.action,
        output_action=output_gate.action if output_gate is not None else "allow",
    )


def _served(ctx: AppContext) -> str | None:
    host = ctx.host
    spec = host.serving if host is not None else None
    return spec.name if spec is not None else None


def _turn_record(ctx: AppContext, actor: Principal, conversation_id: int, request_id: str,
                 prompt_gate: moderation.GateResult, output_gate: moderation.GateResult | None, *, status: str,
                 error: str | None, sampling: SamplingSettings | None, result: GenerationResult | None,
                 model_version: str | None) -> TurnRecord:
    gates = [g for g in (prompt_gate, output_gate) if g is not None]
    return TurnRecord(
        conversation_id=conversation_id,
        user_id=actor.user_id,
        actor=actor.username,
        request_id=request_id,
        model_version=model_version or "none",
        prompt=prompt_gate.text_for_storage,
        response=output_gate.text_for_storage if output_gate is not None else "",
        sampling=_sampling_dict(sampling),
        status=status,
        error=error,
        timings=_timings(result),
        prompt_action=prompt_gate.action,
        output_action=output_gate.action if output_gate is not None else None,
        policy_version=prompt_gate.policy_version,
        findings=moderation.finding_records(gates),
        raw_texts=moderation.raw_texts_to_keep(gates),
        review=moderation.review_item_for(ctx, gates),
    )


def _timings(result: GenerationResult | None) -> ExchangeTimings:
    if result is None:
        return ExchangeTimings()
    return ExchangeTimings(
        prompt_tokens=result.prompt_tokens,
        output_tokens=result.output_tokens,
        queue_ms=_ms(result.queue_s),
        ttft_ms=_ms(result.ttft_s),
        itl_ms=_ms(result.mean_itl_s),
        e2e_ms=_ms(result.e2e_s),
        tokens_per_s=result.tokens_per_s,
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _sampling_dict(sampling: SamplingSettings | None) -> dict[str, Any]:
    if sampling is None:
        return {}
    return {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens,
            "seed": sampling.seed}


def _owned_conversation(s: Session, actor: Principal, conversation_id: int) -> Conversation:
    conv = chat_q.get_conversation(s, conversation_id)
    if conv is None or conv.user_id != actor.user_id:
        raise NotFound("That conversation does not exist or is not yours.")
    return conv


def _title(prompt: str) -> str:
    first = " ".join(prompt.split())
    return first[:60] + ("…" if len(first) > 60 else "")


def _stream_with_history(host: EngineHost, history: list[ChatMessage], prompt: str, sampling: SamplingSettings,
                         request_id: str) -> GenerationStream:
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


def _sampling(temperature: float, top_p: float, max_tokens: int) -> SamplingSettings:
    try:
        return SamplingSettings(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    except ValueError as exc:  # InvalidSamplingError: its message names the setting and the allowed range
        raise InvalidInput(str(exc)) from exc


@requires("chat.use")
def start_turn(ctx: AppContext, actor: Principal, conversation_id: int | None, prompt: str, *,
               temperature: float, top_p: float, max_tokens: int,
               system_prompt: str | None = None) -> ChatTurn:
    """Scan the prompt, apply the policy and start streaming (unless blocked). See :class:`ChatTurn`.

    Raises :class:`InvalidInput` for an empty or too long prompt or out-of-range sampling settings, and
    :class:`ModelUnavailable` when no model can answer (the failed exchange is stored as ``error``).
    """
    return _begin_turn(ctx, actor, conversation_id, prompt, temperature=temperature, top_p=top_p,
                       max_tokens=max_tokens, system_prompt=system_prompt)


COMPARISON_TITLE = "Comparison · "


@requires("models.evaluate")
def start_comparison_turn(ctx: AppContext, actor: Principal, prompt: str, *, temperature: float, top_p: float,
                          max_tokens: int, side: str) -> ChatTurn:
    """One side of a side-by-side chat (``side`` is ``live`` or ``candidate``): a new conversation titled
    ``Comparison · ...`` answered by ``ctx.host``, with request id ``cmp-<side>-...``."""
    return _begin_turn(ctx, actor, None, prompt, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                       title_prefix=COMPARISON_TITLE, request_prefix=f"cmp-{side}")


def _begin_turn(ctx: AppContext, actor: Principal, conversation_id: int | None, prompt: str, *,
                temperature: float, top_p: float, max_tokens: int, system_prompt: str | None = None,
                title_prefix: str = "", request_prefix: str = "chat") -> ChatTurn:
    if prompt is None or not prompt.strip():
        raise InvalidInput("Type a message first.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidInput(f"The message has {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}.")
    system_prompt = (system_prompt or "").strip() or None
    if system_prompt and len(system_prompt) > MAX_SYSTEM_PROMPT_CHARS:
        raise InvalidInput(f"The system prompt is limited to {MAX_SYSTEM_PROMPT_CHARS:,} characters.")
    sampling = _sampling(temperature, top_p, max_tokens)
    host = ctx.host
    if host is None:
        raise ModelUnavailable("No model is being served; ask an admin.")

    prompt_gate = moderation.check_prompt(ctx, prompt)
    with ctx.db.session() as s:
        if conversation_id is None:
            conv = chat_q.create_conversation(s, user_id=actor.user_id,
                                              title=title_prefix + _title(prompt_gate.text_for_storage),
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

    request_id = f"{request_prefix}-{uuid.uuid4().hex[:12]}"
    turn = ChatTurn(ctx, actor, conversation_id, prompt_gate, request_id=request_id, sampling=sampling,
                    _hold=moderation.hold_output(ctx))
    if prompt_gate.notice:
        turn.notices.append(prompt_gate.notice)
    if prompt_gate.action == "block":
        turn.outcome = _store(ctx, actor, conversation_id, request_id, prompt_gate, None, status="blocked",
                              error=None, sampling=sampling, result=None)
        turn.outcome.notice = " ".join(turn.notices)
        return turn
    try:
        turn.stream = _stream_with_history(host, history, prompt_gate.text_for_model, sampling, request_id)
    except EngineError as exc:
        _store(ctx, actor, conversation_id, request_id, prompt_gate, None, status="error", error=str(exc),
               sampling=sampling, result=None)
        raise _console_error(exc) from exc
    return turn


@requires("chat.use")
def list_conversations(ctx: AppContext, actor: Principal, limit: int = 50) -> list[ConversationView]:
    with ctx.db.session() as s:
        return [ConversationView(c.id, c.title, c.system_prompt, c.updated_at)
                for c in chat_q.list_conversations(s, actor.user_id)[:limit]]


@requires("chat.use")
def conversation_history(ctx: AppContext, actor: Principal, conversation_id: int) -> list[ExchangeView]:
    with ctx.db.session() as s:
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
def send_to_review(ctx: AppContext, actor: Principal, exchange_id: int, note: str) -> int:
    """Put one of the user's own exchanges in the review queue with a note."""
    note = (note or "").strip()
    if not note:
        raise InvalidInput("Add a note that says what a reviewer should look at.")
    if len(note) > 2000:
        raise InvalidInput("Keep the note under 2,000 characters.")
    with ctx.db.session() as s:
        ex = chat_q.get_exchange(s, exchange_id)
        if ex is None or ex.user_id != actor.user_id:
            raise NotFound("That message does not exist or is not yours.")
        return moderation.send_to_review(ctx, s, ex, actor, note)
