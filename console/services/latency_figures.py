"""The Latency page's Plotly figures, built without Streamlit from what :mod:`console.services.latency_view_model`
shapes (lines, titles, ranges): engine latency percentiles, throughput, status rates, where a request's time goes and
the engine's health, each time chart with the window's version switches marked. The page only places them.

Text from the database (versions, target labels) is made safe here, where it goes into a figure: links defanged,
markup shown as text.
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from console.services import engine_health as health_svc
from console.services import latency as latency_svc
from console.services import latency_view_model as vm
from console.textsafe import defang_links

PERCENTILE_DASH = {"p50": "solid", "p95": "dash", "p99": "dot"}
# Equal percentiles (few requests) draw on top of each other: p99 goes first, widest, with an open square, then p95
# (a diamond inside the square), then p50, so every line that exists stays visible; the hover lists all three.
PERCENTILE_STYLE = {"p99": (3.5, "square-open", 11), "p95": (2.0, "diamond", 7), "p50": (1.5, "circle", 4)}
TIME_AXIS = "time (UTC)"
SWITCH_OK, SWITCH_FAILED, TARGET = "#2e7d32", "#c62828", "#ef6c00"
FLAG_HOVER = "%{y:.2f} % (prompt %{customdata[0]:.2f} %, answer %{customdata[1]:.2f} %)"
OVERHEAD_TITLE = "Median (p50) of each part over the window; missing bars were not recorded"


def plain(text: object) -> str:
    """Text from the database as Plotly shows it: links defanged, markup shown as text."""
    return html.escape(defang_links(str(text)))


def add_switches(fig: go.Figure, report: latency_svc.LatencyOverview) -> None:
    """A vertical line per version switch of the window, green when it switched, red when it failed, named."""
    for switch in report.switches:
        color = SWITCH_OK if switch.ok else SWITCH_FAILED
        fig.add_vline(x=switch.at, line_width=1, line_dash="dashdot", line_color=color)
        text = f"{'switch' if switch.ok else 'failed switch'} to {plain(switch.to_version or '?')}"
        fig.add_annotation(x=switch.at, y=1.0, yref="paper", text=text, showarrow=False, textangle=-90,
                           xanchor="right", yanchor="top", font={"size": 10, "color": color})


def add_targets(fig: go.Figure, report: latency_svc.LatencyOverview, metric: str, scale: float = 1.0) -> None:
    """A dotted line per target set on ``metric`` (``scale`` turns a rate target into the chart's percent)."""
    for slo in report.slos:
        if slo.metric == metric:
            fig.add_hline(y=slo.threshold * scale, line_dash="dot", line_color=TARGET,
                          annotation_text=plain(f"target: {slo.label}"), annotation_position="top left")


def laid_out(fig: go.Figure, title: str, y_title: str, y_range: list[float] | None = None,
             x_title: str = TIME_AXIS) -> go.Figure:
    """The layout every chart of the page shares: title, axis titles (with units), height, a y-axis from 0."""
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=360,
                      legend_title_text="", margin={"t": 50, "b": 40})
    # Nothing drawn here can be negative: an all-zero line would otherwise get an axis from -1 to 1.
    fig.update_yaxes(rangemode="nonnegative")
    if x_title == TIME_AXIS:  # a point is its bucket: the hover says so
        fig.update_xaxes(hoverformat="bucket from %Y-%m-%d %H:%M UTC")
    if y_range is not None:
        fig.update_yaxes(range=y_range)
    return fig


def latency_figure(report: latency_svc.LatencyOverview, frame: pd.DataFrame, metric: str,
                   y_range: list[float] | None) -> go.Figure:
    """One latency chart: p50, p95 and p99 of ``metric`` per version of ``frame``, targets and switches marked."""
    fig = go.Figure()
    for line in vm.latency_lines(frame, metric, tuple(PERCENTILE_STYLE)):
        width, symbol, size = PERCENTILE_STYLE[line.stat]
        fig.add_trace(go.Scatter(x=line.x, y=line.y, mode="lines+markers",
                                 line={"dash": PERCENTILE_DASH[line.stat], "width": width},
                                 marker={"symbol": symbol, "size": size},
                                 legendrank=list(PERCENTILE_DASH).index(line.stat),  # the legend reads p50, p95, p99
                                 name=plain(line.name), legendgroup=plain(line.group)))
    add_targets(fig, report, metric)
    add_switches(fig, report)
    fig.update_layout(hovermode="x unified")
    return laid_out(fig, vm.latency_title(report, metric), "milliseconds", y_range)


def latency_rows(report: latency_svc.LatencyOverview, chosen: tuple[str, ...],
                 side_by_side: bool) -> list[list[go.Figure | str]]:
    """Per latency metric, a row of columns (the two chosen versions side by side on one scale, else one): each a
    figure, or the caption that stands in for a chart with no values."""
    rows: list[list[go.Figure | str]] = []
    for metric in latency_svc.LATENCY_METRICS:
        frames = vm.chart_frames(report, chosen, side_by_side)
        y_range = vm.shared_range(frames, metric, side_by_side)
        rows.append([latency_figure(report, frame, metric, y_range) if vm.has_values(frame, metric)
                     else vm.no_values(metric) for frame in frames])
    return rows


def throughput_figures(report: latency_svc.LatencyOverview) -> list[go.Figure]:
    """One chart per :data:`latency_view_model.THROUGHPUT_CHARTS` entry (requests, output tokens), a line a
    version."""
    figures = []
    for field, title, unit in vm.THROUGHPUT_CHARTS:
        fig = go.Figure()
        for line in vm.version_lines(report, field):
            fig.add_trace(go.Scatter(x=line.x, y=line.y, mode="lines+markers", name=plain(line.name),
                                     marker={"size": 4}))
        add_switches(fig, report)
        figures.append(laid_out(fig, vm.throughput_title(report, title), unit))
    return figures


def rate_figure(report: latency_svc.LatencyOverview) -> go.Figure:
    """Errors, aborts, flags and blocks in percent of each bucket's requests; the flag line's hover splits it into
    prompt and answer."""
    fig = go.Figure()
    for line in vm.rate_lines(report):
        split: dict[str, Any] = {}
        if line.extra is not None:  # which side the policy flagged (an exchange flagged both ways is in both)
            split = {"customdata": line.extra, "hovertemplate": FLAG_HOVER}
        fig.add_trace(go.Scatter(x=line.x, y=line.y, mode="lines+markers", marker={"size": 4},
                                 name=plain(line.name), **split))
    for metric in vm.RATE_NAMES:
        add_targets(fig, report, metric, scale=100.0)
    add_switches(fig, report)
    return laid_out(fig, vm.rate_title(report), "% of the bucket's requests")


def overhead_figure(totals: pd.DataFrame) -> go.Figure:
    """Grouped bars: each version's median of every part of a request's time (a missing bar: not recorded)."""
    fig = go.Figure()
    for _, total in totals.iterrows():
        fig.add_trace(go.Bar(x=[part for _, part in vm.OVERHEAD_PARTS], name=plain(total["model_version"]),
                             y=vm.overhead_medians(total)))
    fig.update_layout(barmode="group")
    return laid_out(fig, OVERHEAD_TITLE, "milliseconds", x_title="part of the request")


def health_figure(chart: health_svc.HealthChart | health_svc.ServerChart,
                  report: latency_svc.LatencyOverview) -> go.Figure:
    """One engine health chart (the engine's, or one line per server) with the window's switches marked."""
    fig = px.line(**chart.line_args())
    # Counts, shares and rates: never below 0 (an idle engine's zeros would get an axis from -1 to 1).
    fig.update_yaxes(rangemode="nonnegative")
    fig.update_xaxes(title_text=TIME_AXIS)
    add_switches(fig, report)
    return fig
