"""What a caller holds while its request runs: a plain iterator of text deltas, then a result."""

from __future__ import annotations

import logging
import queue
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Self

from engine.errors import EngineDeadError
from engine.types import GenerationResult
from engine.worker import Ended, Failed

logger = logging.getLogger(__name__)

# How long a waiting caller sleeps on its sink before checking that the engine thread is still alive.
LIVENESS_POLL_S = 1.0


class StreamBase(Iterator[str]):
    """What every :class:`~engine.client.ResponseStream` implementation shares: ``done``, ``result`` once the
    request ended, ``close`` and ``with`` blocks. A subclass sets ``request_id`` and ``_result`` and implements
    ``__next__`` and ``cancel``."""

    request_id: str
    _result: GenerationResult | None

    @property
    def done(self) -> bool:
        """True once the request finished, was aborted or failed."""
        return self._result is not None

    @property
    def result(self) -> GenerationResult:
        """The finished request's text, counts and timings; available once iteration ended (or after cancel)."""
        if self._result is None:
            raise RuntimeError(f"request {self.request_id} has not finished: iterate the stream or cancel it first")
        return self._result

    def __iter__(self) -> Self:
        return self

    def cancel(self) -> GenerationResult:
        """Abort the request (no-op if it already ended) and return the result with what was generated."""
        raise NotImplementedError

    def close(self) -> None:
        """Abort the request if it is still running (for ``with`` blocks and abandoned streams)."""
        self.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class GenerationStream(StreamBase):
    """A plain iterator of text deltas (for ``st.write_stream``), then ``.result``.

    ``cancel()`` or ``close()`` aborts the vLLM request; so does dropping the stream unfinished (garbage
    collection). If the engine dies mid-stream, iteration raises :class:`EngineDeadError`.
    """

    def __init__(
        self,
        *,
        request_id: str,
        model_version: str,
        prompt_tokens: int,
        sink: queue.SimpleQueue[Any],
        abort: Callable[[str], None],
        alive: Callable[[], bool],
        min_interval_s: float = 0.0,
    ) -> None:
        self.request_id = request_id
        self.model_version = model_version
        self.prompt_tokens = prompt_tokens
        self._sink = sink
        self._alive = alive
        self._min_interval_s = min_interval_s
        self._last_delta_at = 0.0
        self._parts: list[str] = []
        self._token_ids: list[int] = []
        self._metrics: Any = None
        self._finish_reason: str | None = None
        self._result: GenerationResult | None = None
        # The finalizer holds the abort callable, never the stream, so the stream can be collected; when it is
        # collected unfinished, the request stops using the engine.
        self._finalizer = weakref.finalize(self, abort, request_id)
        self._finalizer.atexit = False

    def __next__(self) -> str:
        if self._min_interval_s and self._result is None:
            # Sleeping (not blocking on the sink) means the engine thread's puts wake nobody meanwhile;
            # the tokens that arrive are joined into the next delta.
            wait = self._last_delta_at + self._min_interval_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        while self._result is None:
            delta = self._consume(self._next_item())
            # Join whatever else already arrived, so a slow reader catches up in one hand-off.
            while self._result is None:
                try:
                    item = self._sink.get_nowait()
                except queue.Empty:
                    break
                delta += self._consume(item)
            if delta:
                self._last_delta_at = time.monotonic()
                return delta
        raise StopIteration

    def cancel(self) -> GenerationResult:
        """Abort the request (no-op if it already ended) and return the result with what was generated."""
        if self._result is None:
            self._finalizer()  # sends the abort once and disarms the finalizer
            deadline = time.monotonic() + 30.0
            while self._result is None:
                try:
                    item = self._sink.get(timeout=LIVENESS_POLL_S)
                except queue.Empty:
                    if not self._alive() or time.monotonic() > deadline:
                        self._finish(aborted=True)
                    continue
                try:
                    self._consume(item)
                except EngineDeadError:
                    pass  # the request is gone either way; the result says aborted
        assert self._result is not None  # the loop above ends only once a result is set
        return self._result

    def _next_item(self) -> Any:
        while True:
            try:
                return self._sink.get(timeout=LIVENESS_POLL_S)
            except queue.Empty:
                if not self._alive():
                    # The thread ended without telling us: treat it as dead rather than wait forever.
                    try:
                        return self._sink.get_nowait()
                    except queue.Empty:
                        return Failed(EngineDeadError("The engine stopped before this answer finished."))

    def _consume(self, item: Any) -> str:
        if isinstance(item, Ended):
            self._finish(aborted=True, reason=item.reason)
            return ""
        if isinstance(item, Failed):
            self._finish(aborted=True)
            raise item.error
        completion = item.outputs[0]
        self._parts.append(completion.text)
        self._token_ids.extend(completion.token_ids)
        if item.metrics is not None:
            self._metrics = item.metrics
        if item.finished:
            self._finish_reason = completion.finish_reason
            self._finish(aborted=False)
        text: str = completion.text
        return text

    def _finish(self, *, aborted: bool, reason: str = "abort") -> None:
        self._finalizer.detach()
        now = time.monotonic()  # same monotonic clock as vLLM's in-process engine core timestamps
        m = self._metrics

        def ts(name: str) -> float | None:
            value = getattr(m, name, 0.0) if m is not None else 0.0
            return value if value > 0 else None

        queued, scheduled = ts("queued_ts"), ts("scheduled_ts")
        first, last = ts("first_token_ts"), ts("last_token_ts")
        n = len(self._token_ids)
        queue_s = scheduled - queued if queued is not None and scheduled is not None else None
        ttft_s = first - queued if queued is not None and first is not None else None
        if queued is None:
            e2e_s = None
        elif aborted or last is None:
            e2e_s = max(now - queued, 0.0)
        else:
            e2e_s = last - queued
        mean_itl_s = (last - first) / (n - 1) if n > 1 and first is not None and last is not None else None
        self._result = GenerationResult(
            request_id=self.request_id,
            model_version=self.model_version,
            text="".join(self._parts),
            finish_reason=reason if aborted else self._finish_reason,
            prompt_tokens=self.prompt_tokens,
            output_tokens=n,
            queue_s=queue_s,
            ttft_s=ttft_s,
            mean_itl_s=mean_itl_s,
            e2e_s=e2e_s,
            aborted=aborted,
            token_ids=tuple(self._token_ids),
        )
        logger.debug("request %s finished: %s tokens, aborted=%s", self.request_id, n, aborted)
