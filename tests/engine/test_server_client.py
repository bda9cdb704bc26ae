"""The vLLM server client (engine/server_client.py) against the session's real vLLM OpenAI-compatible server (the
``vllm_server`` fixture: the tiny model served as ``tiny-server``, with an API key): probing, refusals, several
URLs with one that does not answer, per-server health from /metrics, cancelling from another thread. What every
engine client does alike is in test_client_contract.py."""

from __future__ import annotations

import gc
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine import server_client
from engine.errors import BadServerURL, PromptTooLongError, ServerUnavailableError
from engine.server_client import ServerEngineClient, check_base_url, parse_metrics, probe
from engine.types import ChatMessage, ModelSpec, SamplingSettings, ServerOptions
from tests.server_support import RunningServer, free_port

HELLO = [ChatMessage("user", "Where is my order?")]


def exactly(n: int) -> SamplingSettings:
    return SamplingSettings(temperature=0.0, max_tokens=n, ignore_eos=True)


def spec_for(server: RunningServer, *urls: str, model: str | None = None) -> ModelSpec:
    return ModelSpec(name="tiny-v1", source="tiny", backend="server", server_urls=urls or (server.url,),
                     server_model=model or server.name)


@pytest.fixture(scope="module")
def client(vllm_server: RunningServer) -> Iterator[ServerEngineClient]:
    engine = ServerEngineClient.connect(spec_for(vllm_server), ServerOptions(api_key=vllm_server.api_key))
    yield engine
    engine.shutdown()


# --- base URLs (no server needed) ----------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "normalised"), [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
    ("  https://vllm.example.com/v1/ ", "https://vllm.example.com"),
    ("HTTP://router.internal:80/serving/v1", "http://router.internal:80/serving"),
])
def test_a_base_url_is_normalised(given: str, normalised: str) -> None:
    assert check_base_url(given) == normalised


@pytest.mark.parametrize(("given", "says"), [
    ("", "The server URL is required."),
    ("ftp://host:21", "must start with http:// or https://"),
    ("127.0.0.1:8000", "must start with http:// or https://"),
    ("http://", "names no host"),
    ("http://host:8000/?model=x", "must not have a query"),
    ("http://host:8000/#top", "must not have a query"),
    ("http://host:port", "malformed host or port"),
    ("http://host name:8000", "must not contain spaces"),
])
def test_a_malformed_base_url_is_refused_with_a_one_line_reason(given: str, says: str) -> None:
    with pytest.raises(BadServerURL, match=says) as refused:
        check_base_url(given)
    assert isinstance(refused.value, ValueError) and "\n" not in str(refused.value)


def test_credentials_in_a_url_are_refused_without_repeating_them() -> None:
    with pytest.raises(BadServerURL, match="user name or password") as refused:
        check_base_url("https://admin:hunter2secret@vllm.example.com")
    assert "hunter2secret" not in str(refused.value) and "admin" not in str(refused.value)


def test_metrics_are_read_for_the_model_and_summed_over_engines() -> None:
    text = "\n".join([
        '# TYPE vllm:num_requests_running gauge',
        'vllm:num_requests_running{engine="0",model_name="a"} 2.0',
        'vllm:num_requests_running{engine="1",model_name="a"} 1.0',
        'vllm:num_requests_running{engine="0",model_name="b"} 7.0',
        '# TYPE vllm:kv_cache_usage_perc gauge',
        'vllm:kv_cache_usage_perc{engine="0",model_name="a"} 0.25',
        'vllm:kv_cache_usage_perc{engine="1",model_name="a"} 0.5',
        '# TYPE vllm:request_success counter',
        'vllm:request_success_total{finished_reason="stop",model_name="a"} 3.0',
        'vllm:request_success_total{finished_reason="length",model_name="a"} 4.0',
        '# TYPE process_start_time_seconds gauge',
        'process_start_time_seconds 1.7e9',
    ])
    values = parse_metrics(text, "a")
    assert values["vllm:num_requests_running"] == 3.0 and values["vllm:request_success_total"] == 7.0
    assert values["vllm:kv_cache_usage_perc"] == 0.5 and values["process_start_time_seconds"] == 1.7e9
    # A model no sample names (a LoRA adapter counted under its base): every sample counts.
    assert parse_metrics(text, "adapter")["vllm:num_requests_running"] == 10.0


# --- probing a real server -----------------------------------------------------------------------------------


def test_probe_reports_what_the_server_serves(vllm_server: RunningServer, tiny_model_dir: Path) -> None:
    info = probe(vllm_server.url + "/v1/", "tiny-server", api_key=vllm_server.api_key)
    assert info.url == vllm_server.url and info.model == "tiny-server" and info.models == ("tiny-server",)
    assert info.max_model_len == 512 and info.root == str(tiny_model_dir)


def test_probe_names_the_models_a_server_serves_when_the_one_asked_for_is_not(vllm_server: RunningServer) -> None:
    with pytest.raises(ServerUnavailableError, match=r"serves tiny-server; not support-v2\.$"):
        probe(vllm_server.url, "support-v2", api_key=vllm_server.api_key)


def test_probe_says_the_key_was_refused_without_showing_it(vllm_server: RunningServer) -> None:
    with pytest.raises(ServerUnavailableError, match="refused the API key") as wrong:
        probe(vllm_server.url, "tiny-server", api_key="not-the-key-0123456789")
    assert "not-the-key-0123456789" not in str(wrong.value) and vllm_server.url in str(wrong.value)
    with pytest.raises(ServerUnavailableError, match="asks for an API key, and none is set"):
        probe(vllm_server.url, "tiny-server")


def test_probe_of_a_port_where_nothing_listens_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnavailableError, match="cannot be reached") as refused:
        probe(url, "tiny-server")
    assert url in str(refused.value)


class _NotVllm(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"<html>It works!</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_probe_of_a_web_server_that_is_not_vllm_says_so() -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotVllm)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(ServerUnavailableError, match="is not a vLLM \\(OpenAI-compatible\\) server"):
            probe(f"http://127.0.0.1:{httpd.server_address[1]}", "tiny-server")
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_connect_refuses_when_no_server_serves_the_model(vllm_server: RunningServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    spec = spec_for(vllm_server, dead, vllm_server.url, model="support-v2")
    with pytest.raises(ServerUnavailableError) as refused:
        ServerEngineClient.connect(spec, ServerOptions(api_key=vllm_server.api_key))
    message = str(refused.value)
    assert "No vLLM server serves tiny-v1" in message and dead in message and "not support-v2" in message
    assert vllm_server.api_key not in message  # type: ignore[operator]


# --- requests -------------------------------------------------------------------------------------------------


def test_the_api_key_is_never_in_the_clients_repr(client: ServerEngineClient, vllm_server: RunningServer) -> None:
    assert vllm_server.api_key and vllm_server.api_key not in repr(client)
    assert vllm_server.api_key not in repr(ServerOptions(api_key=vllm_server.api_key))


def test_a_request_for_a_model_the_server_does_not_serve_is_refused_before_streaming(
        vllm_server: RunningServer) -> None:
    engine = ServerEngineClient(spec_for(vllm_server, model="support-v2"), api_key=vllm_server.api_key)
    try:
        with pytest.raises(ServerUnavailableError, match="does not serve support-v2"):
            engine.stream_chat(HELLO, exactly(3))
        with pytest.raises(ServerUnavailableError, match="does not serve support-v2"):
            engine.stream_prompt("Where is my order?", exactly(3))
    finally:
        engine.shutdown()


def test_a_wrong_key_on_a_request_says_the_key_was_refused(vllm_server: RunningServer) -> None:
    engine = ServerEngineClient(spec_for(vllm_server), api_key="not-the-key-0123456789")
    try:
        with pytest.raises(ServerUnavailableError, match="refused the API key") as refused:
            engine.stream_chat(HELLO, exactly(3))
        assert "not-the-key-0123456789" not in str(refused.value)
        assert any("refused the API key" in note.message for note in engine.health().recent_errors)
    finally:
        engine.shutdown()


def test_max_tokens_is_capped_to_what_the_context_has_left_as_in_process(client: ServerEngineClient) -> None:
    long = [ChatMessage("user", "Where is my order? " * 80)]  # ~490 of the tiny model's 512 tokens
    stream = client.stream_chat(long, exactly(100))
    text = "".join(stream)
    result = stream.result
    assert text == result.text and not result.aborted and result.finish_reason == "length"
    assert result.output_tokens < 100 and result.prompt_tokens + result.output_tokens == 512


def test_a_raw_prompt_too_long_for_the_context_is_refused_before_streaming(client: ServerEngineClient) -> None:
    with pytest.raises(PromptTooLongError) as refused:
        client.stream_prompt("order " * 600, exactly(4))
    assert refused.value.limit == 512 and refused.value.prompt_tokens >= 512


def test_behind_a_router_without_tokenize_the_servers_own_refusal_is_prompt_too_long(
        vllm_server: RunningServer) -> None:
    engine = ServerEngineClient(spec_for(vllm_server), api_key=vllm_server.api_key)
    try:
        for server in engine._servers:  # as when /tokenize is not there (a router in front of the servers)
            server.tokenize = False
        for submit in (lambda: engine.stream_prompt("order " * 600, exactly(4)),
                       lambda: engine.stream_chat([ChatMessage("user", "order " * 600)], exactly(4))):
            with pytest.raises(PromptTooLongError) as refused:
                submit()
            assert refused.value.limit == 512 and refused.value.prompt_tokens > 512  # vLLM's "at least" count
        engine.check_chat([ChatMessage("user", "order " * 600)])  # nothing to ask: check_chat lets it through
    finally:
        engine.shutdown()


def test_cancel_from_another_thread_ends_the_stream_and_the_server_stops_generating(
        client: ServerEngineClient, vllm_server: RunningServer) -> None:
    before = _generated(vllm_server)
    stream = client.stream_chat(HELLO, exactly(480), request_id="server-cancel-1")
    first = next(stream)
    canceller = threading.Thread(target=client.cancel, args=("server-cancel-1",))
    canceller.start()
    rest = list(stream)  # ends once the cancel closed the connection
    canceller.join()
    result = stream.result
    assert result.aborted and result.finish_reason == "abort" and result.text == first + "".join(rest)
    assert 1 <= result.output_tokens < 480 and result.server == vllm_server.url
    _wait_idle(vllm_server)
    assert _generated(vllm_server) - before < 480  # vLLM aborted the request when its connection closed


def test_an_abandoned_stream_closes_its_connection_and_the_server_stops_generating(
        vllm_server: RunningServer) -> None:
    engine = ServerEngineClient(spec_for(vllm_server), api_key=vllm_server.api_key)
    try:
        before = _generated(vllm_server)
        stream = engine.stream_chat(HELLO, exactly(480))
        assert next(stream)
        del stream  # dropped unfinished, as a page that stops reading does
        gc.collect()
        _wait_idle(vllm_server)
        assert _generated(vllm_server) - before < 480
        assert [server.in_flight for server in engine._servers] == [0]  # its slot was given back
    finally:
        engine.shutdown()


def test_several_urls_skip_one_that_does_not_answer_and_health_names_it(vllm_server: RunningServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    engine = ServerEngineClient(spec_for(vllm_server, dead, vllm_server.url), api_key=vllm_server.api_key,
                                health_interval_s=3600.0)
    try:
        results = []
        for i in range(3):  # the first goes to the dead URL (listed first), fails to connect, and moves on
            stream = engine.stream_chat([ChatMessage("user", f"Question {i}?")], exactly(3))
            assert len("".join(stream)) > 0
            results.append(stream.result)
        assert [r.server for r in results] == [vllm_server.url] * 3 and not any(r.aborted for r in results)
        status = engine.status()
        assert status.ready and "1 of 2" in status.message
        health = engine.health()
        assert health.state == "ready" and [s.url for s in health.servers] == [dead, vllm_server.url]
        down, up = health.servers
        assert down.state == "unreachable" and dead in (down.error or "") and "cannot be reached" in (down.error or "")
        assert up.state == "ready" and up.error is None and up.model == "tiny-server"
    finally:
        engine.shutdown()


def test_only_dead_urls_make_the_client_dead_with_a_message_naming_them(vllm_server: RunningServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    engine = ServerEngineClient(spec_for(vllm_server, dead), api_key=vllm_server.api_key)
    try:
        status = engine.status()
        assert status.state == "dead" and dead in status.message and engine.serving is None
        with pytest.raises(ServerUnavailableError, match="cannot be reached") as refused:
            engine.stream_chat(HELLO, exactly(3))
        assert dead in str(refused.value)
        health = engine.health()
        assert health.state == "dead" and health.servers[0].state == "unreachable"
    finally:
        engine.shutdown()


def test_health_figures_grow_with_requests(client: ServerEngineClient, vllm_server: RunningServer,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_client, "HEALTH_CACHE_S", 0.0)  # every look asks the server
    before = client.health()
    streams = [client.stream_chat([ChatMessage("user", f"Order {i}?")], exactly(7)) for i in range(2)]
    for stream in streams:
        list(stream)
    _wait_idle(vllm_server)
    after = client.health()
    (server,) = after.servers
    assert after.state == "ready" and server.url == vllm_server.url and server.state == "ready"
    assert after.generation_tokens_total - before.generation_tokens_total >= 14
    assert after.requests_finished_total - before.requests_finished_total >= 2
    assert after.prompt_tokens_total - before.prompt_tokens_total >= sum(s.result.prompt_tokens for s in streams)
    assert server.queue_s_mean is not None and server.queue_s_mean >= 0.0  # requests finished in the window
    assert server.window_s > 0 and server.generation_tokens_per_s > 0 and after.generation_tokens_per_s > 0
    assert after.running == 0 and 0.0 <= after.kv_cache_usage <= 1.0


def test_a_request_id_in_use_is_refused(client: ServerEngineClient) -> None:
    stream = client.stream_chat(HELLO, exactly(50), request_id="server-dup-1")
    try:
        with pytest.raises(Exception, match="already in use"):
            client.stream_chat(HELLO, exactly(3), request_id="server-dup-1")
    finally:
        stream.cancel()
    again = client.stream_chat(HELLO, exactly(2), request_id="server-dup-1")  # free once the first ended
    assert "".join(again) == again.result.text and again.result.output_tokens == 2


def test_a_shut_down_client_cancels_its_streams(vllm_server: RunningServer) -> None:
    engine = ServerEngineClient(spec_for(vllm_server), api_key=vllm_server.api_key)
    stream = engine.stream_chat(HELLO, exactly(300))
    first = next(stream)
    engine.shutdown()
    rest = list(stream)
    assert stream.result.aborted and stream.result.text == first + "".join(rest)
    assert engine.status().state == "stopped"


# --- helpers --------------------------------------------------------------------------------------------------


def _metric(server: RunningServer, name: str) -> float:
    values = parse_metrics(httpx.get(f"{server.url}/metrics", timeout=10).text, server.name)
    return values.get(name, 0.0)


def _generated(server: RunningServer) -> float:
    return _metric(server, "vllm:generation_tokens_total")


def _wait_idle(server: RunningServer, timeout_s: float = 60.0) -> None:
    """Until the server runs no request (its counters are then final); not a timing assertion."""
    deadline = time.monotonic() + timeout_s
    while _metric(server, "vllm:num_requests_running") > 0 or _metric(server, "vllm:num_requests_waiting") > 0:
        assert time.monotonic() < deadline, "the server kept running requests"
        time.sleep(0.1)

