"""The Latency page's figures: latency, traffic and service-level compliance per model version, for operators,
analysts and admins.

Every figure comes from the pre-aggregated buckets of ``db/latency.py`` (never from loading exchanges), except with
a user filter: the buckets do not know users, so that view reads the user's newest exchanges (at most
``db.latency.RAW_ROW_CAP``) and says so. The per-server figures (server backends) come from the exchanges each
vLLM server answered (``db.latency.server_report``, on the ``(engine_server, created_at)`` index, the newest
``SERVER_ROW_CAP`` per server) and the newest per-server engine-health sample. The targets themselves are
``console.services.slo``. The tables and the charts' lines the page shows are shaped from these figures in
:mod:`console.services.latency_view_model`: the view only draws them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from console.services import slo as slo_svc
from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import InvalidInput, NotFound
from db import audit as audit_q
from db import engine_health as health_q
from db import latency as latency_q
from db import latency_report
from db import users as users_q

RANGES: dict[str, timedelta] = {
    "last 15 minutes": timedelta(minutes=15),
    "last hour": timedelta(hours=1),
    "last 6 hours": timedelta(hours=6),
    "last 24 hours": timedelta(days=1),
    "last 7 days": timedelta(days=7),
    "last 30 days": timedelta(days=30),
    "last 90 days": timedelta(days=90),
}
CUSTOM = "custom"
WINDOWS = RANGES  # the older name, for callers of :func:`latency`
MAX_CUSTOM_DAYS = 400
MAX_VERSIONS = 20
TRAFFIC: dict[str, bool | None] = {"real traffic": False, "synthetic (load tests)": True, "both": None}
STATUSES = latency_report.RECORDED_STATUSES
LATENCY_METRICS = latency_report.ENGINE_METRICS
OVERHEAD_METRICS = latency_report.OVERHEAD_METRICS
RATE_METRICS = latency_report.RATE_METRICS
SWITCH_ACTIONS = ("model.switch", "model.switch_failed")
MAX_RELATIVE_ERROR = latency_report.MAX_RELATIVE_ERROR
RAW_ROW_CAP = latency_q.RAW_ROW_CAP
SERVER_ROW_CAP = latency_q.SERVER_ROW_CAP
LATENCY_HEALTH_MINUTES = 60  # the Servers table's state: each server's newest sample this recent in the window
LATEST_HEALTH_WITHIN = timedelta(minutes=LATENCY_HEALTH_MINUTES)
# The Servers table's raw columns (LatencyOverview.servers), in the order it shows them.
SERVER_COLUMNS = ["server", "requests", "ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms", "e2e_p95_s",
                  "output_tokens_per_s", "errors", "state", "running", "waiting", "kv_cache_pct", "queue_ms",
                  "sampled_at"]


@dataclass(frozen=True)
class LatencyFilter:
    """What the page asks for. ``range`` is a key of :data:`RANGES` or ``"custom"`` (then ``since``/``until``);
    empty ``versions``/``statuses`` mean all; ``traffic`` is a key of :data:`TRAFFIC`; ``user`` a username."""

    range: str = "last 24 hours"
    since: datetime | None = None
    until: datetime | None = None
    versions: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    traffic: str = "real traffic"
    user: str | None = None



@dataclass(frozen=True)
class SwitchMarker:
    """A switch of the served version (or a failed one) in the range, from the audit log."""

    at: datetime
    ok: bool
    from_version: str | None
    to_version: str | None
    seconds: float | None


@dataclass(frozen=True)
class LatencyOverview:
    """Everything the page shows. ``series``: one row per bucket and version; ``totals``: one per version and one
    for every version (``model_version`` "all versions"); rates are fractions, times milliseconds, throughput per
    second averaged over the (passed part of the) bucket. ``goodput`` as bounds (equal when exact)."""

    since: datetime  # widened to whole buckets
    until: datetime
    bucket_s: int
    bucket_label: str  # "5-minute"
    series: pd.DataFrame
    totals: pd.DataFrame
    goodput: pd.DataFrame
    breaches: pd.DataFrame
    compliance: pd.DataFrame
    switches: list[SwitchMarker]
    slos: list[slo_svc.SloView]
    versions: list[str]  # every version with traffic (for the version filter)
    overhead_recorded: bool  # any console-overhead figure in the range
    source_note: str | None  # set when the figures come from raw exchanges (user filter)
    rows_read: int
    # One row per vLLM server with exchanges or health samples in the range (SERVER_COLUMNS; empty without any).
    servers: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SERVER_COLUMNS))
    servers_note: str | None = None  # set when a server had more exchanges than were read

    @property
    def empty(self) -> bool:
        return bool(self.series.empty)


ALL_VERSIONS = "all versions"


def bucket_label(seconds: int) -> str:
    """ "1-minute", "5-minute", "1-hour", "6-hour", "1-day"... """
    if seconds % 86400 == 0:
        return f"{seconds // 86400}-day"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}-hour"
    return f"{seconds // 60}-minute"


def _range(ctx: AppContext, flt: LatencyFilter) -> tuple[datetime, datetime]:
    if flt.range == CUSTOM:
        since, until = flt.since, flt.until
        if since is None or until is None:
            raise InvalidInput("A custom time window needs a start and an end.")
        if since.tzinfo is None or until.tzinfo is None:
            raise InvalidInput("A custom time window needs times with a time zone.")
        if until <= since:
            raise InvalidInput("The end of the time window must be after its start.")
        if until - since > timedelta(days=MAX_CUSTOM_DAYS):
            raise InvalidInput(f"A time window can be at most {MAX_CUSTOM_DAYS} days long.")
        return since, until
    if flt.range not in RANGES:
        raise InvalidInput(f"Unknown time window {flt.range!r}; choose one of {', '.join(RANGES)} or custom.")
    now = ctx.now()
    # "The last hour" includes this instant: an exchange stored at exactly ``now`` (on a bucket boundary) counts.
    return now - RANGES[flt.range], now + timedelta(microseconds=1)


def _query(ctx: AppContext, flt: LatencyFilter) -> latency_report.MetricsQuery:
    since, until = _range(ctx, flt)
    bad = [s for s in flt.statuses if s not in STATUSES]
    if bad:
        raise InvalidInput(f"Unknown status {bad[0]!r}; choose from {', '.join(STATUSES)}.")
    if flt.traffic not in TRAFFIC:
        raise InvalidInput(f"Unknown traffic kind {flt.traffic!r}; choose one of {', '.join(TRAFFIC)}.")
    if len(flt.versions) > MAX_VERSIONS:
        raise InvalidInput(f"Choose at most {MAX_VERSIONS} model versions.")
    return latency_report.MetricsQuery(since=since, until=until, versions=tuple(str(v) for v in flt.versions),
                                       statuses=tuple(flt.statuses), synthetic=TRAFFIC[flt.traffic], now=ctx.now())


def _frame(columns: dict[str, Any]) -> pd.DataFrame:
    """A report's columns as a DataFrame: times as UTC timestamps, NaN where there is no value, the every-version
    row named :data:`ALL_VERSIONS`."""
    frame = pd.DataFrame({name: col for name, col in columns.items() if name not in ("bucket_epoch", "bucket_start")})
    if "bucket_epoch" in columns:
        frame.insert(0, "bucket_start", pd.to_datetime(columns["bucket_epoch"], unit="s", utc=True))
    if "model_version" in frame:
        frame["model_version"] = frame["model_version"].fillna(ALL_VERSIONS)
    if "requests_per_s" in frame:  # low traffic reads better per minute
        frame["requests_per_min"] = frame["requests_per_s"] * 60
    return frame



def _switches(session: Any, since: datetime, until: datetime) -> list[SwitchMarker]:
    markers = []
    for action in SWITCH_ACTIONS:
        for event in audit_q.iter_events(session, since=since, until=until, action=action, limit=500):
            details = event.details or {}
            seconds = details.get("seconds")
            markers.append(SwitchMarker(event.ts, action == "model.switch", details.get("from"), details.get("to"),
                                        float(seconds) if isinstance(seconds, int | float) else None))
    return sorted(markers, key=lambda m: m.at)


def _number(value: Any, digits: int = 1, scale: float = 1.0) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value) * scale, digits)


def _servers(session: Any, query: latency_report.MetricsQuery,
             user_id: int | None) -> tuple[pd.DataFrame, str | None]:
    """The Servers table's rows: each server's exchanges over the range, and its newest health sample in it."""
    report = latency_q.server_report(session, query, user_id=user_id)
    figures = {row["model_version"]: row for row in report.totals if row["model_version"] is not None}
    # The newest sample of each server in the window's last hour (a sampled server has one every few seconds).
    since = max(query.start, query.end - LATEST_HEALTH_WITHIN)
    latest = {row.server: row for row in health_q.latest_per_server(session, since=since, until=query.end)}
    rows = []
    for server in sorted({*figures, *latest}):
        f, h = figures.get(server, {}), latest.get(server)
        rows.append({
            "server": server, "requests": int(f.get("requests") or 0),
            "ttft_p50_ms": _number(f.get("ttft_ms_p50")), "ttft_p95_ms": _number(f.get("ttft_ms_p95")),
            "itl_p50_ms": _number(f.get("itl_ms_p50"), 2), "e2e_p95_s": _number(f.get("e2e_ms_p95"), 3, 0.001),
            "output_tokens_per_s": _number(f.get("output_tokens_per_s"), 4), "errors": int(f.get("error") or 0),
            "state": h.state if h is not None else None, "running": h.running if h is not None else None,
            "waiting": h.waiting if h is not None else None,
            "kv_cache_pct": _number(h.kv_cache_usage, 1, 100.0) if h is not None else None,
            "queue_ms": _number(h.queue_ms) if h is not None else None,
            "sampled_at": h.ts if h is not None else None,
        })
    note = (f"A server answered more than {SERVER_ROW_CAP:,} requests in this window: its figures are over its "
            f"newest {SERVER_ROW_CAP:,}." if report.capped else None)
    return pd.DataFrame(rows, columns=SERVER_COLUMNS), note


def _overview(ctx: AppContext, flt: LatencyFilter) -> LatencyOverview:
    query = _query(ctx, flt)
    with ctx.db.session(readonly=True) as s:
        slo_views = slo_svc.slo_views(s)
        targets = [latency_report.SloTarget(v.metric, v.stat, v.threshold) for v in slo_views]
        source_note = None
        user_id = None
        if flt.user:
            user = users_q.get_user_by_username(s, flt.user.strip())
            if user is None:
                raise NotFound(f"No user named {flt.user.strip()!r}.")
            user_id = user.id
            report = latency_q.raw_report(s, query, user_id=user.id, slos=targets)
            source_note = (f"Figures for {user.username} alone come from their requests themselves (the pre-computed "
                           f"buckets do not record who asked): {report.rows_read:,} requests read"
                           + (f", the newest {RAW_ROW_CAP:,} of more in this window" if report.capped else "")
                           + ". The console's own overhead is not recorded per user.")
        else:
            report = latency_q.bucket_report(s, query, targets)
        versions = latency_q.bucket_versions(s)
        switches = _switches(s, query.start, query.end)
        servers, servers_note = _servers(s, query, user_id)
    totals = _frame(report.totals_columns)
    overhead = not totals.empty and sum(int(totals[f"{m}_n"].iloc[-1]) for m in OVERHEAD_METRICS) > 0
    goodput = pd.DataFrame([{
        "model_version": g.model_version or ALL_VERSIONS, "reached_model": g.reached_model,
        "good_low": g.good_low, "good_high": g.good_high, "share_low": g.share_low, "share_high": g.share_high,
        "exact": g.exact} for g in report.goodput])
    breaches = pd.DataFrame([{
        "bucket_start": b.bucket_start, "model_version": b.model_version, "target": slo_svc.slo_label(b.metric, b.stat,
                                                                                                      b.threshold),
        "metric": b.metric, "stat": b.stat, "threshold": b.threshold, "measured": b.measured,
        "requests": b.requests} for b in report.breaches])
    compliance = pd.DataFrame([{
        "model_version": c.model_version or ALL_VERSIONS, "target": slo_svc.slo_label(c.metric, c.stat, c.threshold),
        "metric": c.metric, "stat": c.stat, "threshold": c.threshold, "measured": c.measured, "met": c.met}
        for c in report.compliance])
    return LatencyOverview(
        since=report.start, until=report.end, bucket_s=report.bucket_s, bucket_label=bucket_label(report.bucket_s),
        series=_frame(report.series_columns), totals=totals, goodput=goodput, breaches=breaches, compliance=compliance,
        switches=switches, slos=slo_views, versions=versions, overhead_recorded=overhead, source_note=source_note,
        rows_read=report.rows_read, servers=servers, servers_note=servers_note,
    )


@requires("dashboard.view")
def overview(ctx: AppContext, actor: Principal, flt: LatencyFilter | None = None) -> LatencyOverview:
    """Everything the Latency page shows for a range and filters (see :class:`LatencyOverview`)."""
    return _overview(ctx, flt or LatencyFilter())


@requires("dashboard.view")
def known_versions(ctx: AppContext, actor: Principal) -> list[str]:
    """Every model version that has had traffic (for the version filter)."""
    with ctx.db.session(readonly=True) as s:
        return latency_q.bucket_versions(s)


# ---- a short summary, for callers outside the page (and older ones) --------------------------------------------


@dataclass(frozen=True)
class LatencyReport:
    series: pd.DataFrame  # per bucket and version (see LatencyOverview.series)
    summary: pd.DataFrame  # one row per model version: requests, p50/p95 of each latency (ms), output tokens
    versions: list[str]
    throughput: pd.DataFrame  # per bucket and version: requests and output tokens per second

    @property
    def exchanges(self) -> pd.DataFrame:
        """The older name of :attr:`series` (no call loads exchanges any more)."""
        return self.series


@requires("dashboard.view")
def latency(ctx: AppContext, actor: Principal, window: str = "last 24 hours",
            model_version: str | None = None) -> LatencyReport:
    """Requests and latency percentiles per version over a named window (a key of :data:`RANGES`)."""
    if window not in RANGES:
        raise InvalidInput(f"Unknown time window {window!r}; choose one of {', '.join(RANGES)}.")
    report = _overview(ctx, LatencyFilter(range=window, versions=(model_version,) if model_version else ()))
    rows = []
    totals = report.totals  # no columns at all without traffic
    for row in totals[totals["model_version"] != ALL_VERSIONS].to_dict("records") if not totals.empty else []:
        entry: dict[str, Any] = {"model version": row["model_version"], "requests": int(row["requests"])}
        for metric in ("ttft_ms", "itl_ms", "e2e_ms", "queue_ms"):
            for stat in ("p50", "p95"):
                value = row[f"{metric}_{stat}"]
                entry[f"{metric} {stat}"] = None if value is None or pd.isna(value) else round(float(value), 1)
        entry["output tokens"] = int(row["output_tokens"])
        rows.append(entry)
    throughput = (report.series[["bucket_start", "model_version", "requests", "requests_per_s",
                                 "output_tokens_per_s"]] if not report.empty else
                  pd.DataFrame(columns=["bucket_start", "model_version", "requests", "requests_per_s",
                                        "output_tokens_per_s"]))
    summary_columns = ["model version", "requests",
                       *(f"{m} {stat}" for m in ("ttft_ms", "itl_ms", "e2e_ms", "queue_ms") for stat in ("p50", "p95")),
                       "output tokens"]
    return LatencyReport(report.series, pd.DataFrame(rows, columns=summary_columns), report.versions, throughput)


@requires("latency.rebuild")
def rebuild_buckets(ctx: AppContext, actor: Principal) -> int:
    """``llm-console metrics rebuild``: rebuild the latency buckets from the exchanges; audited. Returns the number
    of exchanges counted."""
    with ctx.db.session() as s:
        counted = latency_q.rebuild_buckets(s)
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="metrics.rebuild",
                             object_type="latency_buckets",
                             details={"exchanges": counted})
    return counted
