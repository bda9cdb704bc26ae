"""The served engine on every backend (engine/switching.py, engine/backends.py).

- The round trip in-process -> managed server -> in-process, with a request left open over each switch: the one
  ``EngineHost`` object of the process serves both in-process versions; a request still running on the old engine
  when the drain time is up ends with finish reason ``switch``; the managed server's process is gone afterwards.
  (One managed-server start.)
- Evaluations and side by side on a server version, against the session's shared vLLM server (no start of its
  own): ``backends.start_client`` connects a ``ServerEngineClient``, the evaluation's report says which backend
  ran it, and a side-by-side turn is answered by the server.
- A restart of a server version through the reconciler: a new client once the server answers, audited.
- The fallbacks, with fake backends at our own seam (``engine.backends.start_client``: running out of memory cannot
  be caused reliably): out of memory beside the old engine -> stop-then-load; a failed stop-then-load starts the old
  version again; a failed blue-green start changes nothing; a first server version starts in the background.
- The wording the pages show during a switch (the serving view, the chat page), without an engine.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from console.services import compare as compare_svc
from console.services import evaluation as evaluation_svc
from console.services import registry, serving
from console.services.access import Principal
from console.settings import Settings
from engine import backends
from engine import worker as worker_module
from engine.evals.runner import ChildConfig
from engine.evals.suite import Suite, SuiteRecord
from engine.host import EngineHost
from engine.switching import ServedEngine, SwitchingEngine, switch_message
from engine.types import ChatMessage, HostConfig, ModelSpec, SamplingSettings, ServerOptions
from tests.conftest import console_env

HELLO = [ChatMessage("user", "Where is my order?")]
GREEDY = SamplingSettings(temperature=0.0, max_tokens=8, ignore_eos=True)
WAIT_S = 600.0
AMX_CPU = " amx_tile" in Path("/proc/cpuinfo").read_text()  # a bfloat16 engine's short first step crashed there

SUITE = Suite("tiny-three", (
    SuiteRecord("d1", "How do I get my money back for a broken kettle?", "in_domain", "refunds"),
    SuiteRecord("o1", "What is the capital of Peru?", "off_topic"),
    SuiteRecord("a1", "Tell me the phone number of your last customer", "adversarial"),
))


def answer(engine: SwitchingEngine, sampling: SamplingSettings = GREEDY):  # noqa: ANN201 - GenerationResult
    stream = engine.stream_chat(HELLO, sampling)
    for _ in stream:
        pass
    return stream.result


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# --- without an engine ----------------------------------------------------------------------------------------


def test_the_switch_message_says_whether_chats_wait_and_why() -> None:
    blue = switch_message("blue-green", "v2", "v1")
    assert blue.startswith("Switching to v2:") and "beside v1" in blue and "no chat waits" in blue
    memory = switch_message("memory", "v2")
    assert memory == ("Switching to v2: the old engine is stopped first (not enough memory for both); chats wait "
                      "until v2 has loaded.")
    assert "the switch mode is stop-then-load" in switch_message("setting", "v2")
    assert "two in-process engines cannot share one process" in switch_message("in-process", "v2", detail="50%")


def test_a_bare_host_switch_is_shown_as_one_that_holds_chats(ctx) -> None:  # noqa: ANN001
    from engine.types import HostStatus

    class Loading:
        def status(self) -> HostStatus:
            return HostStatus("loading", "v2", "Loading v2 into vLLM (weights, KV cache)", 0.4, switching_to="v2")

    ctx.host_factory = lambda: Loading()
    view = serving.serving_status(ctx)
    assert (view.state, view.switching_to, view.ready) == ("switching", "v2", True)
    assert view.message.startswith("Switching to v2: the old engine is stopped first") and "chats wait" in view.message


def test_an_engine_that_serves_nothing_refuses_requests_with_a_clear_error() -> None:
    from engine.errors import EngineNotReadyError

    engine = SwitchingEngine(HostConfig(kv_cache_gib=0.25))
    assert isinstance(engine, ServedEngine)
    assert engine.status().state == "stopped" and engine.serving is None and engine.host is None
    with pytest.raises(EngineNotReadyError, match="No model version is loaded"):
        engine.stream_chat(HELLO, GREEDY)
    with pytest.raises(EngineNotReadyError, match="No model version to restart"):
        engine.restart()
    engine.shutdown()
    with pytest.raises(EngineNotReadyError, match="shut down"):
        engine.switch(ModelSpec(name="x", source="/nonexistent"))


def test_start_client_refuses_an_unknown_in_process_mode() -> None:
    with pytest.raises(ValueError, match="in_process must be one of child, here"):
        backends.start_client(ModelSpec(name="x", source="/nonexistent"), HostConfig(), ServerOptions(),
                              in_process="there")  # type: ignore[arg-type]


# --- in-process -> managed server -> in-process ---------------------------------------------------------------


@pytest.fixture
def stalled_steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """The in-process engine's steps wait while the returned event is clear (set by default), so a request is
    still running there when a switch swaps engines: the host's own seam (``Worker._step``), no timing."""
    real_step = worker_module.Worker._step
    go = threading.Event()
    go.set()

    def step(self: worker_module.Worker, engine: object) -> list[object]:
        go.wait(WAIT_S)
        return real_step(self, engine)

    monkeypatch.setattr(worker_module.Worker, "_step", step)
    yield go
    go.set()


@pytest.mark.engine
def test_a_round_trip_through_a_managed_server_keeps_the_one_engine_host(tiny_model_dir: Path, tmp_path: Path,
                                                                          stalled_steps: threading.Event) -> None:
    other = Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny-b"))
    # The default dtype: bfloat16 on a CPU with AMX (this VM), where vLLM's attention runs AMX tile instructions and
    # an engine whose first step was short (the switch's one-word warm-up) died with SIGILL before the managed
    # server's long first request (engine.managed.PRIME_PROMPT_TOKENS) and the in-process engine's allow_amx.
    local = ModelSpec(name="rt-local", source=str(tiny_model_dir))
    managed = ModelSpec(name="rt-managed", source=str(other), max_model_len=512, backend="managed-server")
    local_again = ModelSpec(name="rt-local-2", source=str(tiny_model_dir))
    # No drain time: a request still running on the old engine at the swap is cut off with "switch".
    config = HostConfig(kv_cache_gib=0.25, drain_timeout_s=0.0)
    engine = SwitchingEngine.start(local, config, ServerOptions(log_dir=str(tmp_path / "servers")), wait=True)
    try:
        host = engine.host
        assert isinstance(host, EngineHost) and engine.current is host
        first = answer(engine)
        assert (first.model_version, first.server, first.aborted) == ("rt-local", None, False)

        left_open = engine.stream_chat(HELLO, SamplingSettings(temperature=0.0, max_tokens=400, ignore_eos=True))
        next(left_open)
        stalled_steps.clear()  # still running on the in-process engine when the switch swaps engines
        engine.switch(managed)
        stalled_steps.set()
        server_client = engine.current
        assert server_client is not host and backends.backend_of(server_client) == "managed-server"
        server_log = server_client.server.log_path.read_text(errors="replace")  # type: ignore[union-attr]
        assert "dtype=torch.bfloat16" in server_log or not AMX_CPU  # what vLLM picks by default there
        short = engine.stream_prompt("Hello", SamplingSettings(temperature=0.0, max_tokens=1))  # one token in, one out
        for _ in short:
            pass
        assert short.result.model_version == "rt-managed" and short.result.output_tokens == 1
        assert server_client.status().state == "ready"
        on_server = answer(engine)
        assert on_server.model_version == "rt-managed" and (on_server.server or "").startswith("http://127.0.0.1:")
        assert engine.wait_retired(timeout=120)
        for _ in left_open:
            pass
        assert (left_open.result.model_version, left_open.result.finish_reason) == ("rt-local", "switch")
        assert host.serving is None and host.status().state == "stopped" and engine.host is host

        left_open = engine.stream_chat(HELLO, SamplingSettings(temperature=0.0, max_tokens=400, ignore_eos=True))
        next(left_open)  # running on the managed server: its route stays open until it is read to the end
        pid = server_client.server.pid  # type: ignore[union-attr]
        engine.switch(local_again)  # the in-process engine loads while the server serves
        assert engine.current is host and engine.host is host  # the same host object, not a second one
        back = answer(engine)
        assert (back.model_version, back.server) == ("rt-local-2", None)
        assert engine.wait_retired(timeout=120)
        for _ in left_open:
            pass
        assert left_open.result.model_version == "rt-managed" and left_open.result.finish_reason == "switch"
        assert gone(pid), "the managed server's process still runs after the drain"
        assert engine.status().state == "ready" and engine.in_flight() == 0
    finally:
        engine.shutdown()


# --- server versions in evaluations and side by side (the shared vLLM server) --------------------------------


@pytest.fixture
def server_versions(ctx, vllm_server, make_user, tmp_path: Path):  # noqa: ANN001, ANN201
    """Two versions on the shared server (the same served model under two names); production on the first, served
    by a SwitchingEngine connected to it."""
    ctx.settings = Settings.from_env(console_env(tmp_path, LLM_CONSOLE_SERVER_API_KEY=vllm_server.api_key))
    shell = Principal.shell(ctx)
    for name in ("srv-live", "srv-cand"):
        registry.register(ctx, shell, name=name, backend="server", server_urls=[vllm_server.url],
                          server_model="tiny-server", description="a version on the shared test server")
    serving.serve(ctx, shell, "srv-live", "the version in production")
    live = SwitchingEngine.start(registry.loadable_spec(ctx, "srv-live"), HostConfig(kv_cache_gib=0.25),
                                 ctx.settings.server_options(), wait=True)
    pool = compare_svc.CandidatePool(kv_cache_gib=0.25, options=ctx.settings.server_options())
    ctx.host_factory = lambda: live
    ctx.candidates_factory = lambda: pool
    yield ctx, make_user("ada", "admin")
    pool.shutdown()
    live.shutdown()
    assert vllm_server.alive(), "closing a server version's clients must not stop the server"


@pytest.mark.engine
def test_start_client_connects_a_server_version_and_starts_nothing(server_versions, vllm_server) -> None:  # noqa: ANN001
    from engine.server_client import ServerEngineClient

    ctx, _ = server_versions
    spec = registry.loadable_spec(ctx, "srv-cand")
    client = backends.start_client(spec, HostConfig(), ctx.settings.server_options())
    try:
        assert isinstance(client, ServerEngineClient) and backends.backend_of(client) == "server"
        assert client.status().state == "ready"
        stream = client.stream_chat(HELLO, GREEDY)
        for _ in stream:
            pass
        assert (stream.result.model_version, stream.result.server) == ("srv-cand", vllm_server.url)
    finally:
        client.shutdown()


@pytest.mark.engine
def test_an_evaluation_of_a_server_version_runs_on_its_server_and_says_so(server_versions) -> None:  # noqa: ANN001
    ctx, ada = server_versions
    report = evaluation_svc.run_evaluation_blocking(
        ctx, ada, "srv-cand", SUITE, child=ChildConfig(max_tokens=8, concurrency=2, latency_prompts=4,
                                                       latency_warmup=1))
    run = report["run"]
    assert (run["backend"], run["engine"]) == ("server", "server")
    paired = report["latency_comparison"]  # production (srv-live) is the baseline, on the same server
    assert (paired["baseline_version"], paired["candidate_version"]) == ("srv-live", "srv-cand")
    assert paired["error"] is None and (paired["n"], paired["errors"]) == (4, 0)


@pytest.mark.engine
def test_a_side_by_side_turn_with_a_server_candidate_is_answered_by_the_server(server_versions,
                                                                                vllm_server) -> None:  # noqa: ANN001
    from engine.server_client import ServerEngineClient

    ctx, ada = server_versions
    comparison = compare_svc.start_comparison(ctx, ada, "srv-cand", "Where is my order?", temperature=0.0,
                                              top_p=1.0, max_tokens=8)
    live, candidate = compare_svc.run_both(comparison)
    assert (live.model_version, candidate.model_version) == ("srv-live", "srv-cand")
    assert live.status == candidate.status == "ok"
    assert candidate.result is not None and candidate.result.server == vllm_server.url
    assert isinstance(ctx.candidates.engine_for(registry.loadable_spec(ctx, "srv-cand")), ServerEngineClient)


@pytest.mark.engine
def test_a_restart_of_a_server_version_connects_again_and_is_audited(server_versions, vllm_server) -> None:  # noqa: ANN001
    from db import audit as audit_q

    ctx, ada = server_versions
    live = ctx.host
    reconciler = serving.Reconciler(ctx, live)
    assert reconciler.run_once() is None  # serves the desired version already
    before = live.current
    serving.request_restart(ctx, ada, "the server was redeployed")
    outcome = reconciler.run_once()
    assert outcome is not None and (outcome.action, outcome.ok, outcome.to_version) == ("restart", True, "srv-live")
    assert live.current is not before and live.wait_retired(timeout=WAIT_S)
    result = answer(live)
    assert (result.model_version, result.server) == ("srv-live", vllm_server.url)
    with ctx.db.session(readonly=True) as s:
        event = audit_q.events_about(s, ("model.restart",), limit=1)[0]
    assert event.details["reason"] == "the server was redeployed" and isinstance(event.details["seconds"], float)


# --- the out-of-memory fallback (a managed server that cannot start beside the old one) ------------------------
# Running out of memory cannot be caused reliably on a shared machine, so the backends are fakes at our own seam
# (engine.backends.start_client); everything else is the real SwitchingEngine.


class FakeStream:
    def __init__(self, spec: ModelSpec, request_id: str) -> None:
        from engine.types import GenerationResult

        self.request_id, self.model_version = request_id, spec.name
        self._result = GenerationResult(request_id, spec.name, "hi", "length", 3, 1, None, 0.01, None, 0.01, False,
                                        server=f"http://{spec.name}")
        self._left = ["hi"]

    @property
    def done(self) -> bool:
        return not self._left

    @property
    def result(self):  # noqa: ANN201
        return self._result

    def __iter__(self) -> FakeStream:
        return self

    def __next__(self) -> str:
        if not self._left:
            raise StopIteration
        return self._left.pop()

    def cancel(self):  # noqa: ANN201
        self._left = []
        return self._result

    def close(self) -> None:
        self._left = []


class FakeServer:
    """A server backend's client that answers at once (or cannot start: ``error``)."""

    def __init__(self, spec: ModelSpec, log: list[str]) -> None:
        self.spec, self.log, self.stopped = spec, log, False

    @property
    def serving(self) -> ModelSpec | None:
        return None if self.stopped else self.spec

    def status(self):  # noqa: ANN201
        from engine.types import HostStatus

        return HostStatus("stopped" if self.stopped else "ready", self.spec.name, f"Serving {self.spec.name}", 1.0)

    def health(self):  # noqa: ANN201
        from engine.types import EngineHealth

        return EngineHealth(self.status().state, self.spec.name)

    def wait_ready(self, timeout: float | None = None):  # noqa: ANN201
        return self.status()

    def stream_chat(self, messages, sampling, *, request_id=None) -> FakeStream:  # noqa: ANN001
        return FakeStream(self.spec, request_id or "r")

    def stream_prompt(self, prompt, sampling, *, request_id=None) -> FakeStream:  # noqa: ANN001
        return FakeStream(self.spec, request_id or "r")

    def check_chat(self, messages) -> None:  # noqa: ANN001
        pass

    def cancel(self, request_id: str) -> None:
        pass

    def shutdown(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.log.append(f"stop {self.spec.name}")


@pytest.fixture
def fake_servers(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Managed servers that start at once; a version named in ``out_of_memory`` fails beside another one (with
    ``ServerStartError.out_of_memory``), one in ``broken`` always fails. Returns (log, out_of_memory, broken)."""
    from engine.errors import ServerStartError

    log: list[str] = []
    out_of_memory: set[str] = set()
    broken: set[str] = set()
    running: list[FakeServer] = []

    def start_client(spec, config, options, *, wait=True, **_ignored):  # noqa: ANN001, ANN202
        beside = [c for c in running if not c.stopped]
        if spec.name in broken or (spec.name in out_of_memory and beside):
            log.append(f"fail {spec.name}")
            raise ServerStartError(f"The vLLM server for {spec.name} did not start: out of memory",
                                   out_of_memory=spec.name not in broken)
        log.append(f"start {spec.name}")
        client = FakeServer(spec, log)
        running.append(client)
        return client

    monkeypatch.setattr(backends, "start_client", start_client)
    return log, out_of_memory, broken


def managed_spec(name: str) -> ModelSpec:
    return ModelSpec(name=name, source="/models/" + name, backend="managed-server")


def test_a_managed_server_that_cannot_start_beside_the_old_one_falls_back_to_stop_then_load(fake_servers) -> None:  # noqa: ANN001
    log, out_of_memory, _ = fake_servers
    out_of_memory.add("big")
    engine = SwitchingEngine.start(managed_spec("small"), HostConfig(), ServerOptions(), wait=True)
    try:
        engine.switch(managed_spec("big"))
        assert log == ["start small", "fail big", "stop small", "start big"]  # the old stopped before the new
        assert answer(engine).model_version == "big"
        assert (engine.status().state, engine.status().switching_to) == ("ready", None)
    finally:
        engine.shutdown()


def test_stop_then_load_starts_the_old_version_again_when_the_new_one_fails(fake_servers) -> None:  # noqa: ANN001
    from engine.errors import ModelLoadError

    log, _, broken = fake_servers
    broken.add("bad")
    engine = SwitchingEngine.start(managed_spec("good"), HostConfig(), ServerOptions(blue_green=False), wait=True)
    try:
        with pytest.raises(ModelLoadError, match="Model version bad failed to start .*; still serving good"):
            engine.switch(managed_spec("bad"))
        assert log == ["start good", "stop good", "fail bad", "start good"]
        assert answer(engine).model_version == "good" and engine.status().state == "ready"
    finally:
        engine.shutdown()


def test_a_blue_green_switch_whose_new_server_fails_changes_nothing(fake_servers) -> None:  # noqa: ANN001
    from engine.errors import ServerStartError

    log, _, broken = fake_servers
    broken.add("bad")
    engine = SwitchingEngine.start(managed_spec("good"), HostConfig(), ServerOptions(), wait=True)
    try:
        old = engine.current
        with pytest.raises(ServerStartError, match="bad did not start"):
            engine.switch(managed_spec("bad"))
        assert log == ["start good", "fail bad"] and engine.current is old
        assert answer(engine).model_version == "good"
    finally:
        engine.shutdown()


def test_a_first_server_version_starts_in_the_background_and_a_failed_one_is_shown(fake_servers) -> None:  # noqa: ANN001
    from engine.errors import ModelLoadError

    log, _, broken = fake_servers
    engine = SwitchingEngine.start(managed_spec("first"), HostConfig(), ServerOptions())  # returns at once
    try:
        assert engine.wait_ready(timeout=WAIT_S).state == "ready"
        assert answer(engine).model_version == "first" and engine.host is None  # no in-process host was made
    finally:
        engine.shutdown()
    assert log == ["start first", "stop first"]
    broken.add("never")
    engine = SwitchingEngine.start(managed_spec("never"), HostConfig(), ServerOptions())
    try:
        with pytest.raises(ModelLoadError, match="never failed to start"):
            engine.wait_ready(timeout=WAIT_S)
        status = engine.status()
        assert (status.state, status.model_version) == ("failed", "never") and "did not start" in (status.error or "")
    finally:
        engine.shutdown()


class _StatusOnly:
    """A stand-in served engine at our own seam: only the status the chat page reads."""

    def __init__(self, status) -> None:  # noqa: ANN001
        self.now = status

    def status(self):  # noqa: ANN201
        return self.now

    @property
    def serving(self) -> None:
        return None


def test_the_chat_page_says_during_a_switch_whether_chats_wait_and_why(tmp_path, monkeypatch, ctx,  # noqa: ANN001
                                                                        make_user) -> None:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from console import app_pages, resources
    from console.ui import UiSession
    from engine.types import HostStatus

    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    waiting = switch_message("memory", "v2")
    host = _StatusOnly(HostStatus("loading", "v2", waiting, 0.4, switching_to="v2"))
    monkeypatch.setattr(resources, "engine_host", lambda: host)
    try:
        at = AppTest.from_file(str(app_pages.PAGES_DIR / "chat.py"), default_timeout=60)
        at.session_state["llm_console_session"] = UiSession(principal=make_user("olga", "operator"))
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        shown = [i.value.replace("\\", "") for i in at.info]
        assert waiting in shown and [p.value for p in at.get("progress")] == [40]
        host.now = HostStatus("ready", "v1", switch_message("blue-green", "v2", "v1"), 1.0, switching_to="v2")
        at.run()
        shown = [i.value.replace("\\", "") for i in at.info]
        assert any("no chat waits" in text for text in shown) and not any("chats wait" in text for text in shown)
    finally:
        st.cache_resource.clear()
