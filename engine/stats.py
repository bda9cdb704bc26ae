"""The engine's load as vLLM reports it, kept cheaply for :meth:`engine.host.EngineHost.health`.

vLLM's ``LLMEngine.step()`` hands its scheduler stats (running and waiting requests, KV-cache use) and iteration
stats (prompt and generation tokens, preemptions, finished requests) to ``engine.logger_manager.record(...)``.
Its default manager also feeds a log line and Prometheus metrics in the global registry, which costs ~10% of a
small model's throughput, so the worker puts an :class:`EngineStats` there instead: ``record`` runs on the
engine's own thread at each step and only adds a few numbers under a lock; any thread reads a
:meth:`EngineStats.snapshot`. ``LLMEngine.get_metrics()`` is no use here: it reads the global Prometheus
registry that only the default manager fills, for every engine of the process at once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.types import EngineErrorNote

_ERROR_FINISH = 3  # vllm.v1.engine.FinishReason.ERROR (an IntEnum; compared by value so vLLM is not imported)


@dataclass(frozen=True)
class StatsSnapshot:
    running: int
    waiting: int
    kv_cache_usage: float
    preemptions_total: int
    prompt_tokens_total: int
    generation_tokens_total: int
    requests_finished_total: int
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    window_s: float
    recent_errors: tuple[EngineErrorNote, ...]


class EngineStats:
    """Stands in for vLLM's ``StatLoggerManager`` (the methods ``LLMEngine`` calls on it) and keeps the numbers.

    Token rates are over the last ``window_s`` seconds, kept as per-second sums; at most ``max_errors`` errors
    are remembered.
    """

    def __init__(self, *, window_s: float = 10.0, max_errors: int = 20,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._running = 0
        self._waiting = 0
        self._kv_usage = 0.0
        self._preemptions = 0
        self._prompt_tokens = 0
        self._generation_tokens = 0
        self._finished = 0
        self._per_second: deque[list[int]] = deque()  # [second, prompt tokens, generation tokens]
        self._errors: deque[EngineErrorNote] = deque(maxlen=max_errors)

    # -- called by vLLM's LLMEngine on the engine thread --

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
               engine_idx: int | None = None) -> None:
        """One engine step's stats (``SchedulerStats``, ``IterationStats`` or None)."""
        prompt = generation = preempted = finished = 0
        failed: list[str] = []
        if iteration_stats is not None:
            prompt = int(getattr(iteration_stats, "num_prompt_tokens", 0) or 0)
            generation = int(getattr(iteration_stats, "num_generation_tokens", 0) or 0)
            preempted = int(getattr(iteration_stats, "num_preempted_reqs", 0) or 0)
            done = getattr(iteration_stats, "finished_requests", None) or ()
            finished = len(done)
            failed = [str(getattr(r, "request_id", None) or "?") for r in done
                      if int(getattr(r, "finish_reason", -1)) == _ERROR_FINISH]
        with self._lock:
            if scheduler_stats is not None:
                self._running = int(scheduler_stats.num_running_reqs)
                self._waiting = int(scheduler_stats.num_waiting_reqs)
                self._kv_usage = float(scheduler_stats.kv_cache_usage)
            self._preemptions += preempted
            self._prompt_tokens += prompt
            self._generation_tokens += generation
            self._finished += finished
            if prompt or generation:
                second = int(self._clock())
                if self._per_second and self._per_second[-1][0] == second:
                    self._per_second[-1][1] += prompt
                    self._per_second[-1][2] += generation
                else:
                    self._per_second.append([second, prompt, generation])
                    self._prune(second)
        for request_id in failed:
            self.note_error(f"The engine failed request {request_id}.")

    def record_sleep_state(self, sleep: int = 0, level: int = 0) -> None:
        """vLLM's sleep mode; not used by the console."""

    def record_admission_rejection(self, reason: str) -> None:
        self.note_error(f"The engine refused a request: {reason}")

    def log(self) -> None:
        """vLLM's periodic log line; the console logs its own."""

    def log_engine_initialized(self) -> None:
        """vLLM's start-up log line; already written by the default manager before this one replaced it."""

    # -- called by the worker --

    def idle(self) -> None:
        """The engine has nothing to do (no step follows, so the last step's counts would stay)."""
        with self._lock:
            self._running = self._waiting = 0
            self._kv_usage = 0.0

    def note_error(self, message: str) -> None:
        with self._lock:
            self._errors.append(EngineErrorNote(self._wall(), message[:500]))

    # -- any thread --

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            now = int(self._clock())
            self._prune(now)
            # Full seconds before the current one, so a rate does not dip at the start of each second.
            start = now - self.window_s
            prompt = sum(p for s, p, _ in self._per_second if start <= s < now)
            generation = sum(g for s, _, g in self._per_second if start <= s < now)
            return StatsSnapshot(
                running=self._running,
                waiting=self._waiting,
                kv_cache_usage=self._kv_usage,
                preemptions_total=self._preemptions,
                prompt_tokens_total=self._prompt_tokens,
                generation_tokens_total=self._generation_tokens,
                requests_finished_total=self._finished,
                prompt_tokens_per_s=prompt / self.window_s,
                generation_tokens_per_s=generation / self.window_s,
                window_s=self.window_s,
                recent_errors=tuple(self._errors),
            )

    def _prune(self, now: int) -> None:
        while self._per_second and self._per_second[0][0] < now - self.window_s - 1:
            self._per_second.popleft()
