"""What the Latency page shows of a report, worked out without Streamlit or Plotly (the page only draws it): the
tables with units and formatted figures, the charts' lines, and the words that depend on the figures (titles,
notes, the window a table covers).

The figures come from :mod:`console.services.latency` (and the engine's own samples, :mod:`console.services.
engine_health`); text from the database is returned raw: the page, or :mod:`console.services.latency_figures` for
the charts, makes it safe where it draws it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from console.services import engine_health as health_svc
from console.services import feedback as feedback_svc
from console.services import latency as latency_svc

# --- tables for the Latency page ---------------------------------------------------------------------------------

# The parts of a request's time, in the order a request meets them: (metric, what the page calls it).
OVERHEAD_PARTS = [("queue_ms", "engine: queue"), ("ttft_ms", "engine: first token"), ("e2e_ms", "engine: whole answer"),
                  ("scan_before_ms", "console: prompt scan"), ("scan_after_ms", "console: answer scan after last token"),
                  ("store_ms", "console: storage")]


def format_ms(value: Any) -> str:
    return "–" if value is None or pd.isna(value) else f"{float(value):,.1f} ms"


def format_pct(value: Any) -> str:
    return "–" if value is None or pd.isna(value) else f"{float(value) * 100:.2f} %"


def format_rate(value: Any) -> str:
    """A rate with at least two significant digits, so low traffic does not read 0: "0.0069", "2.5", "1,234"."""
    if value is None or pd.isna(value):
        return "–"
    number = float(value)
    if number == 0:
        return "0"
    if number >= 10:
        return f"{number:,.0f}" if number >= 100 else f"{number:.1f}"
    decimals = min(9, 1 - math.floor(math.log10(number)))  # two significant digits
    return f"{number:.{decimals}f}"


def format_measured(values: Any, stats: Any) -> list[str]:
    """Measured values against SLO targets: rates as percentages, latencies in milliseconds."""
    return [format_pct(v) if stat == "rate" else format_ms(v) for v, stat in zip(values, stats, strict=True)]


def overhead_table(totals: pd.DataFrame) -> pd.DataFrame:
    """One row per version and part of a request's time: p50, p95, mean ("not recorded" without measurements)."""
    rows = []
    for _, total in totals.iterrows():
        for metric, part in OVERHEAD_PARTS:
            n = int(total[f"{metric}_n"])
            rows.append({"model version": total["model_version"], "part": part,
                         "p50": format_ms(total[f"{metric}_p50"]) if n else "not recorded",
                         "p95": format_ms(total[f"{metric}_p95"]) if n else "not recorded",
                         "mean": format_ms(total[f"{metric}_mean"]) if n else "not recorded",
                         "requests measured": n})
    return pd.DataFrame(rows)


def overhead_medians(total: pd.Series) -> list[float | None]:
    """One version's p50 per part (in OVERHEAD_PARTS order), None where the part was not recorded."""
    return [total[f"{metric}_p50"] if int(total[f"{metric}_n"]) else None for metric, _ in OVERHEAD_PARTS]


def summary_table(totals: pd.DataFrame) -> pd.DataFrame:
    """The per-version summary: requests, rates, throughput and latency percentiles, formatted with units."""
    return pd.DataFrame({
        "model version": totals["model_version"],
        "requests": totals["requests"].fillna(0).round().astype(int),  # a count: 6, not 6.0
        # Per minute: a few requests an hour read 0.0 per second.
        "requests/min (avg)": (totals["requests_per_s"] * 60).map(format_rate),
        "output tokens/s (avg)": totals["output_tokens_per_s"].map(format_rate),
        "errors": totals["error_rate"].map(format_pct),
        "aborted": totals["abort_rate"].map(format_pct),
        # Flagged = the policy flagged or blocked the prompt or the answer (db.flags); and each side on its own.
        "flagged (prompt or answer)": totals["flag_rate"].map(format_pct),
        "prompt flagged": totals["prompt_flag_rate"].map(format_pct),
        "answer flagged": totals["output_flag_rate"].map(format_pct),
        "blocked": totals["block_rate"].map(format_pct),
        "TTFT p50": totals["ttft_ms_p50"].map(format_ms),
        "TTFT p95": totals["ttft_ms_p95"].map(format_ms),
        "TTFT p99": totals["ttft_ms_p99"].map(format_ms),
        "ITL p95": totals["itl_ms_p95"].map(format_ms),
        "end-to-end p95": totals["e2e_ms_p95"].map(format_ms),
        "queue p95": totals["queue_ms_p95"].map(format_ms),
    })


SERVER_HEADERS = {"server": "server", "requests": "requests", "ttft_p50_ms": "TTFT p50 (ms)",
                  "ttft_p95_ms": "TTFT p95 (ms)", "itl_p50_ms": "ITL p50 (ms)", "e2e_p95_s": "E2E p95 (s)",
                  "output_tokens_per_s": "output tokens/s (avg)", "errors": "errors", "state": "state",
                  "running": "running", "waiting": "waiting", "kv_cache_pct": "KV cache (%)",
                  "queue_ms": "mean queue (ms)", "sampled_at": "sampled at (UTC)"}


def servers_table(servers: pd.DataFrame) -> pd.DataFrame:
    """The Servers table as the page shows it: the figures of :attr:`LatencyOverview.servers`, units in the headers
    (empty cells: not measured, e.g. a server with health samples but no requests in the window)."""
    return servers[list(SERVER_HEADERS)].rename(columns=SERVER_HEADERS)


# --- the charts' lines (the view draws them) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One line of a chart: its points, its legend name (raw text: the view makes it safe to show), the legend
    group (the version), the percentile it draws (latency lines) and per-point hover figures (``extra``)."""

    name: str
    x: list[Any]
    y: list[Any]
    group: str = ""
    stat: str = ""
    extra: Any = None


def chart_frames(report: latency_svc.LatencyOverview, chosen: tuple[str, ...], side_by_side: bool) -> list[pd.DataFrame]:
    """The series each latency chart column draws: the two chosen versions side by side, else all in one."""
    if side_by_side:
        return [report.series[report.series["model_version"] == v] for v in chosen]
    return [report.series]


def shared_range(frames: list[pd.DataFrame], metric: str, side_by_side: bool) -> list[float] | None:
    """One y-axis range for side-by-side charts of ``metric`` (0 to 10 % above the highest p99), else None."""
    top = pd.concat([f[f"{metric}_p99"] for f in frames]).max()
    return [0.0, float(top) * 1.1] if side_by_side and pd.notna(top) else None


def latency_lines(frame: pd.DataFrame, metric: str, stats: tuple[str, ...] = ("p99", "p95", "p50")) -> list[Line]:
    """Per version (sorted), one line per percentile of ``stats`` in that order: ``<version> <stat>``."""
    return [Line(f"{version} {stat}", list(rows["bucket_start"]), list(rows[f"{metric}_{stat}"]), str(version), stat)
            for version, rows in frame.groupby("model_version", sort=True) for stat in stats]


def version_lines(report: latency_svc.LatencyOverview, column: str) -> list[Line]:
    """One line per version (sorted) of a series column (``requests_per_min``, ``output_tokens_per_s``...)."""
    return [Line(str(version), list(rows["bucket_start"]), list(rows[column]), str(version))
            for version, rows in report.series.groupby("model_version", sort=True)]


RATE_NAMES = {"error_rate": "errors", "abort_rate": "aborted", "flag_rate": "flagged (prompt or answer)",
              "block_rate": "blocked"}


def rate_lines(report: latency_svc.LatencyOverview) -> list[Line]:
    """Per version, one line per status rate of :data:`RATE_NAMES` in percent (``<version>: <rate>``); the flag
    line's ``extra`` holds each point's prompt and answer shares (%), which side the policy flagged."""
    lines = []
    for version, rows in report.series.groupby("model_version", sort=True):
        for column, name in RATE_NAMES.items():
            extra = rows[["prompt_flag_rate", "output_flag_rate"]].to_numpy() * 100 if column == "flag_rate" else None
            lines.append(Line(f"{version}: {name}", list(rows["bucket_start"]), list(rows[column] * 100),
                              str(version), extra=extra))
    return lines


# --- the words around the charts and tables -----------------------------------------------------------------------

LATENCY_TITLES = {
    "ttft_ms": "Time to first token",
    "itl_ms": "Inter-token latency",
    "e2e_ms": "End-to-end latency",
    "queue_ms": "Queue time (waiting for the engine)",
}
# The throughput charts, side by side: (series column, title, unit).
THROUGHPUT_CHARTS = (
    ("requests_per_min", "Requests per minute", "requests/min"),
    ("output_tokens_per_s", "Output tokens per second", "output tokens/s"),
)


def latency_title(report: latency_svc.LatencyOverview, metric: str) -> str:
    """A latency chart's title (the view draws p50 solid, p95 dashed, p99 dotted)."""
    return (f"{LATENCY_TITLES[metric]}: p50 (solid), p95 (dashed), p99 (dotted) per {report.bucket_label} "
            "bucket")


def has_values(frame: pd.DataFrame, metric: str) -> bool:
    """Whether a latency chart's series has any measurement of ``metric`` (else the page says so instead)."""
    return bool(frame[f"{metric}_n"].sum() != 0)


def no_values(metric: str) -> str:
    return f"{LATENCY_TITLES[metric]}: no values in this window."


def throughput_title(report: latency_svc.LatencyOverview, title: str) -> str:
    return f"{title}, averaged per {report.bucket_label} bucket"


def throughput_caption(report: latency_svc.LatencyOverview) -> str:
    """What the throughput charts measure (the engine's delivery per bucket, not one answer's speed)."""
    return (f"What the engine delivered: the requests, and the output tokens generated by all of them, in each "
            f"{report.bucket_label} bucket divided by its length in minutes or seconds (an idle bucket is near 0). "
            "Not one answer's speed: the chat shows that under each answer, and the table above averages over the "
            "whole window.")


def rate_title(report: latency_svc.LatencyOverview) -> str:
    return (f"Share of requests per {report.bucket_label} bucket: errors, aborted (stopped, cut or interrupted), "
            "flagged (prompt or answer), blocked (prompt or answer)")


def overhead_note(report: latency_svc.LatencyOverview) -> str | None:
    """Why the console's own overhead is missing, when it is (None when it was recorded)."""
    if report.overhead_recorded:
        return None
    return ("The console's own overhead (safety scans before and after, storage) is not recorded for these "
            "requests" + (" (one user's figures come from their requests, which do not keep it)."
                          if report.source_note else "."))


def switch_table(report: latency_svc.LatencyOverview) -> pd.DataFrame | None:
    """The window's version switches as the page lists them (None when there were none)."""
    if not report.switches:
        return None
    return pd.DataFrame([{"at (UTC)": s.at, "from": s.from_version or "", "to": s.to_version or "",
                          "switched": "yes" if s.ok else "failed", "took (s)": s.seconds} for s in report.switches])


def health_window(report: latency_svc.LatencyOverview) -> tuple[datetime, str | None]:
    """Since when the engine health charts read (at most :data:`engine_health.MAX_RANGE` back), and the note that
    says so when that is less than the report's window."""
    since = max(report.since, report.until - health_svc.MAX_RANGE)
    note = (f"Engine health covers the last {health_svc.MAX_RANGE.days} days of the window." if since > report.since
            else None)
    return since, note


def feedback_caption(report: latency_svc.LatencyOverview, rated: bool) -> str:
    """The line above the feedback table (``rated``: some answer of the window has a rating), or instead of it."""
    window = f"between {report.since:%Y-%m-%d %H:%M} and {report.until:%Y-%m-%d %H:%M} UTC"
    if not rated:
        return f"No answer given {window} has a thumbs up or down yet."
    return (f"Answers given {window}, as rated so far; shares are of the rated answers (one rating per "
            "answer).")


def feedback_table(report: latency_svc.LatencyOverview, rates: list[feedback_svc.VersionFeedback],
                   chosen: tuple[str, ...]) -> tuple[str, pd.DataFrame | None]:
    """The feedback panel: its caption, and the per-version table of the ``chosen`` versions (all when none are
    chosen), None while no answer of the window is rated."""
    rows = feedback_svc.rate_rows(rates, chosen)
    rated = any(r["Rated"] for r in rows)
    # A version none of whose answers is rated has no share: "–" as in the table above (a missing cell reads "None");
    # the shares are text, so the column has one type.
    shown = [{k: v if not k.endswith("(% of rated)") else "–" if v is None else f"{v:.1f}" for k, v in r.items()}
             for r in rows]
    return feedback_caption(report, rated), pd.DataFrame(shown) if rated else None
