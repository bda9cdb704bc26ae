"""Typed records the engine host takes and returns (frozen dataclasses, in vLLM's vocabulary)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.errors import EngineArgsError, InvalidSamplingError

HostState = Literal["stopped", "loading", "ready", "failed", "dead"]
Role = Literal["system", "user", "assistant"]

# Where a model version's engine runs (``ModelSpec.backend``):
# - ``in-process``: vLLM inside the console process (the embedded default; a switch stops the old engine first);
# - ``server``: vLLM OpenAI-compatible servers someone else runs (``server_urls``: one or more base URLs, or one
#   router in front of them), serving the model under ``server_model``;
# - ``managed-server``: the console starts vLLM's OpenAI-compatible server itself as a child process on a loopback
#   port (``source`` is then the model directory, as in-process), so a switch can bring it up beside the old one.
Backend = Literal["in-process", "server", "managed-server"]
BACKENDS: tuple[Backend, ...] = ("in-process", "server", "managed-server")


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


# The vLLM engine arguments a model version may carry, and why each is safe. They tune performance and memory only:
# none loads code (a class, module, plugin or processor by name), names a file, directory or host, or changes what
# is logged, traced or sent elsewhere. Everything else vLLM's ``EngineArgs`` takes is refused, when a version is
# registered and again whenever a spec is loaded (``check_engine_args``), so a row written straight into the
# database cannot smuggle one in. Left out on purpose, among others: trust_remote_code (an installation setting,
# ``HostConfig.trust_remote_code``), worker_cls/worker_extension_cls/scheduler_cls/logits_processors/
# distributed_executor_backend (load code by name), hf_overrides/model_impl/tokenizer_mode/load_format/
# speculative_config (can pull in other code, models or loaders), download_dir/allowed_local_media_path/
# hf_config_path/tokenizer (paths), otlp_traces_endpoint/kv_transfer_config/kv_events_config/master_addr/
# data_parallel_address (hosts), disable_log_stats/served_model_name/log_* (what is logged and under which name).
ALLOWED_ENGINE_ARGS: Mapping[str, str] = {
    "dtype": "numeric type of weights and activations (a fixed set of names)",
    "quantization": "which of vLLM's built-in quantization kernels reads the model's own weights",
    "max_model_len": "longest context, in tokens",
    "gpu_memory_utilization": "share of GPU memory vLLM may use (0-1)",
    "kv_cache_memory_bytes": "size of the KV cache, in bytes",
    "tensor_parallel_size": "GPUs of this machine a layer is split over",
    "pipeline_parallel_size": "GPUs of this machine the layers are spread over",
    "enforce_eager": "run without compiled/captured graphs",
    "max_num_seqs": "most requests in one batch",
    "max_num_batched_tokens": "most tokens in one engine step",
    "kv_cache_dtype": "numeric type of the KV cache",
    "enable_prefix_caching": "reuse the KV cache of shared prompt prefixes",
    "enable_chunked_prefill": "split long prompts over several steps",
    "block_size": "tokens per KV-cache block",
    "cpu_offload_gb": "GiB of weights kept in CPU memory",
    "disable_custom_all_reduce": "use NCCL instead of vLLM's all-reduce kernel between GPUs",
    "long_prefill_token_threshold": "prompt length above which a prefill counts as long when scheduling",
    "seed": "seed of the engine's random numbers (reproducible sampling)",
}


def check_engine_args(args: Mapping[str, Any], *, version: str | None = None) -> None:
    """Refuse engine arguments outside :data:`ALLOWED_ENGINE_ARGS`, or whose value is not a plain JSON scalar.

    Raises :class:`~engine.errors.EngineArgsError`, whose one-line message names the refused argument(s) and
    lists the allowed ones (``version`` names the model version in it).
    """
    where = f"Model version {version} has " if version else "Found "
    refused = sorted(str(name) for name in args if name not in ALLOWED_ENGINE_ARGS)
    if refused:
        raise EngineArgsError(
            f"{where}vLLM engine argument(s) the console does not allow: {', '.join(refused)}. "
            f"Allowed: {', '.join(sorted(ALLOWED_ENGINE_ARGS))}."
        )
    odd = sorted(name for name, value in args.items()
                 if not (value is None or isinstance(value, bool | int | str)
                         or (isinstance(value, float) and math.isfinite(value))))
    if odd:
        raise EngineArgsError(f"{where}engine argument(s) whose value is not a single number, true/false or "
                              f"text: {', '.join(odd)}.")


@dataclass(frozen=True)
class ModelSpec:
    """One registered model version: what the host loads and which name it reports as serving.

    ``source`` is a local directory or a hub id. ``engine_args`` are passed to vLLM's ``EngineArgs`` (only those
    in :data:`ALLOWED_ENGINE_ARGS`: tensor_parallel_size, quantization, gpu_memory_utilization,
    kv_cache_memory_bytes...; the host refuses a spec with any other), so the same record serves a laptop model
    and a multi-GPU one.
    """

    name: str
    source: str
    revision: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    engine_args: Mapping[str, Any] = field(default_factory=dict)
    lora: LoraAdapter | None = None  # ``source`` is then the base model; ``name`` the adapter's version
    backend: Backend = "in-process"
    server_urls: tuple[str, ...] = ()  # backend "server": base URLs (``http://host:port``, without ``/v1``)
    server_model: str | None = None  # backend "server": the model name the servers serve (default: ``name``)

    @property
    def model_on_server(self) -> str:
        """The model name requests to a server carry: ``server_model`` for an external server, else ``name``
        (a managed server serves the version under its own name)."""
        return self.server_model or self.name

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-able data (the LoRA adapter included), the inverse of :meth:`from_dict`."""
        return {"name": self.name, "source": self.source, "revision": self.revision, "dtype": self.dtype,
                "max_model_len": self.max_model_len, "engine_args": dict(self.engine_args),
                "lora": None if self.lora is None else {"name": self.lora.name, "path": self.lora.path,
                                                        "rank": self.lora.rank},
                "backend": self.backend, "server_urls": list(self.server_urls), "server_model": self.server_model}

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> ModelSpec:
        """The spec from :meth:`to_dict` output (e.g. JSON handed to a child process)."""
        values = dict(fields)
        lora = values.pop("lora", None)
        values["server_urls"] = tuple(values.get("server_urls") or ())
        return cls(**values, lora=LoraAdapter(**lora) if lora else None)

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("ModelSpec.name must not be empty")
        if not str(self.source).strip():
            raise ValueError("ModelSpec.source must not be empty")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"ModelSpec.max_model_len must be >= 2, got {self.max_model_len}")
        if self.backend not in BACKENDS:
            raise ValueError(f"ModelSpec.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "server" and not self.server_urls:
            raise ValueError("ModelSpec.server_urls must name at least one server for backend 'server'")


@dataclass(frozen=True)
class HostConfig:
    """How the host runs engines, independent of the model version.

    ``kv_cache_gib`` becomes vLLM's ``kv_cache_memory_bytes`` unless the spec's engine_args set it.
    ``trust_remote_code`` lets a model's own Python code (a hub model's ``auto_map``) run, for its config,
    tokenizer and weights alike; it is the installation's choice (off by default), never a model version's.
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
    trust_remote_code: bool = False

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

    In-process, timings come from vLLM's per-request stats, all on the engine core's monotonic clock and measured from
    the moment the engine core queued the request (``queued_ts``):
    ``queue_s`` = scheduled - queued, ``ttft_s`` = first token - queued, ``e2e_s`` = last token - queued
    (or abort time - queued for an aborted request), ``mean_itl_s`` = (last - first) / (tokens - 1).
    A timing is ``None`` only when an aborted request never reached that point. From a vLLM server the client
    measures them on its side (``ttft_s`` from sending the request, ``e2e_s`` to the last chunk, ``mean_itl_s``
    over the tokens the server's usage reports) and ``queue_s`` is ``None``: a server reports queue time only in
    aggregate (``/metrics``, see :class:`ServerHealth`).
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
    server: str | None = None  # the base URL of the vLLM server that answered (server backends); None in-process

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
    canary: str | None = None  # the version a canary serves beside this one (engine.switching.SwitchingEngine)

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
class ServerHealth:
    """One vLLM server's load and state, from its ``/health`` and ``/metrics`` (server backends only).

    ``state`` is ``ready`` (answers ``/health``), ``unreachable`` (no answer, or an error) or ``starting`` (a
    managed server still loading). Gauges as in :class:`EngineHealth`; the ``*_total`` counters are the server's
    own (since it started); ``queue_s_mean`` is the mean time requests waited in its queue over the last
    ``window_s`` seconds (from vLLM's ``vllm:request_queue_time_seconds`` histogram), None when none finished.
    """

    url: str
    state: str
    model: str | None = None
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    preemptions_total: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    requests_finished_total: int = 0
    prompt_tokens_per_s: float = 0.0
    generation_tokens_per_s: float = 0.0
    queue_s_mean: float | None = None
    window_s: float = 0.0
    error: str | None = None
    at: float = 0.0


@dataclass(frozen=True)
class ServerOptions:
    """How the console reaches and runs vLLM servers (server and managed-server backends); the installation's
    settings, not a model version's.

    ``api_key`` is sent as a bearer token to external servers (from a setting or a file, never the database; a
    managed server gets a fresh random key of its own instead). ``log_dir`` holds managed servers' logs.
    ``blue_green`` brings a new version up beside the old one on a switch; False (a machine that cannot hold both)
    stops the old engine first, as in-process. ``python`` runs managed servers (a seam for tests).
    """

    api_key: str | None = field(default=None, repr=False)
    log_dir: str | None = None
    blue_green: bool = True
    start_timeout_s: float = 600.0
    request_timeout_s: float = 600.0
    python: str | None = None


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
    servers: tuple[ServerHealth, ...] = ()  # server backends: one entry per base URL
