"""Benchmarks: output tokens/s through the engine host versus vLLM's own ``LLM.generate`` on the same model
(:func:`run_engine_bench`), and through the console's vLLM server client versus the ``openai`` client on the same
server (:func:`run_server_bench`).

Both sides get the same chat prompts (the model's own chat template, as token ids) and the same sampling:
greedy (temperature 0) with ``ignore_eos=True``, so every request produces exactly ``max_tokens`` tokens and
the two figures count the same work. The host side runs ``concurrency`` caller threads, each streaming one
chat, as browser sessions would; the raw side hands all prompts to one ``LLM.generate`` call. Both engines live
for the whole run (two in-process vLLM engines work side by side as long as neither is shut down while the
other still serves) and their rounds interleave, so both see the same machine.
"""

from __future__ import annotations

import gc
import logging
import queue
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.client import EngineClient
from engine.host import EngineHost
from engine.types import (
    ChatMessage,
    HostConfig,
    ModelSpec,
    SamplingSettings,
    ServerOptions,
    check_engine_args,
)

logger = logging.getLogger(__name__)

_GIB = 1 << 30
_QUESTIONS = (
    "I forgot my password, how do I reset it?",
    "Where is my order? It should have arrived yesterday.",
    "Can I get a refund for my last invoice?",
    "How do I cancel my subscription?",
    "What personal data do you keep about me?",
    "I was charged twice this month.",
    "Can I change the delivery address of my order?",
    "How do I delete my account?",
    "I want to talk to a human agent.",
    "Why was my card declined?",
    "My package arrived damaged, what now?",
    "How long does a refund take?",
    "Can I upgrade my plan in the middle of the month?",
    "I did not receive the confirmation email.",
    "Do you ship to other countries?",
    "How do I update my billing details?",
)


def _as_spec(model: str | Path | ModelSpec) -> ModelSpec:
    if isinstance(model, ModelSpec):
        return model
    path = Path(model)
    return ModelSpec(name=path.name or str(model), source=str(model))


def _prompt_messages(concurrency: int) -> list[list[ChatMessage]]:
    return [
        [
            ChatMessage("system", "You are a helpful customer-support assistant."),
            ChatMessage("user", _QUESTIONS[i % len(_QUESTIONS)]),
        ]
        for i in range(concurrency)
    ]


def _timed_round(caller: Callable[[int], None], barrier: threading.Barrier, tokens: list[int],
                 errors: list[BaseException], name: str) -> tuple[int, float]:
    """Run ``caller(i)`` on one thread per request, all released together by ``barrier``; returns the output
    tokens they counted and the seconds from the release to the last one's end (the first error re-raised)."""
    threads = [threading.Thread(target=caller, args=(i,), name=f"bench-{name}-{i}") for i in range(len(tokens))]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return sum(tokens), elapsed


def _host_round(
    host: EngineClient, conversations: list[list[ChatMessage]], sampling: SamplingSettings
) -> tuple[int, float]:
    barrier = threading.Barrier(len(conversations) + 1)
    tokens = [0] * len(conversations)
    errors: list[BaseException] = []

    def caller(i: int) -> None:
        try:
            barrier.wait()
            stream = host.stream_chat(conversations[i], sampling)
            for _ in stream:
                pass
            tokens[i] = stream.result.output_tokens
        except BaseException as exc:  # re-raised on the main thread below
            errors.append(exc)

    return _timed_round(caller, barrier, tokens, errors, "caller")


class _RawEngine:
    """vLLM's ``LLM`` owned by one thread of its own, as the host owns its engine.

    vLLM's CPU worker binds the OpenMP threads of the thread that creates the engine; on this 2-core machine an
    engine driven from the main thread ran several times slower than the same engine on a fresh thread. So the
    ``LLM`` is created, driven and shut down on one dedicated thread, and rounds are handed to it.
    """

    def __init__(self, spec: ModelSpec, config: HostConfig, conversations: list[list[ChatMessage]],
                 sampling: SamplingSettings) -> None:
        self._jobs: queue.SimpleQueue[tuple[str, queue.SimpleQueue[Any]] | None] = queue.SimpleQueue()
        self._args = (spec, config, conversations, sampling)
        ready: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="bench-raw-llm", daemon=True)
        self._thread.start()
        started = ready.get()
        if isinstance(started, BaseException):
            raise started

    def _run(self, ready: queue.SimpleQueue[Any]) -> None:
        from transformers import AutoTokenizer
        from vllm import LLM, SamplingParams
        from vllm.platforms import current_platform

        spec, config, conversations, sampling = self._args
        try:
            check_engine_args(spec.engine_args, version=spec.name)  # the host's allowlist, before any loading
            tokenizer = AutoTokenizer.from_pretrained(spec.source, revision=spec.revision,
                                                      trust_remote_code=config.trust_remote_code)
            prompts: list[Any] = []
            for messages in conversations:
                text = tokenizer.apply_chat_template(
                    [m.as_dict() for m in messages], tokenize=False, add_generation_prompt=True
                )
                prompts.append({"prompt_token_ids": tokenizer(text, add_special_tokens=False)["input_ids"]})
            # The same engine arguments the host would pass, so only the serving path differs.
            args: dict[str, Any] = {
                "model": spec.source,
                "revision": spec.revision,
                "dtype": spec.dtype,
                "max_model_len": spec.max_model_len,
                "enforce_eager": current_platform.is_cpu() if config.enforce_eager is None else config.enforce_eager,
            }
            if current_platform.is_cpu():
                args["kv_cache_memory_bytes"] = int(config.kv_cache_gib * _GIB)
            args.update(spec.engine_args)
            args["trust_remote_code"] = config.trust_remote_code
            llm = LLM(**args)
            params = SamplingParams(
                temperature=sampling.temperature, max_tokens=sampling.max_tokens, ignore_eos=sampling.ignore_eos
            )
            llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
        except BaseException as exc:  # re-raised on the caller's thread
            ready.put(exc)
            return
        ready.put(True)
        try:
            while (job := self._jobs.get()) is not None:
                kind, reply = job
                try:
                    started = time.perf_counter()
                    if kind == "generate":
                        outputs = llm.generate(prompts, params, use_tqdm=False)
                        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
                        reply.put((tokens, time.perf_counter() - started))
                    else:
                        reply.put(_raw_stream_round(llm.llm_engine, prompts, sampling, kind))
                except BaseException as exc:
                    reply.put(exc)
        finally:
            # Explicit shutdown: at interpreter exit vLLM's __del__ raised.
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                logger.exception("shutting down the raw engine failed")
            del llm
            gc.collect()

    def round(self, kind: str) -> tuple[int, float]:
        """One timed round: ``"generate"`` (LLM.generate) or a request-id prefix for the raw streaming loop."""
        reply: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._jobs.put((kind, reply))
        out = reply.get()
        if isinstance(out, BaseException):
            raise out
        return out  # type: ignore[no-any-return]

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()


def _raw_stream_round(engine: Any, prompts: list[Any], sampling: SamplingSettings, prefix: str
                      ) -> tuple[int, float]:
    """vLLM's own streaming path with no host around it: DELTA outputs, stepping the engine directly.

    Separates what streaming itself costs (a RequestOutput and incremental detokenisation per token) from what
    the host adds on top (threads, queues, callers).
    """
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(temperature=sampling.temperature, max_tokens=sampling.max_tokens,
                            ignore_eos=sampling.ignore_eos, output_kind=RequestOutputKind.DELTA)
    started = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.add_request(f"{prefix}-{i}", prompt, params)
    tokens = 0
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens += len(output.outputs[0].token_ids)
    return tokens, time.perf_counter() - started


def _spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return {"min": round(ordered[0], 3), "p25": round(q[0], 3), "median": round(statistics.median(ordered), 3),
            "p75": round(q[2], 3), "max": round(ordered[-1], 3)}


def run_engine_bench(
    model_dir_or_spec: str | Path | ModelSpec,
    *,
    concurrency: int = 16,
    max_tokens: int = 128,
    kv_cache_gib: float = 1.0,
    rounds: int = 9,
) -> dict[str, Any]:
    """Output tokens/s of ``concurrency`` streaming chats through EngineHost vs vLLM's ``LLM.generate``.

    Both engines are built once and warmed up, then rounds interleave (host, raw, raw, host, host, raw...: ABBA
    order, so a slow spell of the shared machine hits both sides alike). Each pair of neighbouring rounds gives
    one ratio; ``ratio`` is the median of those ratios and ``ratio_spread`` their min/quartiles/max, because
    single rounds on a shared 2-core machine are noise. vLLM's own streaming loop is measured the same way.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    spec = _as_spec(model_dir_or_spec)
    config = HostConfig(kv_cache_gib=kv_cache_gib)
    sampling = SamplingSettings(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    conversations = _prompt_messages(concurrency)

    raw = _RawEngine(spec, config, conversations, sampling)
    host = EngineHost.start(spec, config, wait=True)
    host_rounds: list[tuple[int, float]] = []
    raw_rounds: list[tuple[int, float]] = []
    stream_rounds: list[tuple[int, float]] = []
    try:
        # Warm-up: the first step of a fresh engine pays one-off costs the raw side paid in its warm-up.
        list(host.stream_chat(conversations[0], SamplingSettings(temperature=0.0, max_tokens=4)))
        for r in range(rounds):
            sides = ["host", "raw"] if r % 2 == 0 else ["raw", "host"]
            for side in sides:
                if side == "host":
                    host_rounds.append(_host_round(host, conversations, sampling))
                else:
                    raw_rounds.append(raw.round("generate"))
            stream_rounds.append(raw.round(f"bench-stream-{r}"))
    finally:
        host.shutdown()
        raw.close()
    logger.info("bench rounds (tokens, s): host %s raw %s stream %s", host_rounds, raw_rounds, stream_rounds)

    host_all = [n / s for n, s in host_rounds]
    raw_all = [n / s for n, s in raw_rounds]
    stream_all = [n / s for n, s in stream_rounds]
    ratios = [h / w for h, w in zip(host_all, raw_all, strict=True)]
    stream_ratios = [h / w for h, w in zip(host_all, stream_all, strict=True)]
    return {
        "host_tokens_per_s": round(statistics.median(host_all), 1),
        "raw_tokens_per_s": round(statistics.median(raw_all), 1),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_spread": _spread(ratios),
        # vLLM's own streaming loop (no host): host / this is what the host itself costs.
        "raw_stream_tokens_per_s": round(statistics.median(stream_all), 1),
        "host_vs_raw_stream_ratio": round(statistics.median(stream_ratios), 3),
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "model": spec.name,
        "source": spec.source,
        "sampling": {"temperature": 0.0, "ignore_eos": True, "max_tokens": max_tokens},
        "note": "greedy with ignore_eos: both sides generate exactly concurrency * max_tokens tokens per round; "
                "rounds interleave ABBA, ratio = median of per-pair ratios",
        "rounds": rounds,
        "host_rounds_tokens_per_s": [round(x, 1) for x in host_all],
        "raw_rounds_tokens_per_s": [round(x, 1) for x in raw_all],
        "output_tokens_per_round": {"host": host_rounds[0][0], "raw": raw_rounds[0][0]},
    }


def _openai_round(client: Any, model: str, conversations: list[list[ChatMessage]], sampling: SamplingSettings
                  ) -> tuple[int, float]:
    """One round through the ``openai`` package's client: the same threads, barrier and requests as the console's
    round (streamed chat completions, the usage chunk's ``completion_tokens`` counted)."""
    barrier = threading.Barrier(len(conversations) + 1)
    tokens = [0] * len(conversations)
    errors: list[BaseException] = []

    def caller(i: int) -> None:
        try:
            barrier.wait()
            stream = client.chat.completions.create(
                model=model, messages=[m.as_dict() for m in conversations[i]], stream=True,
                stream_options={"include_usage": True}, max_tokens=sampling.max_tokens,
                temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed,
                extra_body={"ignore_eos": sampling.ignore_eos},
            )
            for chunk in stream:
                if chunk.usage is not None:
                    tokens[i] = chunk.usage.completion_tokens
        except BaseException as exc:  # re-raised on the main thread below
            errors.append(exc)

    return _timed_round(caller, barrier, tokens, errors, "openai")


def run_server_bench(
    model_dir_or_spec: str | Path | ModelSpec | None = None,
    *,
    url: str | None = None,
    server_model: str | None = None,
    api_key: str | None = None,
    concurrency: int = 16,
    max_tokens: int = 128,
    kv_cache_gib: float = 1.0,
    rounds: int = 9,
    options: ServerOptions | None = None,
) -> dict[str, Any]:
    """Output tokens/s of ``concurrency`` streaming chats through the console's ``ServerEngineClient`` vs the
    ``openai`` package's client, both against the same vLLM OpenAI-compatible server.

    Without ``url`` a server is started on ``model_dir_or_spec`` with the managed-server launcher
    (:class:`engine.managed.ManagedServer`: the project's one server command line; its log in a directory of its
    own unless ``options.log_dir`` names one, never a running console's) and stopped at the end; with
    ``url`` (and ``server_model``, the model name that server serves; ``api_key`` if it wants one) an existing
    server or router is measured and left running.

    Both sides send the same requests: the same chats, greedy (temperature 0), ``ignore_eos`` so every request
    streams exactly ``max_tokens`` tokens, streamed with usage; each runs ``concurrency`` caller threads released
    together. After one warm-up request per side, rounds interleave in ABBA order (console, openai, openai,
    console...), so a slow spell of the shared machine hits both sides alike; each round gives output tokens/s
    (tokens / wall time of the round), each pair of neighbouring rounds one ratio console / openai.
    ``ratio_median`` is the median of those ratios (the target is >= 0.97: the console's client costs at most 3%).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    import openai

    from engine.server_client import ServerEngineClient, check_base_url

    if url is not None:
        if not server_model:
            raise ValueError("The server model is required with a server URL (the model name the server serves).")
        url = check_base_url(url)
        model = server_model
        started = None
    else:
        if model_dir_or_spec is None:
            raise ValueError("The model is required when no server URL is given.")
        from engine.managed import ManagedServer

        spec = _as_spec(model_dir_or_spec)
        started = ManagedServer.start(spec, HostConfig(kv_cache_gib=kv_cache_gib),
                                      options or ServerOptions(), wait=True)
        url, model, api_key = started.url, spec.name, started.api_key

    sampling = SamplingSettings(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    conversations = _prompt_messages(concurrency)
    console_rounds: list[tuple[int, float]] = []
    openai_rounds: list[tuple[int, float]] = []
    console: ServerEngineClient | None = None
    reference = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key or "none", max_retries=0, timeout=600.0)
    try:
        server_spec = ModelSpec(name=model, source=url, backend="server", server_urls=(url,), server_model=model)
        console = ServerEngineClient(server_spec, api_key=api_key)
        warm = SamplingSettings(temperature=0.0, max_tokens=4)
        _host_round(console, conversations[:1], warm)
        _openai_round(reference, model, conversations[:1], warm)
        for r in range(rounds):
            for side in (("console", "openai") if r % 2 == 0 else ("openai", "console")):
                if side == "console":
                    console_rounds.append(_host_round(console, conversations, sampling))
                else:
                    openai_rounds.append(_openai_round(reference, model, conversations, sampling))
    finally:
        reference.close()
        if console is not None:
            console.shutdown()
        if started is not None:
            started.stop()
    logger.info("server bench rounds (tokens, s): console %s openai %s", console_rounds, openai_rounds)

    console_all = [n / s for n, s in console_rounds]
    openai_all = [n / s for n, s in openai_rounds]
    ratios = [c / o for c, o in zip(console_all, openai_all, strict=True)]
    return {
        "backend": "server",
        "console_tokens_per_s": round(statistics.median(console_all), 1),
        "openai_tokens_per_s": round(statistics.median(openai_all), 1),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratios": [round(x, 3) for x in ratios],
        "ratio_spread": _spread(ratios),
        "rounds": rounds,
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "model": model,
        "server": url,
        "started_server": started is not None,
        "sampling": {"temperature": 0.0, "ignore_eos": True, "max_tokens": max_tokens},
        "note": "same streamed chat requests on the same server; rounds interleave ABBA (console, openai, openai, "
                "console...), ratio = console / openai tokens/s per pair of neighbouring rounds, ratio_median their "
                "median",
        "console_rounds_tokens_per_s": [round(x, 1) for x in console_all],
        "openai_rounds_tokens_per_s": [round(x, 1) for x in openai_all],
        "output_tokens_per_round": {"console": console_rounds[0][0], "openai": openai_rounds[0][0]},
    }
