"""The engine client contract: every implementation of :class:`engine.client.EngineClient` behaves alike.

Each test runs against every entry of ``IMPLEMENTATIONS``, on the tiny model; one engine per implementation is
shared by the module (starts are expensive); "server" is a client of the session's vLLM OpenAI-compatible server
(the ``vllm_server`` fixture), "managed-server" starts its own. A new implementation is one more entry there. The last test shuts the shared client
down, so it stays last (for "server" that closes the client, not the shared server).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.child_client import ChildEngineClient
from engine.client import EngineClient
from engine.errors import EmptyPromptError, EngineNotReadyError, PromptTooLongError
from engine.host import EngineHost
from engine.managed import ManagedServerClient
from engine.server_client import ServerEngineClient
from engine.types import (
    ChatMessage,
    EngineHealth,
    HostConfig,
    HostStatus,
    ModelSpec,
    SamplingSettings,
    ServerOptions,
)

pytestmark = pytest.mark.engine  # every test here talks to a real engine (one of them in a child process)

HELLO = [ChatMessage("system", "You are a support agent."), ChatMessage("user", "Where is my order?")]
TOO_LONG = [ChatMessage("user", "Where is my order? " * 400)]  # the tiny model's context holds 512 tokens
CONFIG = HostConfig(kv_cache_gib=0.25, drain_timeout_s=10.0)



def _server_client(spec: ModelSpec, request: pytest.FixtureRequest) -> EngineClient:
    server = request.getfixturevalue("vllm_server")
    spec = dataclasses.replace(spec, backend="server", server_urls=(server.url,), server_model=server.name)
    return ServerEngineClient.connect(spec, ServerOptions(api_key=server.api_key))


def _managed_client(spec: ModelSpec, request: pytest.FixtureRequest) -> EngineClient:
    log_dir = request.getfixturevalue("tmp_path_factory").mktemp("managed-servers")
    return ManagedServerClient.start(dataclasses.replace(spec, backend="managed-server"), CONFIG,
                                     ServerOptions(log_dir=str(log_dir)))


IMPLEMENTATIONS: dict[str, Callable[[ModelSpec, pytest.FixtureRequest], EngineClient]] = {
    "in-process": lambda spec, _: EngineHost.start(spec, CONFIG, wait=True),
    "child-process": lambda spec, _: ChildEngineClient.start(spec, CONFIG),
    "server": _server_client,
    "managed-server": _managed_client,
}


@pytest.fixture(scope="module", params=list(IMPLEMENTATIONS))
def client(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Iterator[EngineClient]:
    spec = ModelSpec(name=f"tiny-{request.param}", source=str(tiny_model_dir), engine_args={"enforce_eager": True})
    engine = IMPLEMENTATIONS[request.param](spec, request)
    yield engine
    engine.shutdown()


def exactly(n: int) -> SamplingSettings:
    """Sampling that always produces exactly ``n`` tokens (the tiny model may emit EOS at any time)."""
    return SamplingSettings(temperature=0.0, max_tokens=n, ignore_eos=True)


def test_it_is_an_engine_client_serving_its_version(client: EngineClient) -> None:
    assert isinstance(client, EngineClient)
    assert client.serving is not None and client.serving.name.startswith("tiny-")
    status = client.status()
    assert isinstance(status, HostStatus) and status.ready and status.model_version == client.serving.name


def test_a_chat_streams_deltas_that_join_to_the_result_with_counts_and_ordered_timings(client: EngineClient) -> None:
    stream = client.stream_chat(HELLO, exactly(12), request_id="contract-chat-1")
    assert stream.request_id == "contract-chat-1" and not stream.done
    deltas = list(stream)
    result = stream.result
    assert stream.done and len(deltas) >= 1 and all(deltas)
    assert "".join(deltas) == result.text
    assert result.request_id == "contract-chat-1" and result.model_version == client.serving.name  # type: ignore[union-attr]
    assert result.output_tokens == 12 and result.prompt_tokens > 0
    assert result.finish_reason == "length" and not result.aborted
    assert result.ttft_s is not None and result.e2e_s is not None and result.mean_itl_s is not None
    assert 0.0 < result.ttft_s <= result.e2e_s
    if isinstance(client, ServerEngineClient):
        # A server reports queue time only in aggregate (/metrics); the result names the server that answered.
        assert result.queue_s is None and result.server in client.urls
    else:
        assert result.queue_s is not None and 0.0 <= result.queue_s <= result.ttft_s and result.server is None
    assert result.mean_itl_s >= 0.0 and result.tokens_per_s is not None and result.tokens_per_s > 0


def test_requests_stream_at_once_and_a_raw_prompt_streams_too(client: EngineClient) -> None:
    results: dict[int, tuple[str, object]] = {}
    errors: list[BaseException] = []

    def chat(i: int) -> None:
        try:
            stream = client.stream_chat([ChatMessage("user", f"Question number {i}?")], exactly(5))
            results[i] = ("".join(stream), stream.result)
        except BaseException as exc:  # reported below; a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 4
    assert len({r.request_id for _, r in results.values()}) == 4  # type: ignore[attr-defined]
    for text, result in results.values():
        assert text == result.text and result.output_tokens == 5 and not result.aborted  # type: ignore[attr-defined]
    raw = client.stream_prompt("Where is my order?", exactly(6))
    assert "".join(raw) == raw.result.text and raw.result.output_tokens == 6


def test_cancel_by_request_id_ends_the_stream_with_what_was_generated(client: EngineClient) -> None:
    stream = client.stream_chat(HELLO, exactly(300))
    first = next(stream)
    client.cancel(stream.request_id)
    rest = list(stream)
    result = stream.result
    assert result.aborted and result.finish_reason == "abort"
    assert result.text == first + "".join(rest) and result.text.startswith(first)
    assert 1 <= result.output_tokens < 300
    assert stream.cancel() is result  # cancelling again changes nothing
    client.cancel("no-such-request")  # unknown ids are ignored


def test_cancelling_the_stream_mid_way_aborts_it_and_the_engine_serves_the_next_request(client: EngineClient) -> None:
    stream = client.stream_chat(HELLO, exactly(300))
    first = next(stream)
    result = stream.cancel()
    assert result.aborted and result.finish_reason == "abort"
    assert first and result.text.startswith(first) and 1 <= result.output_tokens < 300
    assert list(stream) == []  # a cancelled stream is finished
    follow_up = client.stream_chat(HELLO, exactly(5))
    assert "".join(follow_up) == follow_up.result.text and follow_up.result.output_tokens == 5
    assert not follow_up.result.aborted


def test_health_is_data_with_the_engines_load_and_counters(client: EngineClient) -> None:
    health = client.health()
    assert isinstance(health, EngineHealth)
    assert health.state == "ready" and health.model_version == client.serving.name  # type: ignore[union-attr]
    assert health.requests_finished_total >= 1 and health.generation_tokens_total >= 5
    assert health.prompt_tokens_total > 0 and health.running >= 0 and health.waiting >= 0
    assert 0.0 <= health.kv_cache_usage <= 1.0 and health.window_s > 0 and health.at > 0
    assert isinstance(health.recent_errors, tuple)


@pytest.mark.parametrize(("messages", "error"), [
    pytest.param(TOO_LONG, PromptTooLongError, id="too-long"),
    pytest.param([ChatMessage("user", "  \n ")], EmptyPromptError, id="empty"),
])
def test_a_refused_request_raises_the_same_error_type_before_anything_streams(
    client: EngineClient, messages: list[ChatMessage], error: type[Exception]
) -> None:
    with pytest.raises(error) as submitted:
        client.stream_chat(messages, exactly(4))
    with pytest.raises(error) as checked:
        client.check_chat(messages)
    assert str(checked.value) == str(submitted.value)
    if isinstance(submitted.value, PromptTooLongError):
        assert submitted.value.limit == 512 and submitted.value.prompt_tokens >= 512 and "512" in str(submitted.value)
    client.check_chat(HELLO)  # one that fits passes


def test_shutdown_is_idempotent_and_refuses_new_requests(client: EngineClient) -> None:
    # Last on purpose: it shuts the module's client down (the fixture's own shutdown is one more call).
    client.shutdown()
    client.shutdown()
    assert client.status().state == "stopped" and client.serving is None
    with pytest.raises(EngineNotReadyError, match="shut down"):
        client.stream_chat(HELLO, exactly(4))
