"""Per-server figures (server backends): which vLLM server answered an exchange, the health sampler's row per
server, the Latency page's Servers table and the engine health's per-server rows, the per-server Prometheus gauges,
and one real vLLM server end to end (the session's ``vllm_server``).

Most tests feed a stand-in engine client (our own seam: a server client's stream and its ``health()``), so the
numbers are known; the last one runs against the real server."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
import streamlit as st
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from console import app_pages
from console.services import chat as chat_svc
from console.services import engine_health as health_svc
from console.services import latency, telemetry
from console.services.context import AppContext
from console.ui import UiSession
from db import audit as audit_q
from db import chat as chat_q
from db import engine_health as health_q
from db import latency_report
from db.chat import ExchangeTimings, TurnRecord
from db.tables import EngineHealthSample, Exchange
from engine.types import EngineHealth, GenerationResult, HostStatus, ModelSpec, ServerHealth
from tests.conftest import console_env

ERR = latency_report.MAX_RELATIVE_ERROR
SERVER_A = "http://10.0.0.1:8000"
SERVER_B = "http://10.0.0.2:8000"
SAMPLING = {"temperature": 0.0, "top_p": 0.95, "max_tokens": 8}


class AnsweredStream:
    """A server client's stream that has answered: two deltas, then its result."""

    def __init__(self, result: GenerationResult) -> None:
        self.result = result
        self.done = False

    def __iter__(self):
        yield from ("Hello", " there")
        self.done = True

    def cancel(self) -> GenerationResult:
        return self.result

    def close(self) -> None:
        self.done = True


class ServerClient:
    """Stand-in for an engine client on the server backend (our seam): every chat is answered by ``server``, and
    ``health()`` returns what the test sets."""

    def __init__(self, server: str | None = SERVER_A, health: EngineHealth | None = None) -> None:
        self.server = server
        self.serving = ModelSpec("v-server", "unused", backend="server", server_urls=(SERVER_A, SERVER_B))
        self.next_health = health or EngineHealth(state="ready", model_version="v-server")

    def status(self) -> HostStatus:
        return HostStatus("ready", "v-server", "ready")

    def health(self) -> EngineHealth:
        return self.next_health

    def stream_chat(self, messages, sampling, *, request_id=None):
        return AnsweredStream(GenerationResult(request_id or "r", "v-server", "Hello there", "stop", 5, 2, None,
                                               0.05, 0.01, 0.06, False, server=self.server))


def _server_health(preemptions_a: int = 7) -> EngineHealth:
    return EngineHealth(state="ready", model_version="v-server", running=2, waiting=1, servers=(
        ServerHealth(SERVER_A, "ready", "v-server", running=2, waiting=1, kv_cache_usage=0.25,
                     preemptions_total=preemptions_a, generation_tokens_per_s=40.0, queue_s_mean=0.012),
        ServerHealth(SERVER_B, "unreachable", error="Cannot connect to the vLLM server at http://10.0.0.2:8000."),
    ))


def _ctx_with(ctx: AppContext, client: ServerClient) -> AppContext:
    return AppContext(ctx.settings, ctx.db, host_factory=lambda: client, clock=ctx.clock)


# --- which server answered ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("server", [SERVER_A, None], ids=["server", "in-process"])
def test_an_exchange_stores_the_server_that_answered_it(ctx, make_user, server):
    user = make_user("uma", "operator")
    turn = chat_svc.start_turn(_ctx_with(ctx, ServerClient(server)), user, None, "Where is my order?", **SAMPLING)
    assert "".join(turn.deltas()) == "Hello there"
    assert turn.outcome is not None and turn.outcome.saved
    with ctx.db.session(readonly=True) as s:
        exchange = s.get(Exchange, turn.outcome.exchange_id)
        assert (exchange.status, exchange.engine_server) == ("ok", server)
        (event,) = list(audit_q.iter_events(s, action="chat.exchange"))
    assert event.details.get("engine_server") == server  # named in the audit event (absent in-process)


# --- the sampler --------------------------------------------------------------------------------------------------


def test_the_sampler_writes_a_row_per_server_beside_the_engines(ctx):
    client = ServerClient(health=_server_health(preemptions_a=7))
    sampler = health_svc.HealthSampler(ctx, client)
    sampler.run_once()
    ctx.clock.advance(seconds=10)
    client.next_health = _server_health(preemptions_a=10)
    record = sampler.run_once()
    assert record.server is None and record.running == 2
    assert [(r.server, r.preemptions) for r in sampler.last_servers] == [(SERVER_A, 3), (SERVER_B, 0)]
    with ctx.db.session(readonly=True) as s:
        rows = list(s.scalars(select(EngineHealthSample).order_by(EngineHealthSample.id)))
        assert [r.server for r in rows] == [None, SERVER_A, SERVER_B] * 2
        first_a, a = rows[1], rows[4]
        assert first_a.preemptions == 0  # first sight: its counter holds the server's whole past
        assert (a.state, a.running, a.waiting, a.kv_cache_usage, a.preemptions, a.preemptions_total) == (
            "ready", 2, 1, 0.25, 3, 10)
        assert (a.generation_tokens_per_s, a.queue_ms, a.error) == (40.0, 12.0, None)
        b = rows[5]
        assert (b.state, b.queue_ms) == ("unreachable", None) and "Cannot connect" in b.error
        # The engine's own reads leave the servers' rows out; the per-server ones take only those.
        assert health_q.latest_sample(s).server is None
        now = ctx.now()
        (bucket,) = health_q.bucketed(s, since=now - timedelta(minutes=5), until=now + timedelta(seconds=1),
                                      bucket_s=3600)
        assert bucket.samples == 2 and bucket.queue_ms is None
        latest = health_q.latest_per_server(s)
        assert [(r.server, r.preemptions_total) for r in latest] == [(SERVER_A, 10), (SERVER_B, 0)]
        series = health_q.bucketed_by_server(s, since=now - timedelta(minutes=5), until=now + timedelta(seconds=1),
                                             bucket_s=3600)
        assert series[SERVER_A][0].queue_ms == 12.0 and series[SERVER_A][0].preemptions == 3
        assert series[SERVER_B][0].not_ready == 2 and series[SERVER_B][0].errors == 2


# --- the Latency page ---------------------------------------------------------------------------------------------


def _store(ctx, user, when, server, *, ttft, e2e=None, status="ok", tokens=10):
    with ctx.db.session() as s:
        conv = chat_q.create_conversation(s, user_id=user.user_id, actor=user.username)
        chat_q.store_turn(s, TurnRecord(
            conversation_id=conv.id, user_id=user.user_id, actor=user.username, model_version="v-server",
            prompt="p", response="r", status=status, created_at=when, finished_at=when, engine_server=server,
            timings=ExchangeTimings(prompt_tokens=5, output_tokens=tokens if status == "ok" else None,
                                    ttft_ms=ttft, itl_ms=None if ttft is None else ttft / 10, e2e_ms=e2e)))


def _seed_servers(ctx, user, now):
    """Server A: four answers (TTFT 100..400 ms, E2E 1..4 s) and an error; server B: one answer; one in-process
    answer; a health sample per server (and the engine's) two minutes ago."""
    when = now - timedelta(minutes=5)
    for i, ttft in enumerate((100.0, 200.0, 300.0, 400.0), start=1):
        _store(ctx, user, when, SERVER_A, ttft=ttft, e2e=1000.0 * i)
    _store(ctx, user, when, SERVER_A, ttft=None, status="error")
    _store(ctx, user, when, SERVER_B, ttft=50.0, e2e=500.0)
    _store(ctx, user, when, None, ttft=20.0, e2e=100.0)
    with ctx.db.session() as s:
        ts = now - timedelta(minutes=2)
        health_q.add_sample(s, health_q.HealthRecord(ts=ts, model_version="v-server", state="ready", running=3))
        health_q.add_sample(s, health_q.HealthRecord(ts=ts, model_version="v-server", state="ready", running=2,
                                                     waiting=1, kv_cache_usage=0.25, queue_ms=12.0, server=SERVER_A))
        health_q.add_sample(s, health_q.HealthRecord(ts=ts, model_version="v-server", state="unreachable",
                                                     error="Cannot connect.", server=SERVER_B))


def test_the_report_gives_per_server_figures_worked_out_by_hand(ctx, make_user, clock):
    op = make_user("olivia", "operator")
    _seed_servers(ctx, op, clock.now)
    report = latency.overview(ctx, op, latency.LatencyFilter(range="last hour"))
    rows = {r["server"]: r for r in report.servers.to_dict("records")}
    assert list(rows) == [SERVER_A, SERVER_B]  # not the in-process exchange
    a = rows[SERVER_A]
    assert (a["requests"], a["errors"]) == (5, 1)
    assert a["ttft_p50_ms"] == pytest.approx(200, rel=ERR) and a["ttft_p95_ms"] == pytest.approx(400, rel=ERR)
    assert a["itl_p50_ms"] == pytest.approx(20, rel=ERR) and a["e2e_p95_s"] == pytest.approx(4.0, rel=ERR)
    assert a["output_tokens_per_s"] == pytest.approx(40 / report.totals["covered_s"].iloc[-1], rel=0.01)
    assert (a["state"], a["running"], a["waiting"], a["kv_cache_pct"], a["queue_ms"]) == ("ready", 2, 1, 25.0, 12.0)
    assert rows[SERVER_B]["state"] == "unreachable" and rows[SERVER_B]["requests"] == 1
    # The same filters as the page's: an error-only view counts server A's error alone.
    errors_only = latency.overview(ctx, op, latency.LatencyFilter(range="last hour", statuses=("error",)))
    assert errors_only.servers.set_index("server").loc[SERVER_A, "requests"] == 1
    # A window with no server traffic and no server samples has no Servers rows.
    clock.advance(days=2)
    assert latency.overview(ctx, op, latency.LatencyFilter(range="last hour")).servers.empty


@pytest.fixture
def page_env(ctx, tmp_path, monkeypatch):
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    yield ctx
    st.cache_resource.clear()


def _page(principal) -> AppTest:
    at = AppTest.from_file(str(app_pages.PAGES_DIR / "latency.py"), default_timeout=60)
    at.session_state["llm_console_session"] = UiSession(principal=principal)
    return at


def _table(at, column: str):
    for frame in at.dataframe:
        if column in frame.value.columns:
            return frame.value
    raise AssertionError(f"no table with a column {column!r}")


def test_the_page_shows_the_servers_table_and_per_server_engine_health(page_env, make_user):
    op = make_user("olivia", "operator")
    _seed_servers(page_env, op, datetime.now(UTC))  # the page runs on the real clock
    at = _page(op)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    headings = [h.value for h in at.subheader]
    assert "Servers" in headings and headings.index("Servers") < headings.index("Engine latency")
    table = _table(at, "TTFT p50 (ms)").set_index("server")
    assert list(table.index) == [SERVER_A, SERVER_B]
    for unit in ("TTFT p95 (ms)", "ITL p50 (ms)", "E2E p95 (s)", "output tokens/s (avg)", "KV cache (%)",
                 "mean queue (ms)"):
        assert unit in table.columns
    a = table.loc[SERVER_A]
    assert (a["requests"], a["errors"], a["state"], a["KV cache (%)"], a["mean queue (ms)"]) == (
        5, 1, "ready", 25.0, 12.0)
    assert a["TTFT p50 (ms)"] == pytest.approx(200, rel=ERR) and a["E2E p95 (s)"] == pytest.approx(4.0, rel=ERR)
    health = _table(at, "KV cache (peak %)").set_index("server")
    assert list(health.index) == [SERVER_A, SERVER_B]
    assert health.loc[SERVER_A, "mean queue (ms)"] == 12.0 and health.loc[SERVER_B, "samples not ready"] == 1
    titles = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("Mean queue time, per server" in spec for spec in titles)
    errors = _table(at, "error")
    assert any(f"server {SERVER_B} unreachable: Cannot connect." in e for e in errors["error"])


def test_a_window_without_server_data_has_no_servers_section(page_env, make_user):
    op = make_user("olivia", "operator")
    now = datetime.now(UTC)
    _store(page_env, op, now - timedelta(minutes=5), None, ttft=20.0, e2e=100.0)  # in-process only
    at = _page(op)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Servers" not in [h.value for h in at.subheader]
    assert not any("TTFT p50 (ms)" in f.value.columns for f in at.dataframe)


# --- Prometheus ---------------------------------------------------------------------------------------------------


def test_telemetry_exports_per_server_gauges_with_a_server_label():
    metrics = telemetry.Telemetry()
    metrics.watch_host(lambda: ServerClient(health=_server_health()))
    endpoint = metrics.serve(0)
    try:
        with urllib.request.urlopen(endpoint.url, timeout=10) as response:  # noqa: S310 (our loopback endpoint)
            text = response.read().decode()
    finally:
        endpoint.stop()
    a = f'model_version="v-server",server="{SERVER_A}"'
    b = f'model_version="v-server",server="{SERVER_B}"'
    assert f"llm_console_server_waiting_requests{{{a}}} 1.0" in text
    assert f"llm_console_server_kv_cache_usage_ratio{{{a}}} 0.25" in text
    assert f"llm_console_server_queue_time_seconds{{{a}}} 0.012" in text
    assert f"llm_console_server_queue_time_seconds{{{b}}}" not in text  # nothing measured: no sample
    assert f'llm_console_server_ready{{{a},state="ready"}} 1.0' in text
    assert f'llm_console_server_ready{{{b},state="unreachable"}} 0.0' in text
    assert 'llm_console_engine_running_requests{model_version="v-server"} 2.0' in text  # the engine's, unchanged


# --- a real vLLM server -------------------------------------------------------------------------------------------


def test_a_chat_through_a_real_vllm_server_records_its_url_and_the_sampler_its_load(ctx, make_user, vllm_server):
    from engine.server_client import ServerEngineClient

    spec = ModelSpec("tiny-server", vllm_server.url, backend="server", server_urls=(vllm_server.url,),
                     server_model="tiny-server")
    op = make_user("olivia", "operator")
    client = ServerEngineClient(spec, api_key=vllm_server.api_key)
    try:
        # The real clock: the exchange is stamped with it, and the page's "last hour" must cover it.
        served = AppContext(ctx.settings, ctx.db, host_factory=lambda: client, clock=lambda: datetime.now(UTC))
        turn = chat_svc.start_turn(served, op, None, "Where is my order?", temperature=0.0, top_p=1.0,
                                   max_tokens=8)
        assert "".join(turn.deltas()) == turn.outcome.text
        assert turn.outcome.saved and turn.outcome.result.output_tokens > 0
        with ctx.db.session(readonly=True) as s:
            exchange = s.get(Exchange, turn.outcome.exchange_id)
            assert (exchange.status, exchange.engine_server) == ("ok", client.urls[0])
            assert exchange.ttft_ms > 0 and exchange.output_tokens == turn.outcome.result.output_tokens
    finally:
        client.shutdown()
    # A fresh client's first look at /metrics covers the server's whole life: our chat's tokens are in it.
    watcher = ServerEngineClient(spec, api_key=vllm_server.api_key)
    try:
        health_svc.HealthSampler(served, watcher).run_once()
    finally:
        watcher.shutdown()
    with ctx.db.session(readonly=True) as s:
        (row,) = list(s.scalars(select(EngineHealthSample).where(EngineHealthSample.server.is_not(None))))
    assert (row.server, row.state, row.model_version, row.error) == (client.urls[0], "ready", "tiny-server", None)
    assert row.generation_tokens_per_s > 0 and row.prompt_tokens_per_s > 0
    report = latency.overview(served, op, latency.LatencyFilter(range="last hour"))
    (figures,) = report.servers.to_dict("records")
    assert (figures["server"], figures["requests"], figures["state"]) == (client.urls[0], 1, "ready")
