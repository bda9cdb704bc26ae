"""Engine health kept as history: a sampler stores the engine's load every few seconds; the Latency page reads it.

Each console process runs one :class:`HealthSampler` beside its engine host (``console/resources.py``). Every
``LLM_CONSOLE_HEALTH_SAMPLE_SECONDS`` (10 s) it stores :meth:`engine.host.EngineHost.health` as a row of
``engine_health``: running and waiting requests, KV-cache use, preemptions since the previous sample, prompt and
generation tokens per second, the host's error and the engine errors noted since the previous sample. Samples
older than ``retention_days`` (30) are deleted by the sampler. :func:`health_history` reads a range in time
buckets aggregated by the database and returns plain data for the Latency page's charts.
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
    from engine.host import EngineHost
    from engine.types import EngineHealth

logger = logging.getLogger(__name__)

RETENTION_DAYS = 30
PRUNE_EVERY = timedelta(hours=1)
MAX_RANGE = timedelta(days=90)
TARGET_POINTS = 360  # about one point per two pixels of a wide chart
BUCKET_SIZES_S = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400)


class HealthSampler(PeriodicTask):
    """Stores one engine-health sample every ``interval_s`` and deletes samples older than ``retention_days``."""

    def __init__(self, ctx: AppContext, host: EngineHost, *, interval_s: float = 10.0,
                 retention_days: int = RETENTION_DAYS) -> None:
        super().__init__(interval_s, name="engine-health")
        self.ctx, self.host, self.retention_days = ctx, host, retention_days
        self._lock = threading.Lock()  # one round at a time (the thread, or a test calling run_once)
        # The engine is in-process and started with this process, so its counters began at 0 here too.
        self._last_version: str | None = None
        self._last_preemptions = 0
        self._errors_seen_at = 0.0
        self._pruned_at: datetime | None = None

    def run_once(self) -> HealthRecord:
        """Take and store one sample (and prune old ones at most hourly); returns what was stored."""
        with self._lock:
            health = self.host.health()
            record = self._record(health)
            now = record.ts
            prune = self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY
            with self.ctx.db.session() as s:
                health_q.add_sample(s, record)
                if prune:
                    removed = health_q.delete_before(s, now - timedelta(days=self.retention_days))
                    if removed:
                        logger.info("engine health: deleted %d samples older than %d days", removed,
                                    self.retention_days)
            # Only once stored: a round that failed to write takes its preemptions and errors into the next one.
            self._last_version, self._last_preemptions = health.model_version, health.preemptions_total
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
    ``samples``); ``versions``: (version, first, last sample).
    """

    since: datetime
    until: datetime
    bucket_s: int
    frame: pd.DataFrame
    errors: pd.DataFrame
    versions: list[tuple[str, datetime, datetime]]

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


FRAME_COLUMNS = ["time", "samples", "running", "running_peak", "waiting", "waiting_peak", "kv_cache_pct",
                 "kv_cache_peak_pct", "preemptions", "prompt_tokens_per_s", "generation_tokens_per_s", "errors",
                 "not_ready"]


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
        messages = [f"{row.state}: {row.error}"] if row.error else []
        messages += [str(note.get("message", "")) for note in row.errors or []]
        for message in messages:
            seen = errors.setdefault((row.model_version, message), [row.ts, row.model_version, message, 0])
            seen[3] += 1
    return HealthHistory(since, until, size, frame,
                         pd.DataFrame(list(errors.values()), columns=["time", "model_version", "error", "samples"]),
                         versions)


def _duration(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} d" if seconds > 86400 else "day"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h" if seconds > 3600 else "hour"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"
