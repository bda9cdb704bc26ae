"""Benchmark: output tokens/s through the engine host versus vLLM's own ``LLM.generate`` on the same model.

Both sides get the same chat prompts (the model's own chat template, as token ids) and the same sampling:
greedy (temperature 0) with ``ignore_eos=True``, so every request produces exactly ``max_tokens`` tokens and
the two figures count the same work. The host side runs ``concurrency`` caller threads, each streaming one
chat, as browser sessions would; the raw side hands all prompts to one ``LLM.generate`` call. The host is shut
down before ``LLM`` is created, so the two engines never share the machine's memory.
"""

from __future__ import annotations

import gc
import logging
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from engine.host import EngineHost
from engine.types import ChatMessage, HostConfig, ModelSpec, SamplingSettings

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


def _host_round(
    host: EngineHost, conversations: list[list[ChatMessage]], sampling: SamplingSettings
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

    threads = [
        threading.Thread(target=caller, args=(i,), name=f"bench-caller-{i}") for i in range(len(tokens))
    ]
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


def _bench_host(
    spec: ModelSpec,
    config: HostConfig,
    conversations: list[list[ChatMessage]],
    sampling: SamplingSettings,
    rounds: int,
) -> list[tuple[int, float]]:
    host = EngineHost.start(spec, config, wait=True)
    try:
        # Warm-up: the first step of a fresh engine pays one-off costs the raw side also pays in its warm-up.
        list(host.stream_chat(conversations[0], SamplingSettings(temperature=0.0, max_tokens=4)))
        return [_host_round(host, conversations, sampling) for _ in range(rounds)]
    finally:
        host.shutdown()


def _bench_raw(
    spec: ModelSpec,
    config: HostConfig,
    conversations: list[list[ChatMessage]],
    sampling: SamplingSettings,
    rounds: int,
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.platforms import current_platform

    tokenizer = AutoTokenizer.from_pretrained(spec.source, revision=spec.revision)
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
    llm = LLM(**args)
    try:
        params = SamplingParams(
            temperature=sampling.temperature, max_tokens=sampling.max_tokens, ignore_eos=sampling.ignore_eos
        )
        llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
        measured = []
        for _ in range(rounds):
            started = time.perf_counter()
            outputs = llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - started
            measured.append((sum(len(o.outputs[0].token_ids) for o in outputs), elapsed))
        return measured, _raw_stream_rounds(llm.llm_engine, prompts, sampling, rounds)
    finally:
        # Explicit shutdown: at interpreter exit vLLM's __del__ raised.
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def _raw_stream_rounds(engine: Any, prompts: list[Any], sampling: SamplingSettings, rounds: int
                       ) -> list[tuple[int, float]]:
    """vLLM's own streaming path with no host around it: DELTA outputs, stepping the engine directly.

    Separates what streaming itself costs (a RequestOutput and incremental detokenisation per token) from what
    the host adds on top (threads, queues, callers).
    """
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    measured = []
    for r in range(rounds):
        params = SamplingParams(temperature=sampling.temperature, max_tokens=sampling.max_tokens,
                                ignore_eos=sampling.ignore_eos, output_kind=RequestOutputKind.DELTA)
        started = time.perf_counter()
        for i, prompt in enumerate(prompts):
            engine.add_request(f"bench-stream-{r}-{i}", prompt, params)
        tokens = 0
        while engine.has_unfinished_requests():
            for output in engine.step():
                tokens += len(output.outputs[0].token_ids)
        measured.append((tokens, time.perf_counter() - started))
    return measured


def _on_own_thread(fn: Any, *args: Any) -> Any:
    """Run ``fn`` on a fresh thread, as the host runs its engine.

    vLLM's CPU worker binds the OpenMP threads of the thread that creates the engine; on this 2-core machine
    an engine driven from the main thread ran several times slower than the same engine on a fresh thread.
    Giving ``LLM.generate`` a thread of its own compares the serving paths, not the thread placement.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # re-raised on the calling thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="bench-raw-llm")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def run_engine_bench(
    model_dir_or_spec: str | Path | ModelSpec,
    *,
    concurrency: int = 16,
    max_tokens: int = 128,
    kv_cache_gib: float = 1.0,
    rounds: int = 3,
) -> dict[str, Any]:
    """Output tokens/s of ``concurrency`` streaming chats through EngineHost vs vLLM's ``LLM.generate``.

    Each side builds its engine once, warms up, then runs ``rounds`` timed rounds; the best round of each
    side counts (the machine is shared, so the best round is the least disturbed one). Returns a JSON-ready
    dict with ``host_tokens_per_s``, ``raw_tokens_per_s``, ``ratio`` (host / raw), the settings used and
    every round's tokens/s.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    spec = _as_spec(model_dir_or_spec)
    config = HostConfig(kv_cache_gib=kv_cache_gib)
    sampling = SamplingSettings(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    conversations = _prompt_messages(concurrency)

    host_rounds = _bench_host(spec, config, conversations, sampling, rounds)
    logger.info("bench host rounds (tokens, s): %s", host_rounds)
    raw_rounds, stream_rounds = _on_own_thread(_bench_raw, spec, config, conversations, sampling, rounds)
    logger.info("bench raw rounds (tokens, s): %s; raw streaming: %s", raw_rounds, stream_rounds)

    host_all = [n / s for n, s in host_rounds]
    raw_all = [n / s for n, s in raw_rounds]
    stream_all = [n / s for n, s in stream_rounds]
    host_tps, raw_tps, stream_tps = max(host_all), max(raw_all), max(stream_all)
    return {
        "host_tokens_per_s": round(host_tps, 1),
        "raw_tokens_per_s": round(raw_tps, 1),
        "ratio": round(host_tps / raw_tps, 3),
        # vLLM's own streaming loop (no host): host / this is what the host itself costs.
        "raw_stream_tokens_per_s": round(stream_tps, 1),
        "host_vs_raw_stream_ratio": round(host_tps / stream_tps, 3),
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "model": spec.name,
        "source": spec.source,
        "sampling": {"temperature": 0.0, "ignore_eos": True, "max_tokens": max_tokens},
        "note": "greedy with ignore_eos: both sides generate exactly concurrency * max_tokens tokens per round; best round counts",
        "rounds": rounds,
        "median_ratio": round(statistics.median(host_all) / statistics.median(raw_all), 3),
        "host_rounds_tokens_per_s": [round(x, 1) for x in host_all],
        "raw_rounds_tokens_per_s": [round(x, 1) for x in raw_all],
        "output_tokens_per_round": {"host": host_rounds[0][0], "raw": raw_rounds[0][0]},
    }
