"""Engine health kept as history: a sampler stores the engine's load every few seconds; the Latency page reads it.

Each console process runs one :class:`HealthSampler` beside its engine host (``console/resources.py``). Every
``LLM_CONSOLE_HEALTH_SAMPLE_SECONDS`` (10 s) it stores :meth:`engine.host.EngineHost.health` as a row of
``engine_health``: running and waiting requests, KV-cache use, preemptions since the previous sample, prompt and
generation tokens per second, the host's error and the engine errors noted since the previous sample. On the
server backends it also stores one row per vLLM server (``EngineHealth.servers``, from each server's ``/health``
and ``/metrics``): its state, load, preemptions since the previous sample of that server, token rates, mean queue
time (``queue_ms``) and error. Samples older than ``retention_days`` (30) are deleted by the sampler.
:func:`health_history` reads a range in time buckets aggregated by the database and returns plain data for the
Latency page's charts and its per-server table.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd

from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import InvalidInput
from console.services.periodic import PeriodicTask
from db import engine_health as health_q
from db.engine_health import HealthRecord

if TYPE_CHECKING:
    from engine.client import EngineClient
    from engine.types import EngineHealth, ServerHealth

logger = logging.getLogger(__name__)

RETENTION_DAYS = 30
PRUNE_EVERY = timedelta(hours=1)
MAX_RANGE = timedelta(days=90)
TARGET_POINTS = 360  # about one point per two pixels of a wide chart
BUCKET_SIZES_S = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400)


class HealthSampler(PeriodicTask):
    """Stores one engine-health sample every ``interval_s`` (and one per vLLM server on the server backends) and
    deletes samples older than ``retention_days``. ``host`` is any engine client (``health()`` is all it reads)."""

    def __init__(self, ctx: AppContext, host: EngineClient, *, interval_s: float = 10.0,
                 retention_days: int = RETENTION_DAYS) -> None:
        super().__init__(interval_s, name="engine-health")
        self.ctx, self.host, self.retention_days = ctx, host, retention_days
        self._lock = threading.Lock()  # one round at a time (the thread, or a test calling run_once)
        # The engine is in-process and started with this process, so its counters began at 0 here too.
        self._last_version: str | None = None
        self._last_preemptions = 0
        # A server's counters began when it started, not with this process: its first sample counts none.
        self._server_preemptions: dict[str, int] = {}
        self._errors_seen_at = 0.0
        self._pruned_at: datetime | None = None
        self.last_servers: list[HealthRecord] = []  # the per-server rows of the last round

    def run_once(self) -> HealthRecord:
        """Take and store one sample (and prune old ones at most hourly); returns the whole engine's row (the
        servers' rows of the round are in :attr:`last_servers`)."""
        with self._lock:
            health = self.host.health()
            record = self._record(health)
            servers = [self._server_record(record, server) for server in health.servers]
            now = record.ts
            prune = self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY
            with self.ctx.db.session() as s:
                health_q.add_sample(s, record)
                for row in servers:
                    health_q.add_sample(s, row)
                if prune:
                    removed = health_q.delete_before(s, now - timedelta(days=self.retention_days))
                    if removed:
                        logger.info("engine health: deleted %d samples older than %d days", removed,
                                    self.retention_days)
            # Only once stored: a round that failed to write takes its preemptions and errors into the next one.
            self._last_version, self._last_preemptions = health.model_version, health.preemptions_total
            self._server_preemptions = {server.url: server.preemptions_total for server in health.servers}
            self.last_servers = servers
            if record.errors:
                self._errors_seen_at = max(e["at"] for e in record.errors)
            if prune:
                self._pruned_at = now
            return record

    def _record(self, health: EngineHealth) -> HealthRecord:
        total = health.preemptions_total
        # A new engine (a switch or restart) starts its counter at 0: all of its preemptions are new.
        same_engine = health.model_version == self._last_version and total >= self._last_preemptions
        errors = [{"at": e.at, "message": e.message} for e in health.recent_errors if e.at > self._errors_seen_at]
        return HealthRecord(
            ts=self.ctx.now(),
            model_version=health.model_version,
            state=health.state,
            running=health.running,
            waiting=health.waiting,
            kv_cache_usage=round(health.kv_cache_usage, 4),
            preemptions=total - self._last_preemptions if same_engine else total,
            preemptions_total=total,
            prompt_tokens_per_s=round(health.prompt_tokens_per_s, 3),
            generation_tokens_per_s=round(health.generation_tokens_per_s, 3),
            error=health.error,
            errors=errors,
        )

    def _server_record(self, engine: HealthRecord, server: ServerHealth) -> HealthRecord:
        total = server.preemptions_total
        last = self._server_preemptions.get(server.url)
        # First sight of a server: 0 (its counter holds its whole past). A restarted server starts again at 0.
        preemptions = 0 if last is None else (total - last if total >= last else total)
        return HealthRecord(
            ts=engine.ts,
            model_version=engine.model_version,
            state=server.state,
            running=server.running,
            waiting=server.waiting,
            kv_cache_usage=round(server.kv_cache_usage, 4),
            preemptions=preemptions,
            preemptions_total=total,
            prompt_tokens_per_s=round(server.prompt_tokens_per_s, 3),
            generation_tokens_per_s=round(server.generation_tokens_per_s, 3),
            error=server.error,
            server=server.url,
            queue_ms=None if server.queue_s_mean is None else round(server.queue_s_mean * 1000.0, 3),
        )


# --- what the Latency page shows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthChart:
    """One chart: which columns of :attr:`HealthHistory.frame` to draw as lines, with their labels.

    :meth:`line_args` gives the keyword arguments of ``plotly.express.line`` for it.
    """

    title: str
    columns: dict[str, str]  # column -> legend label
    y_title: str
    frame: pd.DataFrame = field(repr=False)

    def line_args(self) -> dict[str, Any]:
        data = self.frame[["time", *self.columns]].rename(columns=self.columns)
        return {"data_frame": data, "x": "time", "y": list(self.columns.values()), "title": self.title,
                "labels": {"value": self.y_title, "variable": "", "time": ""}, "markers": len(data) < 3}


@dataclass(frozen=True)
class HealthHistory:
    """The engine's health over [since, until) in buckets of ``bucket_s`` seconds.

    ``frame``: one row per bucket that has samples (columns ``time``, ``samples``, ``running``, ``running_peak``,
    ``waiting``, ``waiting_peak``, ``kv_cache_pct``, ``kv_cache_peak_pct``, ``preemptions``,
    ``prompt_tokens_per_s``, ``generation_tokens_per_s``, ``errors``, ``not_ready``); ``errors``: the newest
    engine errors, each once at its latest sighting (columns ``time``, ``model_version``, ``error``,
    ``samples``); ``versions``: (version, first, last sample). Server backends: ``servers`` holds one row per vLLM
    server over the window (:data:`SERVER_COLUMNS`: its newest state, average and peak load, mean queue time,
    preemptions, errors) and ``server_frame`` the same buckets per server (columns ``time``, ``server``,
    ``running``, ``waiting``, ``waiting_peak``, ``kv_cache_pct``, ``queue_ms``, ``generation_tokens_per_s``);
    both empty otherwise.
    """

    since: datetime
    until: datetime
    bucket_s: int
    frame: pd.DataFrame
    errors: pd.DataFrame
    versions: list[tuple[str, datetime, datetime]]
    servers: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SERVER_COLUMNS))
    server_frame: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SERVER_FRAME_COLUMNS))

    @property
    def empty(self) -> bool:
        return self.frame.empty

    @property
    def charts(self) -> list[HealthChart]:
        """The four health charts, in the order the page shows them (none when there are no samples)."""
        if self.frame.empty:
            return []
        f = self.frame
        return [
            HealthChart("Requests in the engine",
                        {"running": "running (avg)", "waiting": "waiting (avg)", "waiting_peak": "waiting (peak)"},
                        "requests", f),
            HealthChart("KV-cache use", {"kv_cache_pct": "average", "kv_cache_peak_pct": "peak"}, "% of blocks", f),
            HealthChart("Engine throughput",
                        {"prompt_tokens_per_s": "prompt tokens/s", "generation_tokens_per_s": "generated tokens/s"},
                        "tokens per second", f),
            HealthChart("Preemptions and engine errors", {"preemptions": "preemptions", "errors": "errors"},
                        f"per {_duration(self.bucket_s)}", f),
        ]

    @property
    def server_charts(self) -> list[ServerChart]:
        """Per-server charts (server backends; none otherwise): waiting requests and mean queue time."""
        if self.server_frame.empty:
            return []
        return [ServerChart("Requests waiting, per server (average)", "waiting", "requests", self.server_frame),
                ServerChart("Mean queue time, per server (from its /metrics)", "queue_ms", "milliseconds",
                            self.server_frame)]


@dataclass(frozen=True)
class ServerChart:
    """One per-server chart: a column of :attr:`HealthHistory.server_frame`, one line per server;
    :meth:`line_args` gives the keyword arguments of ``plotly.express.line``."""

    title: str
    column: str
    y_title: str
    frame: pd.DataFrame = field(repr=False)

    def line_args(self) -> dict[str, Any]:
        data = self.frame[["time", "server", self.column]]
        return {"data_frame": data, "x": "time", "y": self.column, "color": "server", "title": self.title,
                "labels": {self.column: self.y_title, "server": "", "time": ""}, "markers": len(data) < 3}


FRAME_COLUMNS = ["time", "samples", "running", "running_peak", "waiting", "waiting_peak", "kv_cache_pct",
                 "kv_cache_peak_pct", "preemptions", "prompt_tokens_per_s", "generation_tokens_per_s", "errors",
                 "not_ready"]


# Per vLLM server over the window (HealthHistory.servers), with units in the names the page shows.
SERVER_COLUMNS: list[str] = [
    "server", "state", "sampled at", "running (avg)", "waiting (avg)", "waiting (peak)", "KV cache (avg %)",
    "KV cache (peak %)", "mean queue (ms)", "generated tokens/s (avg)", "preemptions", "errors", "samples not ready"]
SERVER_FRAME_COLUMNS: list[str] = ["time", "server", "running", "waiting", "waiting_peak", "kv_cache_pct",
                                   "queue_ms", "generation_tokens_per_s"]


def _server_tables(buckets: dict[str, list[health_q.HealthBucket]],
                   latest: list[Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    newest = {row.server: row for row in latest}
    rows, series = [], []
    for server, parts in sorted(buckets.items()):
        samples = sum(b.samples for b in parts)
        queued = [(b.queue_ms, b.samples) for b in parts if b.queue_ms is not None]
        last = newest.get(server)
        rows.append([server, last.state if last is not None else None, last.ts if last is not None else None,
                     round(sum(b.running_avg * b.samples for b in parts) / samples, 2),
                     round(sum(b.waiting_avg * b.samples for b in parts) / samples, 2),
                     max(b.waiting_max for b in parts),
                     round(100 * sum(b.kv_cache_avg * b.samples for b in parts) / samples, 1),
                     round(100 * max(b.kv_cache_max for b in parts), 1),
                     round(sum(q * n for q, n in queued) / sum(n for _, n in queued), 1) if queued else None,
                     round(sum(b.generation_tokens_per_s * b.samples for b in parts) / samples, 1),
                     sum(b.preemptions for b in parts), sum(b.errors for b in parts),
                     sum(b.not_ready for b in parts)])
        series += [[b.start, server, round(b.running_avg, 2), round(b.waiting_avg, 2), b.waiting_max,
                    round(100 * b.kv_cache_avg, 1), None if b.queue_ms is None else round(b.queue_ms, 1),
                    round(b.generation_tokens_per_s, 1)] for b in parts]
    return pd.DataFrame(rows, columns=SERVER_COLUMNS), pd.DataFrame(series, columns=SERVER_FRAME_COLUMNS)


def bucket_seconds(since: datetime, until: datetime, sample_s: float = 10.0) -> int:
    """The bucket size for a range: the smallest of :data:`BUCKET_SIZES_S` giving at most ~360 points, and no
    smaller than the sampling interval."""
    span = (until - since).total_seconds()
    for size in BUCKET_SIZES_S:
        if size >= sample_s and span / size <= TARGET_POINTS:
            return size
    return BUCKET_SIZES_S[-1]


@requires("dashboard.view")
def health_history(ctx: AppContext, actor: Principal, since: datetime, until: datetime) -> HealthHistory:
    """The engine's health between ``since`` and ``until`` (timezone-aware; at most 90 days), bucketed."""
    if since.tzinfo is None or until.tzinfo is None:
        raise InvalidInput("The range needs timezone-aware times.")
    if until <= since:
        raise InvalidInput("The range must end after it starts.")
    if until - since > MAX_RANGE:
        raise InvalidInput(f"The range is limited to {MAX_RANGE.days} days.")
    size = bucket_seconds(since, until, ctx.settings.health_sample_seconds)
    with ctx.db.session(readonly=True) as s:
        buckets = health_q.bucketed(s, since=since, until=until, bucket_s=size)
        error_rows = health_q.samples_with_errors(s, since=since, until=until)
        versions = health_q.versions_seen(s, since=since, until=until)
        server_buckets = health_q.bucketed_by_server(s, since=since, until=until, bucket_s=size)
        latest = health_q.latest_per_server(s, since=since, until=until) if server_buckets else []
    frame = pd.DataFrame(
        [[b.start, b.samples, round(b.running_avg, 2), b.running_max, round(b.waiting_avg, 2), b.waiting_max,
          round(100 * b.kv_cache_avg, 1), round(100 * b.kv_cache_max, 1), b.preemptions,
          round(b.prompt_tokens_per_s, 1), round(b.generation_tokens_per_s, 1), b.errors, b.not_ready]
         for b in buckets],
        columns=FRAME_COLUMNS,
    )
    # Newest first; a host error lasts (a dead engine is sampled dead until restarted), so each distinct error is
    # listed once, at its latest sighting, with how many samples saw it.
    errors: dict[tuple[str | None, str], list[Any]] = {}
    for row in error_rows:
        where = f"server {row.server} " if row.server else ""
        messages = [f"{where}{row.state}: {row.error}"] if row.error else []
        messages += [str(note.get("message", "")) for note in row.errors or []]
        for message in messages:
            seen = errors.setdefault((row.model_version, message), [row.ts, row.model_version, message, 0])
            seen[3] += 1
    servers, server_frame = _server_tables(server_buckets, latest)
    return HealthHistory(since, until, size, frame,
                         pd.DataFrame(list(errors.values()), columns=["time", "model_version", "error", "samples"]),
                         versions, servers, server_frame)


def _duration(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} d" if seconds > 86400 else "day"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h" if seconds > 3600 else "hour"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"
