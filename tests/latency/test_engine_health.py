"""Engine health: vLLM's stats as the engine thread records them, the host's health(), the sampler that keeps them
as history (real SQLite), and the bucketed history the dashboard reads."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from console.services import engine_health as health_svc
from console.services.errors import AccessDenied, InvalidInput
from db.tables import EngineHealthSample
from engine.host import EngineHost
from engine.stats import EngineStats
from engine.types import ChatMessage, EngineErrorNote, EngineHealth, SamplingSettings

HELLO = [ChatMessage("user", "Where is my order?")]


# --- EngineStats: what vLLM's LLMEngine.step() hands its stat logger ---------------------------------------------


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def scheduler(running: int, waiting: int, kv: float) -> SimpleNamespace:
    return SimpleNamespace(num_running_reqs=running, num_waiting_reqs=waiting, kv_cache_usage=kv)


def iteration(prompt: int = 0, generation: int = 0, preempted: int = 0, finished=()) -> SimpleNamespace:
    return SimpleNamespace(num_prompt_tokens=prompt, num_generation_tokens=generation, num_preempted_reqs=preempted,
                           finished_requests=list(finished))


def test_stats_keep_the_last_step_counts_and_add_up_tokens_preemptions_and_finished_requests() -> None:
    clock = Clock()
    stats = EngineStats(window_s=10, clock=clock, wall=lambda: 5.0)
    stats.record(scheduler(3, 2, 0.25), iteration(prompt=40, generation=3, preempted=1))
    stats.record(scheduler(2, 0, 0.5), iteration(generation=2, finished=[SimpleNamespace(finish_reason=1,
                                                                                         request_id="a")]))
    stats.record(scheduler(2, 1, 0.75), None)  # a step without outputs: scheduler stats only
    snap = stats.snapshot()
    assert (snap.running, snap.waiting, snap.kv_cache_usage) == (2, 1, 0.75)
    assert (snap.prompt_tokens_total, snap.generation_tokens_total) == (40, 5)
    assert (snap.preemptions_total, snap.requests_finished_total) == (1, 1)
    assert snap.recent_errors == ()


def test_token_rates_are_over_the_last_full_seconds_of_the_window() -> None:
    clock = Clock(1000.0)
    stats = EngineStats(window_s=10, clock=clock)
    for second in range(1000, 1010):  # 10 s with 10 prompt and 20 generation tokens each
        clock.now = second + 0.5
        stats.record(None, iteration(prompt=10, generation=20))
    clock.now = 1010.2  # the current second is not counted yet
    snap = stats.snapshot()
    assert snap.prompt_tokens_per_s == pytest.approx(10.0)
    assert snap.generation_tokens_per_s == pytest.approx(20.0)
    clock.now = 1015.0  # half of the window has passed without tokens
    assert stats.snapshot().generation_tokens_per_s == pytest.approx(10.0)
    clock.now = 1100.0
    snap = stats.snapshot()
    assert snap.generation_tokens_per_s == 0.0 and snap.generation_tokens_total == 200


def test_idle_clears_the_last_steps_load_and_failed_requests_are_noted_as_errors() -> None:
    stats = EngineStats(clock=Clock(), wall=lambda: 42.0, max_errors=2)
    stats.record(scheduler(1, 0, 0.1), iteration(finished=[SimpleNamespace(finish_reason=3, request_id="r-1")]))
    stats.idle()
    snap = stats.snapshot()
    assert (snap.running, snap.waiting, snap.kv_cache_usage) == (0, 0, 0.0)
    assert snap.recent_errors == (EngineErrorNote(42.0, "The engine failed request r-1."),)
    stats.note_error("two")
    stats.note_error("three")
    assert [e.message for e in stats.snapshot().recent_errors] == ["two", "three"]  # only the newest kept


# --- EngineHost.health() on the real engine -----------------------------------------------------------------------


def test_health_reports_a_running_request_and_kv_cache_use_while_it_streams(engine_host: EngineHost) -> None:
    stream = engine_host.stream_chat(HELLO, SamplingSettings(temperature=0.0, max_tokens=200, ignore_eos=True))
    try:
        next(iter(stream))  # the step that produced this delta recorded its stats before handing it over
        health = engine_host.health()
        assert health.state == "ready" and health.model_version == "tiny-test"
        assert health.running == 1 and health.waiting == 0
        assert 0.0 < health.kv_cache_usage <= 1.0
    finally:
        stream.cancel()


def test_health_counts_the_prompt_and_generated_tokens_of_finished_requests(engine_host: EngineHost) -> None:
    before = engine_host.health()
    streams = [engine_host.stream_chat(HELLO, SamplingSettings(temperature=0.0, max_tokens=n, ignore_eos=True))
               for n in (5, 7)]
    for stream in streams:
        list(stream)
    after = engine_host.health()
    assert after.generation_tokens_total - before.generation_tokens_total == 12
    assert after.prompt_tokens_total - before.prompt_tokens_total == sum(s.result.prompt_tokens for s in streams)
    assert after.requests_finished_total - before.requests_finished_total == 2
    assert after.running == 0 and after.error is None


def test_a_stopped_host_reports_its_state_and_no_load() -> None:
    host = EngineHost()
    health = host.health()
    assert health.state == "stopped" and health.model_version is None and health.running == 0


def test_the_sampler_stores_the_real_engines_health(ctx, engine_host: EngineHost) -> None:
    record = health_svc.HealthSampler(ctx, engine_host).run_once()
    with ctx.db.session(readonly=True) as s:
        row = s.scalars(select(EngineHealthSample)).one()
    assert (row.model_version, row.state) == ("tiny-test", "ready") == (record.model_version, record.state)
    assert row.ts == ctx.now()


# --- the sampler ---------------------------------------------------------------------------------------------------


class ScriptedHost:
    """A host whose health() returns what the test sets (our seam; the real one is tested above)."""

    def __init__(self) -> None:
        self.next = EngineHealth("ready", "v1")

    def health(self) -> EngineHealth:
        return self.next


def _rows(ctx) -> list[EngineHealthSample]:
    with ctx.db.session(readonly=True) as s:
        return list(s.scalars(select(EngineHealthSample).order_by(EngineHealthSample.id)))


def test_sampler_stores_preemptions_since_the_previous_sample_and_starts_again_after_a_restart(ctx, clock) -> None:
    host = ScriptedHost()
    sampler = health_svc.HealthSampler(ctx, host, interval_s=10)  # type: ignore[arg-type]
    for total in (2, 5, 5, 1):  # the last one: the engine restarted and counts from 0 again
        host.next = EngineHealth("ready", "v1", running=3, waiting=1, kv_cache_usage=0.123456,
                                 preemptions_total=total, prompt_tokens_per_s=12.3456, generation_tokens_per_s=7.0)
        sampler.run_once()
        clock.advance(seconds=10)
    rows = _rows(ctx)
    assert [r.preemptions for r in rows] == [2, 3, 0, 1]
    assert [r.preemptions_total for r in rows] == [2, 5, 5, 1]
    assert (rows[0].running, rows[0].waiting, rows[0].kv_cache_usage, rows[0].prompt_tokens_per_s) == (
        3, 1, 0.1235, 12.346)
    assert rows[1].epoch_s - rows[0].epoch_s == 10


def test_sampler_stores_each_engine_error_once_and_the_hosts_error_with_every_sample(ctx, clock) -> None:
    host = ScriptedHost()
    sampler = health_svc.HealthSampler(ctx, host)  # type: ignore[arg-type]
    first, second = EngineErrorNote(100.0, "rejected r-1"), EngineErrorNote(200.0, "failed r-2")
    host.next = EngineHealth("ready", "v1", recent_errors=(first,))
    sampler.run_once()
    host.next = EngineHealth("ready", "v1", recent_errors=(first, second))
    sampler.run_once()
    host.next = EngineHealth("dead", "v1", error="RuntimeError: boom", recent_errors=(first, second))
    sampler.run_once()
    rows = _rows(ctx)
    assert [[e["message"] for e in r.errors] for r in rows] == [["rejected r-1"], ["failed r-2"], []]
    assert [r.error_count for r in rows] == [1, 1, 0]
    assert [r.error for r in rows] == [None, None, "RuntimeError: boom"]
    assert rows[2].state == "dead"


def test_sampler_deletes_samples_older_than_the_retention(ctx, clock) -> None:
    host = ScriptedHost()
    sampler = health_svc.HealthSampler(ctx, host, retention_days=30)  # type: ignore[arg-type]
    sampler.run_once()
    clock.advance(days=29)
    sampler.run_once()
    assert len(_rows(ctx)) == 2
    clock.advance(days=2)  # the first sample is now 31 days old, the second 2 days
    sampler.run_once()
    with ctx.db.session(readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(EngineHealthSample)) == 2
        oldest = s.scalar(select(func.min(EngineHealthSample.ts)))
    assert oldest == clock.now - timedelta(days=2)


# --- health_history: what the dashboard reads -----------------------------------------------------------------------


def _sample(ctx, clock, seconds_after: float, **fields) -> None:
    from db import engine_health as health_q

    start = clock.now
    with ctx.db.session() as s:
        health_q.add_sample(s, health_q.HealthRecord(ts=start + timedelta(seconds=seconds_after),
                                                     model_version=fields.pop("model_version", "v1"),
                                                     state=fields.pop("state", "ready"), **fields))


def test_history_buckets_samples_in_the_database_with_averages_peaks_and_sums(ctx, clock, make_user) -> None:
    op = make_user("olivia", "operator")
    start = clock.now  # 09:00:00, a whole minute
    # First minute: three samples; second minute: one; nothing in the third.
    _sample(ctx, clock, 0, running=2, waiting=0, kv_cache_usage=0.2, preemptions=1, prompt_tokens_per_s=30.0,
            generation_tokens_per_s=10.0)
    _sample(ctx, clock, 20, running=4, waiting=3, kv_cache_usage=0.6, preemptions=2, prompt_tokens_per_s=60.0,
            generation_tokens_per_s=20.0, errors=[{"at": 1.0, "message": "rejected r-9"}])
    _sample(ctx, clock, 40, running=0, waiting=0, kv_cache_usage=0.1, state="loading")
    _sample(ctx, clock, 70, running=1, waiting=1, kv_cache_usage=0.5, model_version="v2",
            error="RuntimeError: boom", state="dead")
    _sample(ctx, clock, 200)  # outside the range asked for
    # Buckets follow the range (at most ~360 points), never below the 10 s sampling interval.
    assert health_svc.health_history(ctx, op, start, start + timedelta(seconds=180)).bucket_s == 10
    assert health_svc.health_history(ctx, op, start, start + timedelta(hours=1)).bucket_s == 10
    coarse = health_svc.health_history(ctx, op, start, start + timedelta(hours=5))
    assert coarse.bucket_s == 60  # 30 s buckets would be 600 points
    f = coarse.frame
    minute_one = f[f["time"] == start].iloc[0]
    assert minute_one["samples"] == 3
    assert minute_one["running"] == pytest.approx(2.0) and minute_one["running_peak"] == 4
    assert minute_one["waiting"] == pytest.approx(1.0) and minute_one["waiting_peak"] == 3
    assert minute_one["kv_cache_pct"] == pytest.approx(30.0) and minute_one["kv_cache_peak_pct"] == pytest.approx(60)
    assert minute_one["preemptions"] == 3 and minute_one["errors"] == 1 and minute_one["not_ready"] == 1
    assert minute_one["prompt_tokens_per_s"] == pytest.approx(30.0)
    assert len(f) == 3  # minutes 1, 2 and the one holding the sample at 200 s
    minute_two = f[f["time"] == start + timedelta(minutes=1)].iloc[0]
    assert (minute_two["samples"], minute_two["errors"], minute_two["not_ready"]) == (1, 1, 1)
    assert [v for v, _, _ in coarse.versions] == ["v1", "v2"]
    assert sorted(coarse.errors["error"]) == ["dead: RuntimeError: boom", "rejected r-9"]
    narrow = health_svc.health_history(ctx, op, start, start + timedelta(seconds=60))
    assert narrow.frame["samples"].sum() == 3  # the end of the range is exclusive


def test_history_lists_a_lasting_host_error_once_with_how_many_samples_saw_it(ctx, clock, make_user) -> None:
    analyst = make_user("ana", "analyst")
    for i in range(4):
        _sample(ctx, clock, 10 * i, state="dead", error="RuntimeError: boom")
    history = health_svc.health_history(ctx, analyst, clock.now, clock.now + timedelta(minutes=5))
    assert history.errors[["error", "samples"]].values.tolist() == [["dead: RuntimeError: boom", 4]]
    assert history.errors["time"].iloc[0] == clock.now + timedelta(seconds=30)  # the latest sighting


def test_history_charts_name_frame_columns_for_plotly(ctx, clock, make_user) -> None:
    import plotly.express as px

    op = make_user("olivia", "operator")
    _sample(ctx, clock, 0, running=2, generation_tokens_per_s=5.0)
    history = health_svc.health_history(ctx, op, clock.now, clock.now + timedelta(minutes=15))
    charts = history.charts
    assert [c.title for c in charts] == ["Requests in the engine", "KV-cache use", "Engine throughput",
                                         "Preemptions and engine errors"]
    for chart in charts:
        assert set(chart.columns) <= set(history.frame.columns)
        figure = px.line(**chart.line_args())
        assert {trace.name for trace in figure.data} == set(chart.columns.values())


def test_an_empty_range_has_no_rows_and_no_charts(ctx, clock, make_user) -> None:
    op = make_user("olivia", "operator")
    history = health_svc.health_history(ctx, op, clock.now - timedelta(days=1), clock.now)
    assert history.empty and history.charts == [] and history.errors.empty and history.versions == []


def test_history_refuses_bad_ranges(ctx, clock, make_user) -> None:
    op = make_user("olivia", "operator")
    now = clock.now
    with pytest.raises(InvalidInput, match="end after it starts"):
        health_svc.health_history(ctx, op, now, now)
    with pytest.raises(InvalidInput, match="90 days"):
        health_svc.health_history(ctx, op, now - timedelta(days=91), now)
    with pytest.raises(InvalidInput, match="timezone"):
        health_svc.health_history(ctx, op, now.replace(tzinfo=None), now)


def test_history_is_refused_to_roles_without_the_dashboard(ctx, clock, make_user) -> None:
    reviewer = make_user("rita", "reviewer")
    with pytest.raises(AccessDenied):
        health_svc.health_history(ctx, reviewer, clock.now - timedelta(hours=1), clock.now)
