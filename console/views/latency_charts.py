"""The Latency page's charts and tables for one report: engine latency percentiles, throughput, status rates, where
a request's time goes, engine health and version switches (marked on every chart). The figures are built in
:mod:`console.services.latency_figures` and the tables and words in :mod:`console.services.latency_view_model`; the
page places them."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import streamlit as st

from console import ui
from console.services import engine_health as health_svc
from console.services import feedback as feedback_svc
from console.services import latency as latency_svc
from console.services import latency_figures as figures
from console.services import latency_view_model as vm
from console.services.access import Principal
from console.services.context import AppContext


def latency_charts(report: latency_svc.LatencyOverview, chosen: tuple[str, ...], side_by_side: bool) -> None:
    """The engine's latency percentiles over time, per version (two side by side on one scale when chosen)."""
    st.subheader("Engine latency")
    for row in figures.latency_rows(report, chosen, side_by_side):
        for column, cell in zip(st.columns(len(row)), row, strict=True):
            if isinstance(cell, str):  # no values of this metric in the window
                column.caption(cell)
            else:
                column.plotly_chart(cell, width="stretch")


def throughput_charts(report: latency_svc.LatencyOverview) -> None:
    st.subheader("Throughput")
    st.caption(vm.throughput_caption(report))
    charts = figures.throughput_figures(report)
    for column, fig in zip(st.columns(len(charts)), charts, strict=True):
        column.plotly_chart(fig, width="stretch")


def rate_chart(report: latency_svc.LatencyOverview) -> None:
    st.subheader("Errors, aborts, flags and blocks")
    st.plotly_chart(figures.rate_figure(report), width="stretch")


def overhead(report: latency_svc.LatencyOverview, totals: pd.DataFrame) -> None:
    st.subheader("Where a request's time goes: the engine and the console")
    note = vm.overhead_note(report)
    if note is not None:
        st.info(note)
    st.caption("The prompt is scanned whole before the model sees it (added before the first token). The answer is "
               "scanned while it streams, finished sentences in the background; only its last sentences are scanned "
               "after the last token, and that is the time shown here.")
    st.dataframe(vm.overhead_table(totals), hide_index=True, width="stretch", key="overhead_table")
    st.plotly_chart(figures.overhead_figure(totals), width="stretch")


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


def _health_charts(charts: Sequence[health_svc.HealthChart | health_svc.ServerChart],
                   report: latency_svc.LatencyOverview) -> None:
    """Engine health line charts, two a row, with the window's switch markers."""
    columns = st.columns(2)
    for i, chart in enumerate(charts):
        columns[i % 2].plotly_chart(figures.health_figure(chart, report), width="stretch")


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
    caption, table = vm.feedback_table(report, rates, chosen)
    st.caption(caption)
    if table is not None:
        st.dataframe(table, hide_index=True, key="feedback_table")
