"""One chat turn: prompt scan and policy, the prompt stored (pending) before the model sees it, streaming from the
engine host, output scan, one transaction to complete the stored exchange.

During a canary (:mod:`console.services.canary`) a turn of a conversation on the candidate's arm
(:func:`~console.services.canary.conversation_arm`: sticky per conversation) is sent to the candidate's engine
when it is up on this console (``stream_chat(..., arm="candidate")``), else to the live version; the exchange
records the version that answered (or, for a turn that failed before anything streamed, the one it was sent to).
Nothing on the chat page says which arm a conversation is on."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.exc import OperationalError

from console.services import canary as canary_svc
from console.services import moderation, quotas, telemetry
from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import (
    ConsoleError,
    InvalidInput,
    ModelUnavailable,
    NotFound,
    StorageUnavailable,
    is_locked,
    storage_problem,
)
from console.services.text import clean_text, optional_text, required_text
from db import chat as chat_q
from db.chat import ExchangeNotPending, ExchangeTimings, PendingRecord, TurnRecord
from db.review import items as review_items
from engine.errors import EmptyPromptError, EngineError, InvalidSamplingError, PromptTooLongError
from engine.switching import CanaryEngine
from engine.types import ChatMessage, GenerationResult, SamplingSettings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from db import Database
    from db.tables import Conversation
    from engine.client import EngineClient, ResponseStream
    from engine.safety.incremental import StreamingScan

logger = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 20_000
MAX_SYSTEM_PROMPT_CHARS = 4_000
MAX_REVIEW_NOTE_CHARS = 2_000  # a note sent with an exchange to the review queue
# A write that found the database locked (SQLite waits busy_timeout first) is tried once more after this wait.
STORE_RETRY_WAIT_S = 1.0
# The running canary is read at most this often per process (and only while a canary engine is up here): a canary
# that ends is left by new turns within these seconds (the reconciler stops its engine within its interval anyway).
CANARY_CACHE_S = 5.0

T = TypeVar("T")


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
    """What became of a turn. ``saved`` is False (and ``exchange_id`` None) when the database could not store it:
    ``text`` is then the only copy of the answer, and ``notice`` says so (the prompt, stored before the model was
    asked, stays in the conversation as a pending exchange: ``ChatTurn.exchange_id``)."""

    exchange_id: int | None
    status: str
    text: str
    model_version: str | None
    result: GenerationResult | None
    prompt_action: str
    output_action: str
    notice: str | None = None
    saved: bool = True


@dataclass
class ChatTurn:
    """An exchange in progress. Iterate :meth:`deltas` (e.g. with ``st.write_stream``); then read ``outcome``.

    Abandoning the iterator (the user pressed Stop, the browser went away) cancels the vLLM request and
    stores the partial answer as ``aborted``. ``exchange_id`` is the exchange stored (``pending``) when the prompt
    was submitted, before the model saw it; the end of the answer completes it.
    """

    ctx: AppContext
    actor: Principal
    conversation_id: int
    prompt_gate: moderation.GateResult
    notices: list[str] = field(default_factory=list)
    system_gate: moderation.GateResult | None = None  # set on the turn that starts a conversation with one
    stream: Any = None
    request_id: str = ""
    sampling: SamplingSettings | None = None
    outcome: TurnOutcome | None = None
    exchange_id: int | None = None  # the pending exchange; None for a blocked prompt (stored in one go)
    synthetic: bool = False
    model_version: str | None = None  # a canary's candidate the turn was sent to (a failure without a result is its)
    # The console's own time around the engine's, in ms: scan_before_ms, store_ms (the pending prompt), scan_after_ms.
    overhead: dict[str, float] = field(default_factory=dict)
    _hold: bool = False
    _scan: StreamingScan | None = None

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
        # The answer is scanned as it streams (finished sentences, in the background): at its end only the tail is.
        self._scan = moderation.streaming_scan(self.ctx)
        try:
            for raw in self.stream:
                delta = clean_text(raw)
                parts.append(delta)
                if self._scan is not None:
                    self._scan.feed(delta)
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
        # A partial answer (the engine failed or was cut, the user stopped) is judged and redacted like any answer.
        started = time.perf_counter()
        gate = moderation.check_output(self.ctx, text, self._scan)
        self.overhead["scan_after_ms"] = (time.perf_counter() - started) * 1000
        shown = gate.text_for_user
        if gate.action == "block":
            self.notices.append((gate.notice if gate.timed_out else None) or moderation.BLOCKED_OUTPUT_NOTICE)
        self.outcome = _store(
            self.ctx, self.actor, self.conversation_id, self.request_id, self.prompt_gate, gate,
            status=status, error=str(error) if error else None, sampling=self.sampling, result=result,
            system_gate=self.system_gate, exchange_id=self.exchange_id, synthetic=self.synthetic,
            overhead=self.overhead, model_version=self.model_version,
        )
        if gate.timed_out is not None:  # withheld unchecked (fail closed): on the audit chain, like a refused prompt
            moderation.record_scan_timeout(self.ctx, self.actor, direction="output", source="", chars=len(text),
                                           timeout=gate.timed_out, request_id=self.request_id,
                                           exchange_id=self.outcome.exchange_id)
        if self.outcome.notice:  # not saved
            self.notices.append(self.outcome.notice)
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


def _write(ctx: AppContext, what: str, work: Callable[[Session], T]) -> T:
    """Run ``work`` in one write transaction; a locked database gets one more try after a short wait.

    Anything the database refuses for lack of a lock or of disk space becomes :class:`StorageUnavailable`
    (the transaction rolled back whole: nothing half-stored, the audit chain intact).
    """
    for attempt in (1, 2):
        try:
            with ctx.db.session() as s:
                return work(s)
        except OperationalError as exc:
            if attempt == 1 and is_locked(exc):
                logger.warning("storing %s: database locked, trying once more in %ss", what, STORE_RETRY_WAIT_S)
                time.sleep(STORE_RETRY_WAIT_S)
                continue
            logger.error("storing %s failed: %s", what, exc.orig if exc.orig is not None else exc)
            raise StorageUnavailable(f"Could not save {what}: {storage_problem(exc)}.") from exc
    raise AssertionError("unreachable")  # the loop returns or raises


def _store(ctx: AppContext, actor: Principal, conversation_id: int, request_id: str,
           prompt_gate: moderation.GateResult, output_gate: moderation.GateResult | None, *, status: str,
           error: str | None, sampling: SamplingSettings | None, result: GenerationResult | None,
           system_gate: moderation.GateResult | None = None, exchange_id: int | None = None,
           synthetic: bool = False, overhead: dict[str, float] | None = None,
           model_version: str | None = None) -> TurnOutcome:
    """Complete the pending exchange ``exchange_id`` (or, without one, store the whole turn at once); if the
    database cannot take it, the outcome says so (``saved`` False) instead of raising. The exchange's version is
    the one that answered (``result``), else ``model_version`` (the one it was sent to), else the one served."""
    model_version = result.model_version if result is not None else model_version or _served(ctx)
    # Everything is worked out first (findings, raw texts, severity, deadline); the store only writes.
    record = _turn_record(ctx, actor, conversation_id, request_id, prompt_gate, output_gate, status=status,
                          error=error, sampling=sampling, result=result, model_version=model_version,
                          system_gate=system_gate, completing=exchange_id is not None, synthetic=synthetic,
                          overhead=overhead)
    outcome = TurnOutcome(
        exchange_id=None,
        status=status,
        text=output_gate.text_for_user if output_gate is not None else "",
        model_version=model_version,
        result=result,
        prompt_action=record.prompt_action or "allow",
        output_action=output_gate.action if output_gate is not None else "allow",
    )
    # Counted for the Prometheus endpoint whether or not the database takes it (never raises).
    telemetry.observe_exchange(model_version=model_version, status=status, result=result,
                               prompt_action=outcome.prompt_action, output_action=outcome.output_action,
                               synthetic=synthetic)

    def store(s: Session) -> int:
        if exchange_id is None:
            return chat_q.store_turn(s, record).id
        return chat_q.complete_exchange(s, exchange_id, record).id

    try:
        outcome.exchange_id = _write(ctx, "this exchange", store)
    except (StorageUnavailable, ExchangeNotPending) as exc:
        outcome.saved = False
        if isinstance(exc, ExchangeNotPending):  # the console restarted meanwhile and closed it as interrupted
            problem = "Could not save this answer: its message was closed as interrupted meanwhile."
        else:
            problem = str(exc)
        where = ("your message is kept, but the answer is not in the conversation's history"
                 if exchange_id is not None else "it is not in the conversation's history")
        outcome.notice = (f"{problem} The answer shown here is the only copy: {where} and was not sent to review. "
                          "Copy it now if you need it.")
        logger.error("exchange not stored: request=%s status=%s model=%s exchange=%s", request_id, status,
                     model_version, exchange_id)
        return outcome
    logger.info("exchange %s stored: request=%s status=%s model=%s", outcome.exchange_id, request_id, status,
                model_version)
    return outcome


def _served(ctx: AppContext) -> str | None:
    host = ctx.host
    spec = host.serving if host is not None else None
    return spec.name if spec is not None else None


_canary_cache: weakref.WeakKeyDictionary[Database, tuple[float, canary_svc.ActiveCanary | None]] = (
    weakref.WeakKeyDictionary())
_canary_cache_lock = threading.Lock()


def _running_canary(ctx: AppContext) -> canary_svc.ActiveCanary | None:
    """The running canary, read at most every ``CANARY_CACHE_S`` seconds per database (not once per turn)."""
    now = time.monotonic()
    with _canary_cache_lock:
        cached = _canary_cache.get(ctx.db)
    if cached is not None and cached[0] > now:
        return cached[1]
    with ctx.db.session(readonly=True) as s:
        canary = canary_svc.active_canary(s)
    with _canary_cache_lock:
        _canary_cache[ctx.db] = (now + CANARY_CACHE_S, canary)
    return canary


def _canary_for_turn(ctx: AppContext, host: EngineClient) -> canary_svc.ActiveCanary | None:
    """The running canary when its candidate's engine is up on this console (else None: every turn goes to the
    live version, and nothing is read)."""
    if not isinstance(host, CanaryEngine):
        return None
    up = host.canary
    if up is None:
        return None
    canary = _running_canary(ctx)
    return canary if canary is not None and canary.candidate == up.name else None


def _pending_record(actor: Principal, conversation_id: int, request_id: str, prompt_gate: moderation.GateResult,
                    system_gate: moderation.GateResult | None, sampling: SamplingSettings | None,
                    model_version: str | None, synthetic: bool,
                    stored: Sequence[moderation.GateResult] | None = None) -> PendingRecord:
    """The submitted prompt as stored before the model is asked. ``stored``: the gates whose findings and raw
    texts go with this record (default: the prompt's and the system prompt's)."""
    if stored is None:
        stored = [g for g in (system_gate, prompt_gate) if g is not None]
    return PendingRecord(
        conversation_id=conversation_id,
        user_id=actor.user_id,
        actor=actor.username,
        request_id=request_id,
        model_version=model_version or "none",
        prompt=prompt_gate.text_for_storage,
        sampling=_sampling_dict(sampling),
        # The system prompt is part of what the model is asked: the stronger of the two actions is the prompt's.
        prompt_action=moderation.strongest_action([system_gate, prompt_gate]),
        policy_version=prompt_gate.policy_version,
        findings=moderation.finding_records(stored),
        raw_texts=moderation.raw_texts_to_keep(stored),
        synthetic=synthetic,
    )


def _turn_record(ctx: AppContext, actor: Principal, conversation_id: int, request_id: str,
                 prompt_gate: moderation.GateResult, output_gate: moderation.GateResult | None, *, status: str,
                 error: str | None, sampling: SamplingSettings | None, result: GenerationResult | None,
                 model_version: str | None, system_gate: moderation.GateResult | None = None,
                 completing: bool = False, synthetic: bool = False,
                 overhead: dict[str, float] | None = None) -> TurnRecord:
    """The turn as stored at once, or (``completing``) the answer's part of a pending exchange: the prompt's
    findings and raw text were stored with it, the review item is judged on both sides."""
    gates = [g for g in (system_gate, prompt_gate, output_gate) if g is not None]
    # Completing a pending exchange stores only the answer's findings and raw text: the prompt's are stored.
    stored_now = gates if not completing else [output_gate] if output_gate is not None else []
    pending = _pending_record(actor, conversation_id, request_id, prompt_gate, system_gate, sampling, model_version,
                              synthetic, stored=stored_now)
    return TurnRecord(
        **{f.name: getattr(pending, f.name) for f in dataclasses.fields(PendingRecord)},
        response=output_gate.text_for_storage if output_gate is not None else "",
        status=status,
        error=error,
        timings=_timings(result),
        output_action=output_gate.action if output_gate is not None else None,
        review=moderation.review_item_for(ctx, gates),
        overhead=dict(overhead or {}),
        engine_server=result.server if result is not None else None,  # which vLLM server answered (server backends)
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


def _stream_with_history(host: EngineClient, history: list[ChatMessage], prompt: str, sampling: SamplingSettings,
                         request_id: str, *, candidate: bool = False) -> ResponseStream:
    """Start the request (``candidate``: on the canary's engine); when the conversation outgrows the context, drop
    its oldest turns (keep the system)."""
    system = [m for m in history[:1] if m.role == "system"]
    turns = history[len(system):]
    while True:
        messages = [*system, *turns, ChatMessage("user", prompt)]
        try:
            if candidate and isinstance(host, CanaryEngine):
                return host.stream_chat(messages, sampling, request_id=request_id, arm="candidate")
            return host.stream_chat(messages, sampling, request_id=request_id)
        except PromptTooLongError:
            if not turns:
                raise
            turns = turns[2:]  # one user/assistant pair


def _check_first_prompt_fits(host: EngineClient, system_gate: moderation.GateResult | None,
                             prompt_gate: moderation.GateResult) -> None:
    """A conversation's first prompt that the model's context cannot hold is refused before anything is stored, like
    one over MAX_PROMPT_CHARS: no conversation is left behind, and the message says the limit in tokens. (A later
    turn's history is cut to fit when it is sent; a prompt too long on its own is then recorded in its conversation
    as an error.)"""
    check = getattr(host, "check_chat", None)
    if check is None:  # a test's stand-in host that cannot measure a prompt before it is asked
        return
    system = [ChatMessage("system", system_gate.text_for_model)] if system_gate is not None else []
    try:
        check([*system, ChatMessage("user", prompt_gate.text_for_model)])
    except (PromptTooLongError, EmptyPromptError) as exc:
        raise InvalidInput(str(exc)) from exc


def _sampling(temperature: float, top_p: float, max_tokens: int) -> SamplingSettings:
    try:
        return SamplingSettings(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    except ValueError as exc:  # InvalidSamplingError: its message names the setting and the allowed range
        raise InvalidInput(str(exc)) from exc


@requires("chat.use")
def start_turn(ctx: AppContext, actor: Principal, conversation_id: int | None, prompt: str, *,
               temperature: float, top_p: float, max_tokens: int,
               system_prompt: str | None = None, synthetic: bool = False) -> ChatTurn:
    """Scan the prompt, apply the policy, store the prompt (``pending``) and start streaming (unless blocked).
    See :class:`ChatTurn`. ``synthetic`` marks load-test traffic (stored on the exchange and in its events).

    Raises :class:`InvalidInput` for an empty or too long prompt or out-of-range sampling settings,
    :class:`ModelUnavailable` when no model can answer (the failed exchange is stored as ``error``), and
    :class:`StorageUnavailable` when the prompt cannot be stored (then the model is not asked).
    """
    return _begin_turn(ctx, actor, conversation_id, prompt, temperature=temperature, top_p=top_p,
                       max_tokens=max_tokens, system_prompt=system_prompt, synthetic=synthetic)


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
                title_prefix: str = "", request_prefix: str = "chat", synthetic: bool = False) -> ChatTurn:
    prompt = required_text(prompt, "the message", MAX_PROMPT_CHARS, strip=False)  # sent as typed
    # A conversation keeps the system prompt it was started with.
    system_prompt = None if conversation_id is not None else optional_text(
        system_prompt, "the system prompt", MAX_SYSTEM_PROMPT_CHARS)
    sampling = _sampling(temperature, top_p, max_tokens)
    host = ctx.host
    if host is None:
        raise ModelUnavailable("No model is being served; ask an admin.")
    if request_prefix == "chat":  # quotas (issue 25): before anything is scanned, stored or sent; see quotas.py
        quotas.enforce(ctx, actor, synthetic=synthetic)

    started = time.perf_counter()
    try:
        prompt_gate = moderation.check_prompt(ctx, prompt)
        # The system prompt is judged like a prompt; what the conversation keeps is its stored (redacted) text.
        system_gate = moderation.check_system_prompt(ctx, system_prompt) if system_prompt else None
    except moderation.ScanTooSlow as exc:  # refused before anything is stored or sent; the refusal is audited
        moderation.record_scan_timeout(ctx, actor, direction=exc.direction, source=exc.source, chars=exc.chars,
                                       timeout=exc.timeout)
        raise
    overhead = {"scan_before_ms": (time.perf_counter() - started) * 1000}
    prompt_blocked = moderation.strongest_action([system_gate, prompt_gate]) == "block"
    if conversation_id is None and not prompt_blocked:
        _check_first_prompt_fits(host, system_gate, prompt_gate)
    request_id = f"{request_prefix}-{uuid.uuid4().hex[:12]}"
    served = host.serving.name if host.serving is not None else None
    # A canary takes a share of users' conversations, not side-by-side comparisons or load tests.
    canary = _canary_for_turn(ctx, host) if request_prefix == "chat" and not synthetic else None
    sent_to = served

    def open_conversation(s: Session) -> tuple[int, list[ChatMessage], bool, int | None]:
        nonlocal sent_to
        if conversation_id is None:
            conv = chat_q.create_conversation(
                s, user_id=actor.user_id, title=title_prefix + _title(prompt_gate.text_for_storage),
                system_prompt=system_gate.text_for_storage if system_gate else None, actor=actor.username)
            # This turn sends the system prompt as the policy says (redacted or not); later turns its stored text.
            system = system_gate.text_for_model if system_gate else None
        else:
            conv = _owned_conversation(s, actor, conversation_id)
            system = conv.system_prompt
        exchanges = chat_q.list_exchanges(s, conv.id)
        system_blocked = bool(exchanges) and moderation.system_prompt_blocked(s, exchanges[0].id)
        history = [ChatMessage("system", system)] if system else []
        for ex in exchanges:
            if ex.status in ("ok", "aborted") and ex.response:
                history.append(ChatMessage("user", ex.prompt))
                history.append(ChatMessage("assistant", ex.response))
        if system_blocked or prompt_blocked:
            return conv.id, history, system_blocked, None
        if canary is not None and canary_svc.conversation_arm(canary, conv.id, conv.created_at):
            sent_to = canary.candidate
        else:
            sent_to = served
        # The prompt is on record before the model sees it, in the same transaction as its conversation.
        pending = chat_q.begin_exchange(s, _pending_record(actor, conv.id, request_id, prompt_gate, system_gate,
                                                           sampling, sent_to, synthetic))
        return conv.id, history, False, pending.id

    started = time.perf_counter()
    try:
        conversation_id, history, system_blocked, exchange_id = _write(ctx, "the conversation", open_conversation)
        overhead["store_ms"] = (time.perf_counter() - started) * 1000
    except StorageUnavailable as exc:
        raise StorageUnavailable(f"{exc} Your message was not sent to the model; try again in a moment.") from exc
    if system_blocked:  # its first turn was refused for the system prompt: so is every later one
        raise InvalidInput(moderation.BLOCKED_SYSTEM_PROMPT_NOTICE)

    on_candidate = canary is not None and sent_to == canary.candidate
    turn = ChatTurn(ctx, actor, conversation_id, prompt_gate, request_id=request_id, sampling=sampling,
                    system_gate=system_gate, exchange_id=exchange_id, synthetic=synthetic, overhead=overhead,
                    model_version=sent_to if on_candidate else None, _hold=moderation.hold_output(ctx))
    for gate in (system_gate, prompt_gate):
        if gate is not None and gate.notice:
            turn.notices.append(gate.notice)
    if prompt_blocked:  # never reaches the model: stored in one go
        turn.outcome = _store(ctx, actor, conversation_id, request_id, prompt_gate, None, status="blocked",
                              error=None, sampling=sampling, result=None, system_gate=system_gate,
                              synthetic=synthetic, overhead=overhead)
        if turn.outcome.notice:  # not saved
            turn.notices.append(turn.outcome.notice)
        turn.outcome.notice = " ".join(turn.notices)
        return turn
    try:
        turn.stream = _stream_with_history(host, history, prompt_gate.text_for_model, sampling, request_id,
                                           candidate=on_candidate)
    except EngineError as exc:
        _store(ctx, actor, conversation_id, request_id, prompt_gate, None, status="error", error=str(exc),
               sampling=sampling, result=None, system_gate=system_gate, exchange_id=exchange_id,
               synthetic=synthetic, model_version=turn.model_version)
        raise _console_error(exc) from exc
    return turn


@requires("chat.use")
def list_conversations(ctx: AppContext, actor: Principal, limit: int = 50) -> list[ConversationView]:
    with ctx.db.session(readonly=True) as s:
        return [ConversationView(c.id, c.title, c.system_prompt, c.updated_at)
                for c in chat_q.list_conversations(s, actor.user_id)[:limit]]


@requires("chat.use")
def linked_conversation(ctx: AppContext, actor: Principal, value: str) -> int:
    """The conversation a page address names (``?conversation=12``: a reload, a bookmark, a link), if it is the
    user's own; :class:`NotFound` otherwise (also for a value that is no id)."""
    try:
        conversation_id = int(value)
    except (TypeError, ValueError):
        raise NotFound("That conversation does not exist or is not yours.") from None
    with ctx.db.session(readonly=True) as s:
        return _owned_conversation(s, actor, conversation_id).id


@requires("chat.use")
def conversation_history(ctx: AppContext, actor: Principal, conversation_id: int) -> list[ExchangeView]:
    with ctx.db.session(readonly=True) as s:
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
    """Put one of the user's own exchanges in the review queue with a note (stored with personal data cut); the
    review item's id. An exchange has one item waiting for a decision at most: sent again (or flagged by the
    policy already), the note is added to that item (audited as ``review.note``) instead of a second item."""
    note = required_text(note, "the note for the reviewer", MAX_REVIEW_NOTE_CHARS)
    note = moderation.redact_pii(ctx, note)

    def send(s: Session) -> int:
        ex = chat_q.get_exchange(s, exchange_id)
        if ex is None or ex.user_id != actor.user_id:
            raise NotFound("That message does not exist or is not yours.")
        if ex.status == "pending":  # its answer, when it comes, is judged and may bring an item of its own
            raise InvalidInput("This message is still being answered; send it to review once its answer is in.")
        return moderation.send_to_review(ctx, s, ex, actor, note)

    return _write(ctx, "the note", send)


# The severity moderation.severity_of gives a prompt flagged for its findings (a flag needs one).
_INTERRUPTED_FLAG_SEVERITY = 2


def mark_interrupted(ctx: AppContext, *, before: datetime) -> list[int]:
    """At console start-up: every exchange still ``pending`` from before ``before`` (this process's start) whose
    console process is gone (``db.chat.owner_gone``: another console on the same database keeps its own; one on
    another host counts as gone after ``interrupted_after_minutes``) was being answered when it stopped. Marks
    them ``interrupted`` in one transaction with one ``chat.interrupted`` audit event listing their ids; one whose
    prompt the policy flagged enters the review queue (its answer, which would have taken it there, never came).
    Returns the ids.

    Not a user action (no access guard): the console's start-up calls it (``console.resources``).
    Raises :class:`StorageUnavailable` when the database cannot take it.
    """
    def sweep(s: Session) -> list[int]:
        ids = chat_q.mark_interrupted(s, before,
                                      other_hosts_after=timedelta(minutes=ctx.settings.interrupted_after_minutes))
        for exchange_id in ids:
            ex = chat_q.get_exchange(s, exchange_id)
            if ex is not None and ex.prompt_action == "flag" and ex.review_status == "none":
                review_items.create_review_item(
                    s, exchange_id=ex.id, reason="flagged", direction="prompt", actor="system",
                    severity=_INTERRUPTED_FLAG_SEVERITY,
                    due_at=ctx.now() + timedelta(hours=moderation.REVIEW_DEADLINE_HOURS[_INTERRUPTED_FLAG_SEVERITY]))
        return ids

    ids = _write(ctx, "the interrupted exchanges", sweep)
    if ids:
        logger.warning("%d exchange(s) pending from before this console started marked interrupted: %s",
                       len(ids), ids)
    return ids
