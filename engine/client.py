"""The one interface every engine answers through: :class:`EngineClient`, and the :class:`ResponseStream` it returns.

Callers (the chat pipeline, side-by-side chats, evaluations, benchmarks) hold an ``EngineClient`` and never know
where the engine runs. Implementations today:

- :class:`engine.host.EngineHost`: vLLM in this process (the console's live engine);
- :class:`engine.child_client.ChildEngineClient`: an ``EngineHost`` in a child process (``python -m engine.child``),
  for a second version beside the live one (side by side, evaluations, the latency comparison);
- :class:`engine.server_client.ServerEngineClient`: one or more vLLM OpenAI-compatible servers (backend ``server``:
  servers someone else runs, or a router in front of them), over HTTP;
- :class:`engine.managed.ManagedServerClient`: a vLLM OpenAI-compatible server the console starts itself as a child
  process on a loopback port (backend ``managed-server``).

The protocol assumes no shared memory and no local process, so a client of a remote vLLM OpenAI-compatible
server fits it: requests are named by id (``cancel`` takes the id), state and load come back as data
(:class:`~engine.types.HostStatus`, :class:`~engine.types.EngineHealth`), a finished request's counts and timings
as a :class:`~engine.types.GenerationResult` (measured where the implementation can: vLLM's own per-request
timestamps in-process and in the child; a network client measures them on its side), and every failure a caller
should show is an :class:`~engine.errors.EngineError` subclass, the same one from every implementation
(``PromptTooLongError`` for a prompt the context cannot hold, ``EngineNotReadyError``, ``EngineDeadError``...).

Lifecycle beyond ``shutdown`` (switching versions, restarting) is not part of it: that is the serving side's
business (``EngineHost.switch``), not a request's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from engine.types import ChatMessage, EngineHealth, GenerationResult, HostStatus, ModelSpec, SamplingSettings


class ResponseStream(Protocol):
    """One submitted request: iterate it for text deltas; ``result`` once iteration ended or after ``cancel()``.

    Iteration raises an :class:`~engine.errors.EngineError` when the request fails while it runs (the engine
    died: :class:`~engine.errors.EngineDeadError`). ``cancel()`` and ``close()`` never raise: the result then
    says ``aborted`` with whatever was generated.
    """

    request_id: str
    model_version: str

    @property
    def done(self) -> bool:
        """True once the request finished, was aborted or failed."""

    @property
    def result(self) -> GenerationResult:
        """Text, token counts and timings (TTFT, ITL, E2E, queue); RuntimeError before the request ended."""

    def __iter__(self) -> Iterator[str]: ...

    def __next__(self) -> str: ...

    def cancel(self) -> GenerationResult:
        """Abort the request (no-op once it ended) and return its result."""

    def close(self) -> None:
        """Abort the request if it still runs (for ``with`` blocks and abandoned streams)."""


@runtime_checkable
class EngineClient(Protocol):
    """What a caller may ask of an engine serving one model version; every method is safe from any thread."""

    @property
    def serving(self) -> ModelSpec | None:
        """The model version that answers requests now; None while loading, stopped, failed or dead."""

    def status(self) -> HostStatus:
        """Lifecycle state as data: loading (with progress), ready, failed, dead or stopped, with a message."""

    def health(self) -> EngineHealth:
        """Load and counters as data: running and waiting requests, KV-cache use, token totals and rates,
        recent errors; cheap enough to poll."""

    def stream_chat(self, messages: Sequence[ChatMessage], sampling: SamplingSettings, *,
                    request_id: str | None = None) -> ResponseStream:
        """Submit a chat with the served version's chat template; returns its stream once the engine took it.

        Raises (before anything streams) EmptyPromptError, NoChatTemplateError, PromptTooLongError,
        EngineNotReadyError, EngineDeadError or another EngineError.
        """

    def stream_prompt(self, prompt: str, sampling: SamplingSettings, *,
                      request_id: str | None = None) -> ResponseStream:
        """Submit a raw prompt (no chat template), e.g. for benchmarks; raises like :meth:`stream_chat`."""

    def check_chat(self, messages: Sequence[ChatMessage]) -> None:
        """Raise what :meth:`stream_chat` would for ``messages`` (empty, no template, too long) without
        submitting anything; does nothing while no version is ready."""

    def cancel(self, request_id: str) -> None:
        """Abort a running request by its id (its stream ends with an aborted result); unknown ids are ignored."""

    def shutdown(self) -> None:
        """Abort what is in flight and release the engine; safe to call more than once."""


if TYPE_CHECKING:  # the type checker proves that each implementation satisfies the protocol; nothing at run time
    from engine.child_client import ChildEngineClient
    from engine.host import EngineHost
    from engine.managed import ManagedServerClient
    from engine.server_client import ServerEngineClient

    _IMPLEMENTATIONS: tuple[type[EngineClient], ...] = (EngineHost, ChildEngineClient, ServerEngineClient,
                                                        ManagedServerClient)
