"""Latency figures per model version: time to first token, inter-token latency, end-to-end, throughput."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta

import pandas as pd

from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import InvalidInput
from db import metrics as metrics_q

WINDOWS = {"last hour": timedelta(hours=1), "last 24 hours": timedelta(days=1), "last 7 days": timedelta(days=7),
           "last 30 days": timedelta(days=30)}
METRICS = {"ttft_ms": "time to first token (ms)", "itl_ms": "inter-token latency (ms)",
           "e2e_ms": "end-to-end (ms)", "tokens_per_s": "tokens/s per request", "queue_ms": "queue time (ms)"}


@dataclass(frozen=True)
class LatencyReport:
    exchanges: pd.DataFrame  # one row per exchange
    summary: pd.DataFrame  # one row per model version: count, p50/p95 of each metric, throughput
    versions: list[str]
    throughput: pd.DataFrame  # per model version and minute: requests and output tokens/s served


@requires("dashboard.view")
def latency(ctx: AppContext, actor: Principal, window: str = "last 24 hours",
            model_version: str | None = None) -> LatencyReport:
    if window not in WINDOWS:
        raise InvalidInput(f"Unknown time window {window!r}; choose one of {', '.join(WINDOWS)}.")
    since = ctx.now() - WINDOWS[window]
    with ctx.db.session(readonly=True) as s:
        rows = metrics_q.exchange_timings(s, since=since, model_version=model_version or None)
        versions = metrics_q.model_versions_seen(s)
    df = pd.DataFrame([asdict(r) for r in rows], columns=list(metrics_q.ExchangeTiming.__dataclass_fields__))
    summary_rows = []
    for version, group in df.groupby("model_version") if not df.empty else []:
        row = {"model version": version, "requests": len(group)}
        for col in ("ttft_ms", "itl_ms", "e2e_ms"):
            values = group[col].dropna()
            row[f"{col} p50"] = round(float(values.quantile(0.5)), 1) if len(values) else None
            row[f"{col} p95"] = round(float(values.quantile(0.95)), 1) if len(values) else None
        tps = group["tokens_per_s"].dropna()
        row["tokens/s p50"] = round(float(tps.quantile(0.5)), 1) if len(tps) else None
        row["output tokens"] = int(group["output_tokens"].fillna(0).sum())
        summary_rows.append(row)
    return LatencyReport(df, pd.DataFrame(summary_rows), versions, _throughput(df))


def _throughput(df: pd.DataFrame) -> pd.DataFrame:
    """Output tokens per second served, per model version and minute (by when the exchange was stored)."""
    columns = ["minute", "model_version", "requests", "tokens_per_s"]
    if df.empty:
        return pd.DataFrame(columns=columns)
    frame = df.assign(minute=pd.to_datetime(df["created_at"], utc=True).dt.floor("min"),
                      output_tokens=df["output_tokens"].fillna(0))
    grouped = frame.groupby(["minute", "model_version"]).agg(requests=("status", "size"),
                                                            tokens=("output_tokens", "sum")).reset_index()
    grouped["tokens_per_s"] = (grouped["tokens"] / 60.0).round(2)
    return grouped[columns]
