"""Latency and traffic per model version: percentiles over time, throughput, status rates, the console's own overhead
beside the engine's times, service-level objectives with their breaches and goodput. The charts refresh live.

The panels are modules of their own: targets and goodput (``latency_slo``), the load test (``loadtest``), the charts
(``latency_charts``)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import streamlit as st

from console import ui
from console.services import latency as latency_svc
from console.textsafe import escape_markdown
from console.views import latency_charts, latency_slo, loadtest

principal = ui.require_page("dashboard")
ctx = ui.app_context()

REFRESH_SECONDS = 30

st.title("Latency and traffic")

# ---- service-level objectives (before the charts, so a change shows in this run) --------------------------------
latency_slo.targets_panel(ctx, principal)

# ---- load test (operators and admins) ---------------------------------------------------------------------------
loadtest.load_test_panel(ctx, principal)

# ---- range and filters ----------------------------------------------------------------------------------------------
versions = ui.call(latency_svc.known_versions, ctx, principal) or []
c1, c2, c3, c4 = st.columns([2, 2, 2, 2])
range_choice = c1.selectbox("Time window", [*latency_svc.RANGES, latency_svc.CUSTOM], index=3, key="dash_range")
layout = c2.radio("Versions", ["together", "side by side"], horizontal=True, key="dash_layout")
traffic = c3.selectbox("Traffic", list(latency_svc.TRAFFIC), key="dash_traffic",
                       help="Load-test traffic is synthetic and left out unless chosen here.")
live = c4.toggle(f"Live: refresh every {REFRESH_SECONDS} s", value=True, key="dash_live")
since = until = None
if range_choice == latency_svc.CUSTOM:
    today = ctx.now().astimezone(UTC).date()
    d1, d2 = st.columns(2)
    first_day = d1.date_input("From (UTC)", value=today - timedelta(days=7), key="dash_from")
    last_day = d2.date_input("To (UTC, the whole day)", value=today, key="dash_to")
    since = datetime.combine(first_day, time.min, UTC)
    until = datetime.combine(last_day, time.min, UTC) + timedelta(days=1)
v1, v2, v3 = st.columns([3, 2, 2])
side_by_side = layout == "side by side" and len(versions) >= 2
if side_by_side:
    left_col, right_col = v1.columns(2)
    left = left_col.selectbox("Left", versions, index=len(versions) - 2, key="dash_left")
    right = right_col.selectbox("Right", versions, index=len(versions) - 1, key="dash_right")
    chosen: tuple[str, ...] = (left, right) if left != right else (left,)
    side_by_side = len(chosen) == 2
else:
    if layout == "side by side":
        v1.caption("Side by side needs traffic from two versions.")
    chosen = tuple(v1.multiselect("Model versions (none = all)", versions, key="dash_versions"))
statuses = tuple(v2.multiselect("Final status (none = all)", list(latency_svc.STATUSES), key="dash_statuses"))
user = v3.text_input(f"One user (username; reads their newest {latency_svc.RAW_ROW_CAP:,} requests)", key="dash_user",
                     max_chars=150).strip()

flt = latency_svc.LatencyFilter(range=range_choice, since=since, until=until, versions=chosen, statuses=statuses,
                                traffic=traffic, user=user or None)


# ---- charts ---------------------------------------------------------------------------------------------------------


def _charts() -> None:
    report = ui.call(latency_svc.overview, ctx, principal, flt)
    if report is None:
        return
    st.caption(f"{report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC in {report.bucket_label} "
               f"buckets (the window is widened to whole buckets). Percentiles are read from log-spaced histograms: "
               f"within {latency_svc.MAX_RELATIVE_ERROR * 100:.1f} % of the exact value. Updated "
               f"{ctx.now():%H:%M:%S} UTC.")
    if report.source_note:
        st.info(escape_markdown(report.source_note))
    if report.empty:
        st.info("No requests in this window with these filters.")
        latency_charts.servers(report)
        latency_charts.switch_table(report)
        return
    totals = report.totals
    latency_charts.summary(report, totals)
    latency_charts.servers(report)
    latency_slo.slo_tables(report)
    latency_charts.latency_charts(report, chosen, side_by_side)
    latency_charts.throughput_charts(report)
    latency_charts.rate_chart(report)
    latency_charts.overhead(report, totals)
    latency_charts.engine_health(ctx, principal, report)
    latency_charts.feedback(ctx, principal, report, chosen)
    latency_charts.switch_table(report)


st.fragment(_charts, run_every=REFRESH_SECONDS if live else None)()
