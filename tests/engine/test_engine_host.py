"""The engine host against a real in-process vLLM engine on the tiny untrained model.

The tiny model's output is random text, so tests that need an exact length ask for ``ignore_eos``.
Faults that cannot be caused for real (the engine dying mid-stream, a slow load) are injected at the host's
own seams (``Worker._step``, ``EngineHost._tokenizer``), never inside vLLM.
"""

from __future__ import annotations

import gc
import itertools
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine import worker as worker_module
from engine.errors import (
    EmptyPromptError,
    EngineDeadError,
    EngineError,
    EngineNotReadyError,
    InvalidSamplingError,
    ModelLoadError,
    NoChatTemplateError,
    PromptTooLongError,
)
from engine.host import EngineHost, GenerationStream
from engine.types import ChatMessage, HostConfig, ModelSpec, SamplingSettings

HELLO = [ChatMessage("system", "You are a support agent."), ChatMessage("user", "Where is my order?")]


def exactly(n: int) -> SamplingSettings:
    """Sampling that always produces exactly ``n`` tokens (the tiny model may emit EOS at any time)."""
    return SamplingSettings(temperature=0.0, max_tokens=n, ignore_eos=True)


def drain(stream: GenerationStream) -> list[str]:
    return list(stream)


def test_stream_yields_several_non_empty_deltas_that_join_to_the_result_text(engine_host: EngineHost) -> None:
    stream = engine_host.stream_chat(HELLO, exactly(24))
    deltas = drain(stream)
    assert len(deltas) >= 2
    assert all(deltas)
    assert "".join(deltas) == stream.result.text
    assert stream.result.model_version == "tiny-test"
    assert stream.result.finish_reason == "length"
    assert not stream.result.aborted


def test_timings_and_token_counts_are_present_and_consistent(engine_host: EngineHost) -> None:
    stream = engine_host.stream_chat(HELLO, exactly(16))
    drain(stream)
    result = stream.result
    assert result.output_tokens == 16 == len(result.token_ids)
    tokenizer = engine_host._tokenizer(engine_host.serving)  # type: ignore[arg-type]
    expected_prompt = tokenizer.apply_chat_template(
        [m.as_dict() for m in HELLO], tokenize=False, add_generation_prompt=True
    )
    assert result.prompt_tokens == len(tokenizer(expected_prompt, add_special_tokens=False)["input_ids"])
    assert tokenizer.decode(list(result.token_ids)) == result.text
    assert result.queue_s is not None and result.ttft_s is not None
    assert result.e2e_s is not None and result.mean_itl_s is not None
    assert 0.0 <= result.queue_s <= result.ttft_s <= result.e2e_s
    assert result.mean_itl_s >= 0.0
    assert result.tokens_per_s is not None and result.tokens_per_s > 0


def test_sixteen_concurrent_chats_all_stream_to_completion(engine_host: EngineHost) -> None:
    results: dict[int, tuple[list[str], object]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def chat(i: int) -> None:
        try:
            start.wait()
            stream = engine_host.stream_chat([ChatMessage("user", f"Question number {i}?")], exactly(12))
            results[i] = (drain(stream), stream.result)
        except BaseException as exc:  # reported below; a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 16
    assert len({r.request_id for _, r in results.values()}) == 16  # type: ignore[attr-defined]
    for deltas, result in results.values():
        assert deltas and "".join(deltas) == result.text  # type: ignore[attr-defined]
        assert result.output_tokens == 12 and not result.aborted  # type: ignore[attr-defined]


def test_cancel_mid_stream_aborts_the_request_and_the_engine_serves_the_next_one(
    engine_host: EngineHost,
) -> None:
    stream = engine_host.stream_chat(HELLO, exactly(300))
    first = next(stream)
    result = stream.cancel()
    assert result.aborted and result.finish_reason == "abort"
    assert first and result.text.startswith(first)
    assert 1 <= result.output_tokens < 300
    assert list(stream) == []  # a cancelled stream is finished
    assert stream.cancel() is result  # cancelling again changes nothing

    follow_up = engine_host.stream_chat(HELLO, exactly(5))
    drain(follow_up)
    assert follow_up.result.output_tokens == 5 and not follow_up.result.aborted


def test_abandoned_stream_gets_its_request_aborted(engine_host: EngineHost) -> None:
    stream = engine_host.stream_chat(HELLO, exactly(300))
    next(stream)
    sink = stream._sink
    del stream
    gc.collect()
    # The engine thread answers an abort with an _Ended marker; a request left running would end "finished".
    while True:
        item = sink.get(timeout=120)
        if isinstance(item, worker_module.Ended):
            break
        assert not item.finished, "the abandoned request ran to completion instead of being aborted"


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param([], id="no-messages"),
        pytest.param([ChatMessage("user", "")], id="empty"),
        pytest.param([ChatMessage("user", "Hi"), ChatMessage("user", "  \n\t ")], id="whitespace-last-turn"),
    ],
)
def test_empty_prompt_raises_empty_prompt_error(engine_host: EngineHost, messages: list[ChatMessage]) -> None:
    with pytest.raises(EmptyPromptError):
        engine_host.stream_chat(messages, exactly(4))


def test_blank_raw_prompt_raises_empty_prompt_error(engine_host: EngineHost) -> None:
    with pytest.raises(EmptyPromptError):
        engine_host.stream_prompt("   ", exactly(4))


def test_prompt_longer_than_the_context_raises_prompt_too_long_error(engine_host: EngineHost) -> None:
    long_question = "Where is my order? " * 400
    with pytest.raises(PromptTooLongError) as caught:
        engine_host.stream_chat([ChatMessage("user", long_question)], exactly(4))
    assert caught.value.limit == 512
    assert caught.value.prompt_tokens >= 512
    assert "512" in str(caught.value)


def test_check_chat_says_what_stream_chat_would_without_submitting_anything(
    engine_host: EngineHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_question = [ChatMessage("user", "Where is my order? " * 400)]
    with pytest.raises(PromptTooLongError) as streamed:
        engine_host.stream_chat(long_question, exactly(4))

    def no_submit(*args: object, **kwargs: object) -> None:
        raise AssertionError("check_chat submitted a request")

    monkeypatch.setattr(engine_host, "_submit_to", no_submit)
    with pytest.raises(PromptTooLongError) as checked:
        engine_host.check_chat(long_question)
    assert str(checked.value) == str(streamed.value) and checked.value.limit == 512
    with pytest.raises(EmptyPromptError):
        engine_host.check_chat([ChatMessage("user", "  ")])
    engine_host.check_chat([ChatMessage("system", "Be brief."), ChatMessage("user", "Where is my order?")])


def test_answer_is_cut_to_the_room_left_in_the_context(engine_host: EngineHost) -> None:
    stream = engine_host.stream_prompt("Where is my order? " * 80, exactly(500))
    drain(stream)
    result = stream.result
    assert result.prompt_tokens < 512
    assert result.prompt_tokens + result.output_tokens == 512


def test_engine_dying_mid_stream_raises_engine_dead_and_restart_brings_it_back(
    engine_host: EngineHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = itertools.count()
    real_step = worker_module.Worker._step

    def failing_step(self: worker_module.Worker, engine: object) -> list[object]:
        if next(calls) >= 3:
            raise RuntimeError("injected engine failure")
        return real_step(self, engine)

    monkeypatch.setattr(worker_module.Worker, "_step", failing_step)
    stream = engine_host.stream_chat(HELLO, exactly(50))
    with pytest.raises(EngineDeadError):
        drain(stream)
    assert stream.result.aborted
    status = engine_host.status()
    assert status.state == "dead"
    assert "injected engine failure" in (status.error or "")
    assert engine_host.serving is None
    with pytest.raises(EngineDeadError):
        engine_host.stream_chat(HELLO, exactly(4))

    monkeypatch.undo()
    engine_host.restart()
    assert engine_host.status().state == "ready"
    again = engine_host.stream_chat(HELLO, exactly(6))
    drain(again)
    assert again.result.output_tokens == 6


@pytest.fixture
def no_template_model_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model whose tokenizer has no chat template."""
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "no-template"))
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    config_path = copy / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    return copy


def test_switch_drains_in_flight_requests_and_a_model_without_chat_template_raises(
    engine_host: EngineHost, no_template_model_dir: Path
) -> None:
    original = engine_host.serving
    assert original is not None
    in_flight = engine_host.stream_chat(HELLO, exactly(20))
    switch_errors: list[BaseException] = []

    def switch() -> None:
        try:
            engine_host.switch(ModelSpec(name="no-template", source=str(no_template_model_dir)), drain=True)
        except BaseException as exc:
            switch_errors.append(exc)

    switcher = threading.Thread(target=switch)
    switcher.start()
    drain(in_flight)
    switcher.join()
    assert switch_errors == []
    assert not in_flight.result.aborted and in_flight.result.output_tokens == 20

    assert engine_host.serving is not None and engine_host.serving.name == "no-template"
    with pytest.raises(NoChatTemplateError, match="no-template"):
        engine_host.stream_chat(HELLO, exactly(4))
    raw = engine_host.stream_prompt("Hello", exactly(3))  # raw prompts need no template
    drain(raw)
    assert raw.result.output_tokens == 3

    engine_host.switch(original)
    assert engine_host.serving == original


def test_switch_to_a_broken_spec_falls_back_to_the_old_version(
    engine_host: EngineHost, tmp_path: Path
) -> None:
    original = engine_host.serving
    broken = ModelSpec(name="broken", source=str(tmp_path / "does-not-exist"))
    with pytest.raises(ModelLoadError, match="broken") as caught:
        engine_host.switch(broken, drain=False)
    assert "still serving tiny-test" in str(caught.value)
    assert engine_host.serving == original
    stream = engine_host.stream_chat(HELLO, exactly(4))
    drain(stream)
    assert stream.result.model_version == "tiny-test"


def test_requests_while_loading_or_after_a_failed_load_raise_not_ready(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    release = threading.Event()

    def slow_missing_tokenizer(self: EngineHost, spec: ModelSpec) -> object:
        release.wait(60)
        raise OSError("no tokenizer at that path")

    monkeypatch.setattr(EngineHost, "_tokenizer", slow_missing_tokenizer)
    host = EngineHost.start(
        ModelSpec(name="slow", source=str(tmp_path / "missing")), HostConfig(kv_cache_gib=0.1)
    )
    try:
        loading = host.status()
        assert loading.state == "loading" and loading.model_version == "slow"
        assert 0.0 <= loading.progress < 1.0
        assert host.serving is None
        with pytest.raises(EngineNotReadyError, match="try again"):
            host.stream_chat(HELLO, exactly(4))
        release.set()
        with pytest.raises(ModelLoadError, match="no tokenizer"):
            host.wait_ready(timeout=60)
        assert host.status().state == "failed"
        with pytest.raises(EngineNotReadyError, match="failed to load"):
            host.stream_chat(HELLO, exactly(4))
    finally:
        release.set()
        host.shutdown()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({"temperature": -0.1}, "Temperature", id="negative-temperature"),
        pytest.param({"temperature": 2.5}, "Temperature", id="temperature-too-high"),
        pytest.param({"top_p": 0.0}, "Top-p", id="zero-top-p"),
        pytest.param({"top_p": 1.5}, "Top-p", id="top-p-above-one"),
        pytest.param({"max_tokens": 0}, "Max tokens", id="zero-max-tokens"),
        pytest.param({"max_tokens": 2.5}, "Max tokens", id="fractional-max-tokens"),
        pytest.param({"seed": "abc"}, "Seed", id="text-seed"),
    ],
)
def test_invalid_sampling_settings_raise_a_clear_value_error(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidSamplingError, match=message) as caught:
        SamplingSettings(**settings)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, EngineError)


def test_shutdown_is_idempotent_and_refuses_new_requests(engine_host: EngineHost) -> None:
    # Runs last in this module on purpose: it shuts the module's engine down (the fixture's own shutdown
    # afterwards is one more idempotent call).
    worker = engine_host._worker
    assert worker is not None and worker.thread.is_alive()
    engine_host.shutdown()
    engine_host.shutdown()
    assert not worker.thread.is_alive()  # the engine thread ended after shutting its engine down
    status = engine_host.status()
    assert status.state == "stopped" and engine_host.serving is None
    with pytest.raises(EngineNotReadyError, match="shut down"):
        engine_host.stream_chat(HELLO, exactly(4))
    with pytest.raises(EngineNotReadyError):
        engine_host.switch(ModelSpec(name="other", source="nowhere"))


# A one-word first request in a process of its own: on a CPU with AMX a bfloat16 engine (vLLM's default dtype there)
# whose first step was that short died with SIGILL, ending its process, until the worker asked for AMX itself
# (engine.worker.allow_amx). Its own process, as the permission once asked holds for the whole process.
_SHORT_FIRST_REQUEST = """
import sys
from engine.host import EngineHost
from engine.types import HostConfig, ModelSpec, SamplingSettings

host = EngineHost.start(ModelSpec(name="short-first", source=sys.argv[1]), HostConfig(kv_cache_gib=0.25), wait=True)
try:
    stream = host.stream_prompt("Hello", SamplingSettings(temperature=0.0, max_tokens=1))
    for _ in stream:
        pass
    print("answered", stream.result.output_tokens, flush=True)
finally:
    host.shutdown()
"""


@pytest.mark.engine
def test_a_default_dtype_engine_answers_a_one_word_first_request(tiny_model_dir: Path) -> None:
    from engine import STARTING_ENV

    done = subprocess.run([sys.executable, "-c", _SHORT_FIRST_REQUEST, str(tiny_model_dir)],  # noqa: S603
                          cwd=Path(__file__).resolve().parents[2], env=dict(STARTING_ENV), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"exit status {done.returncode} (-4: SIGILL):\n{done.stderr[-3000:]}"
    assert "answered 1" in done.stdout.splitlines()
    amx = " amx_tile" in Path("/proc/cpuinfo").read_text()
    assert "dtype=torch.bfloat16" in done.stderr or not amx  # what vLLM picks by default on a CPU with AMX
