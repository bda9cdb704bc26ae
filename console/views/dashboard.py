"""Latency dashboards per model version: time to first token, inter-token latency, end-to-end, throughput."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from console import ui
from console.services import dashboard as dash_svc

principal = ui.require_page("dashboard")
ctx = ui.app_context()

st.title("Latency")
c1, c2 = st.columns(2)
window = c1.selectbox("Window", list(dash_svc.WINDOWS), index=1, key="dash_window")
report = ui.call(dash_svc.latency, ctx, principal, window)
version = None
if report is not None and report.versions:
    version = c2.selectbox("Model version", ["all", *report.versions], key="dash_version")
    if version != "all":
        report = ui.call(dash_svc.latency, ctx, principal, window, version)

if report is not None:
    if report.exchanges.empty:
        st.info("No answered requests in this window yet.")
    else:
        st.dataframe(report.summary, hide_index=True, width="stretch")
        st.subheader("Throughput")
        st.plotly_chart(px.bar(report.throughput, x="minute", y="tokens_per_s", color="model_version",
                               labels={"tokens_per_s": "output tokens/s (per minute)", "minute": "time"}),
                        width="stretch")
        st.subheader("Latency per request")
        metric = st.selectbox("Metric", list(dash_svc.METRICS), format_func=dash_svc.METRICS.get, key="dash_metric")
        fig = px.scatter(report.exchanges, x="created_at", y=metric, color="model_version",
                         labels={"created_at": "time", metric: dash_svc.METRICS[metric]})
        st.plotly_chart(fig, width="stretch")
        fig2 = px.box(report.exchanges, x="model_version", y=metric, labels={metric: dash_svc.METRICS[metric]})
        st.plotly_chart(fig2, width="stretch")
