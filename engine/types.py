"""Typed records the engine host takes and returns (frozen dataclasses, in vLLM's vocabulary)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.errors import InvalidSamplingError

HostState = Literal["stopped", "loading", "ready", "failed", "dead"]
Role = Literal["system", "user", "assistant"]


LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's max_lora_rank accepts


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter (PEFT format) served on top of its base model: the base loads with LoRA enabled and every
    request carries the adapter. ``rank`` is the adapter's ``r``."""

    name: str
    path: str
    rank: int = 16

    @property
    def max_lora_rank(self) -> int:
        """The smallest rank vLLM accepts as ``max_lora_rank`` that holds this adapter."""
        for allowed in LORA_RANKS:
            if self.rank <= allowed:
                return allowed
        raise ValueError(f"LoRA rank {self.rank} is above vLLM's largest ({LORA_RANKS[-1]})")


@dataclass(frozen=True)
class ModelSpec:
    """One registered model version: what the host loads and which name it reports as serving.

    ``source`` is a local directory or a hub id. ``engine_args`` are passed to vLLM's ``EngineArgs`` as given
    (tensor_parallel_size, pipeline_parallel_size, distributed_executor_backend, quantization,
    gpu_memory_utilization, kv_cache_memory_bytes...), so the same record serves a laptop model and a
    multi-GPU one.
    """

    name: str
    source: str
    revision: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    engine_args: Mapping[str, Any] = field(default_factory=dict)
    lora: LoraAdapter | None = None  # ``source`` is then the base model; ``name`` the adapter's version

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> ModelSpec:
        """The spec from ``dataclasses.asdict`` output (e.g. JSON handed to a child process)."""
        values = dict(fields)
        lora = values.pop("lora", None)
        return cls(**values, lora=LoraAdapter(**lora) if lora else None)

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("ModelSpec.name must not be empty")
        if not str(self.source).strip():
            raise ValueError("ModelSpec.source must not be empty")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"ModelSpec.max_model_len must be >= 2, got {self.max_model_len}")


@dataclass(frozen=True)
class HostConfig:
    """How the host runs engines, independent of the model version.

    ``kv_cache_gib`` becomes vLLM's ``kv_cache_memory_bytes`` unless the spec's engine_args set it.
    ``enforce_eager=None`` means eager on the CPU (skips torch.compile; start-up in seconds) and
    vLLM's default (compiled graphs) on a GPU. ``stream_interval_s`` is the shortest time between two hand-offs
    of one request's tokens from the engine thread to its reader (the last one goes at once): readers do not
    wake up on every engine step to compete with the engine for the GIL (a human cannot read 20 ms updates
    anyway; 0 = every step). Requests that arrive during a switch wait up to
    ``switch_wait_s`` for it to end.
    """

    kv_cache_gib: float = 1.0
    enforce_eager: bool | None = None
    drain_timeout_s: float = 30.0
    stream_interval_s: float = 0.02
    switch_wait_s: float = 300.0

    def __post_init__(self) -> None:
        if not self.kv_cache_gib > 0:
            raise ValueError(f"HostConfig.kv_cache_gib must be > 0, got {self.kv_cache_gib}")
        if self.drain_timeout_s < 0:
            raise ValueError(f"HostConfig.drain_timeout_s must be >= 0, got {self.drain_timeout_s}")
        if self.stream_interval_s < 0:
            raise ValueError(f"HostConfig.stream_interval_s must be >= 0, got {self.stream_interval_s}")
        if self.switch_wait_s < 0:
            raise ValueError(f"HostConfig.switch_wait_s must be >= 0, got {self.switch_wait_s}")


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling settings a user may choose; out-of-range values raise :class:`InvalidSamplingError`.

    ``ignore_eos`` keeps generating to ``max_tokens`` (benchmarks and tests, not the chat page).
    """

    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, int | float):
            raise InvalidSamplingError(f"Temperature must be a number, got {self.temperature!r}.")
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 2.0):
            raise InvalidSamplingError(f"Temperature must be between 0 and 2, got {self.temperature}.")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, int | float):
            raise InvalidSamplingError(f"Top-p must be a number, got {self.top_p!r}.")
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise InvalidSamplingError(f"Top-p must be greater than 0 and at most 1, got {self.top_p}.")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise InvalidSamplingError(f"Max tokens must be a whole number, got {self.max_tokens!r}.")
        if self.max_tokens < 1:
            raise InvalidSamplingError(f"Max tokens must be at least 1, got {self.max_tokens}.")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise InvalidSamplingError(f"Seed must be a whole number or empty, got {self.seed!r}.")


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation, in the shape chat templates expect."""

    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ("system", "user", "assistant"):
            raise ValueError(f"ChatMessage.role must be system, user or assistant, got {self.role!r}")

    def as_dict(self) -> dict[str, str]:
        """The message as the ``{"role", "content"}`` mapping tokenizers' chat templates take."""
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class GenerationResult:
    """What one request produced, with vLLM's own token counts and timings (seconds).

    Timings come from vLLM's per-request stats, all on the engine core's monotonic clock and measured from
    the moment the engine core queued the request (``queued_ts``):
    ``queue_s`` = scheduled - queued, ``ttft_s`` = first token - queued, ``e2e_s`` = last token - queued
    (or abort time - queued for an aborted request), ``mean_itl_s`` = (last - first) / (tokens - 1).
    A timing is ``None`` only when an aborted request never reached that point.
    """

    request_id: str
    model_version: str
    text: str
    finish_reason: str | None
    prompt_tokens: int
    output_tokens: int
    queue_s: float | None
    ttft_s: float | None
    mean_itl_s: float | None
    e2e_s: float | None
    aborted: bool
    token_ids: tuple[int, ...] = ()

    @property
    def tokens_per_s(self) -> float | None:
        """Output tokens per second over the whole request (``output_tokens / e2e_s``); None if unknown."""
        if self.e2e_s is None or self.e2e_s <= 0 or self.output_tokens == 0:
            return None
        return self.output_tokens / self.e2e_s


@dataclass(frozen=True)
class HostStatus:
    """What the host is doing now, for the sidebar and the chat page (``progress`` is 0..1 while loading)."""

    state: HostState
    model_version: str | None
    message: str
    progress: float = 0.0
    error: str | None = None
    switching_to: str | None = None

    @property
    def ready(self) -> bool:
        """True when the host takes requests."""
        return self.state == "ready"


@dataclass(frozen=True)
class EngineErrorNote:
    """An error the engine met while serving (a request it rejected or failed), with its wall-clock time."""

    at: float  # time.time()
    message: str


@dataclass(frozen=True)
class EngineHealth:
    """How loaded the serving engine is, from vLLM's own scheduler and iteration stats (``EngineHost.health``).

    ``running``/``waiting`` are the requests in the engine's batch and queue, ``kv_cache_usage`` the share of the
    KV-cache blocks in use (0..1), all as of the engine's last step (0 while it is idle). The ``*_total`` counters
    count since this engine started (a switch or restart starts them again, as Prometheus counters reset), and the
    token rates are over the last ``window_s`` seconds. ``error`` is the host's own (a failed load, a dead
    engine); ``recent_errors`` the last few requests the engine rejected or failed. ``at`` is ``time.time()``.
    """

    state: HostState
    model_version: str | None
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    preemptions_total: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    requests_finished_total: int = 0
    prompt_tokens_per_s: float = 0.0
    generation_tokens_per_s: float = 0.0
    window_s: float = 0.0
    error: str | None = None
    recent_errors: tuple[EngineErrorNote, ...] = ()
    at: float = 0.0
