"""The Latency page's charts and tables for one report: engine latency percentiles, throughput, status rates, where
a request's time goes, engine health and version switches (marked on every chart). Figures are built here from
what :mod:`console.services.latency_view_model` shapes (tables, lines, titles); the page decides what to show."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from console import ui
from console.services import engine_health as health_svc
from console.services import feedback as feedback_svc
from console.services import latency as latency_svc
from console.services import latency_view_model as vm
from console.services.access import Principal
from console.services.context import AppContext
from console.textsafe import defang_links

PERCENTILE_DASH = {"p50": "solid", "p95": "dash", "p99": "dot"}
# Equal percentiles (few requests) draw on top of each other: p99 goes first, widest, with an open square, then p95
# (a diamond inside the square), then p50, so every line that exists stays visible; the hover lists all three.
PERCENTILE_STYLE = {"p99": (3.5, "square-open", 11), "p95": (2.0, "diamond", 7), "p50": (1.5, "circle", 4)}
TIME_AXIS = "time (UTC)"


def _plain(text: object) -> str:
    """Text from the database as Plotly shows it: links defanged, markup shown as text."""
    return html.escape(defang_links(str(text)))


def _markers(fig: go.Figure, report: latency_svc.LatencyOverview) -> None:
    for switch in report.switches:
        color = "#2e7d32" if switch.ok else "#c62828"
        fig.add_vline(x=switch.at, line_width=1, line_dash="dashdot", line_color=color)
        text = f"{'switch' if switch.ok else 'failed switch'} to {_plain(switch.to_version or '?')}"
        fig.add_annotation(x=switch.at, y=1.0, yref="paper", text=text, showarrow=False, textangle=-90,
                           xanchor="right", yanchor="top", font={"size": 10, "color": color})


def _target_lines(fig: go.Figure, report: latency_svc.LatencyOverview, metric: str, scale: float = 1.0) -> None:
    for slo in report.slos:
        if slo.metric == metric:
            fig.add_hline(y=slo.threshold * scale, line_dash="dot", line_color="#ef6c00",
                          annotation_text=_plain(f"target: {slo.label}"), annotation_position="top left")


def _layout(fig: go.Figure, title: str, y_title: str, y_range: list[float] | None = None,
            x_title: str = TIME_AXIS) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=360,
                      legend_title_text="", margin={"t": 50, "b": 40})
    # Nothing drawn here can be negative: an all-zero line would otherwise get an axis from -1 to 1.
    fig.update_yaxes(rangemode="nonnegative")
    if x_title == TIME_AXIS:  # a point is its bucket: the hover says so
        fig.update_xaxes(hoverformat="bucket from %Y-%m-%d %H:%M UTC")
    if y_range is not None:
        fig.update_yaxes(range=y_range)
    return fig


def _latency_figure(report: latency_svc.LatencyOverview, frame: pd.DataFrame, metric: str,
                    y_range: list[float] | None) -> go.Figure:
    fig = go.Figure()
    for line in vm.latency_lines(frame, metric, tuple(PERCENTILE_STYLE)):
        width, symbol, size = PERCENTILE_STYLE[line.stat]
        fig.add_trace(go.Scatter(x=line.x, y=line.y, mode="lines+markers",
                                 line={"dash": PERCENTILE_DASH[line.stat], "width": width},
                                 marker={"symbol": symbol, "size": size},
                                 legendrank=list(PERCENTILE_DASH).index(line.stat),  # the legend reads p50, p95, p99
                                 name=_plain(line.name), legendgroup=_plain(line.group)))
    _target_lines(fig, report, metric)
    _markers(fig, report)
    fig.update_layout(hovermode="x unified")
    return _layout(fig, vm.latency_title(report, metric), "milliseconds", y_range)


def latency_charts(report: latency_svc.LatencyOverview, chosen: tuple[str, ...], side_by_side: bool) -> None:
    """The engine's latency percentiles over time, per version (two side by side on one scale when chosen)."""
    st.subheader("Engine latency")
    for metric in latency_svc.LATENCY_METRICS:
        frames = vm.chart_frames(report, chosen, side_by_side)
        y_range = vm.shared_range(frames, metric, side_by_side)
        columns = st.columns(len(frames))
        for column, frame in zip(columns, frames, strict=True):
            if not vm.has_values(frame, metric):
                column.caption(vm.no_values(metric))
                continue
            column.plotly_chart(_latency_figure(report, frame, metric, y_range), width="stretch")


def throughput_charts(report: latency_svc.LatencyOverview) -> None:
    st.subheader("Throughput")
    st.caption(f"What the engine delivered: the requests, and the output tokens generated by all of them, "
               f"in each {report.bucket_label} bucket divided by its length in minutes or seconds (an idle bucket is "
               "near 0). "
               "Not one answer's speed: the chat shows that under each answer, and the table above averages over "
               "the whole window.")
    for column, (field, title, unit) in zip(st.columns(len(vm.THROUGHPUT_CHARTS)), vm.THROUGHPUT_CHARTS,
                                            strict=True):
        fig = go.Figure()
        for line in vm.version_lines(report, field):
            fig.add_trace(go.Scatter(x=line.x, y=line.y, mode="lines+markers", name=_plain(line.name),
                                     marker={"size": 4}))
        _markers(fig, report)
        column.plotly_chart(_layout(fig, vm.throughput_title(report, title), unit), width="stretch")


def rate_chart(report: latency_svc.LatencyOverview) -> None:
    st.subheader("Errors, aborts, flags and blocks")
    fig = go.Figure()
    for line in vm.rate_lines(report):
        split = {}
        if line.extra is not None:  # which side the policy flagged (an exchange flagged both ways is in both)
            split = {"customdata": line.extra,
                     "hovertemplate": "%{y:.2f} % (prompt %{customdata[0]:.2f} %, answer %{customdata[1]:.2f} %)"}
        fig.add_trace(go.Scatter(x=line.x, y=line.y, mode="lines+markers", marker={"size": 4},
                                 name=_plain(line.name), **split))
    for metric in vm.RATE_NAMES:
        _target_lines(fig, report, metric, scale=100.0)
    _markers(fig, report)
    st.plotly_chart(_layout(fig, vm.rate_title(report), "% of the bucket's requests"), width="stretch")


def overhead(report: latency_svc.LatencyOverview, totals: pd.DataFrame) -> None:
    st.subheader("Where a request's time goes: the engine and the console")
    note = vm.overhead_note(report)
    if note is not None:
        st.info(note)
    st.caption("The prompt is scanned whole before the model sees it (added before the first token). The answer is "
               "scanned while it streams, finished sentences in the background; only its last sentences are scanned "
               "after the last token, and that is the time shown here.")
    st.dataframe(vm.overhead_table(totals), hide_index=True, width="stretch", key="overhead_table")
    fig = go.Figure()
    for _, total in totals.iterrows():
        fig.add_trace(go.Bar(x=[part for _, part in vm.OVERHEAD_PARTS], name=_plain(total["model_version"]),
                             y=vm.overhead_medians(total)))
    fig.update_layout(barmode="group")
    st.plotly_chart(_layout(fig, "Median (p50) of each part over the window; missing bars were not recorded",
                            "milliseconds", x_title="part of the request"), width="stretch")


def servers(report: latency_svc.LatencyOverview) -> None:
    """Per vLLM server (server backends): its requests and latency over the window, and its newest load."""
    if report.servers.empty:
        return
    st.subheader("Servers")
    st.caption("Requests, latency and throughput of the requests each vLLM server answered in this window, measured "
               "by the console (time to first token, inter-token and end-to-end latency from sending the request); "
               "state, load, KV cache and mean queue time from the server's own /health and /metrics at its newest "
               f"sample in the window's last {latency_svc.LATENCY_HEALTH_MINUTES} minutes.")
    if report.servers_note:
        st.info(report.servers_note)
    st.dataframe(vm.servers_table(report.servers), hide_index=True, width="stretch", key="servers_table")


def summary(report: latency_svc.LatencyOverview, totals: pd.DataFrame) -> None:
    st.dataframe(vm.summary_table(totals), hide_index=True, width="stretch", key="summary_table")


def engine_health(ctx: AppContext, principal: Principal, report: latency_svc.LatencyOverview) -> None:
    """The engine's own load over the same window (sampled by each console process; not per version or user)."""
    st.subheader("Engine health")
    since, note = vm.health_window(report)
    history = ui.call(health_svc.health_history, ctx, principal, since, report.until)
    if history is None:
        return
    if history.empty:
        st.caption("No engine health samples in this window.")
        return
    if note is not None:
        st.caption(note)
    _health_charts(history.charts, report)
    if not history.servers.empty:
        st.markdown("**Per server** (each vLLM server's own /health and /metrics over the window)")
        st.dataframe(history.servers, hide_index=True, width="stretch", key="engine_servers_table")
        _health_charts(history.server_charts, report)
    if not history.errors.empty:
        st.markdown("**Recent engine errors**")
        st.dataframe(history.errors, hide_index=True, width="stretch", key="engine_errors_table")


def _health_charts(charts: Any, report: latency_svc.LatencyOverview) -> None:
    """Engine health line charts, two a row, with the window's switch markers."""
    columns = st.columns(2)
    for i, chart in enumerate(charts):
        fig = px.line(**chart.line_args())
        # Counts, shares and rates: never below 0 (an idle engine's zeros would get an axis from -1 to 1).
        fig.update_yaxes(rangemode="nonnegative")
        fig.update_xaxes(title_text=TIME_AXIS)
        _markers(fig, report)
        columns[i % 2].plotly_chart(fig, width="stretch")


def switch_table(report: latency_svc.LatencyOverview) -> None:
    table = vm.switch_table(report)
    if table is not None:
        st.markdown("**Version switches in this window** (vertical lines on the charts)")
        st.dataframe(table, hide_index=True, width="stretch", key="switch_table")


def feedback(ctx: AppContext, principal: Principal, report: latency_svc.LatencyOverview,
             chosen: tuple[str, ...]) -> None:
    """Per-version thumbs up and down on the answers of the window (people's chats only: load tests never rate)."""
    rates = ui.call(feedback_svc.feedback_rates, ctx, principal, since=report.since, until=report.until)
    if rates is None:
        return
    st.markdown("**User feedback** (thumbs up or down on answers)")
    rows = feedback_svc.rate_rows(rates, chosen)
    rated = any(r["Rated"] for r in rows)
    st.caption(vm.feedback_caption(report, rated))
    if not rated:
        return
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="feedback_table")
