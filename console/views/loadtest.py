"""The Latency page's load test panel (operators and admins): synthetic traffic against the live version, its live
report, and the stop button for whoever started it or an admin."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from console import ui
from console.services import access
from console.services import loadtest as load_svc
from console.services.access import Principal
from console.services.context import AppContext
from console.services.latency_view_model import format_ms
from console.textsafe import escape_markdown


def _load_status(ctx: AppContext, principal: Principal) -> None:
    report = ui.call(load_svc.load_status, ctx, principal)
    if report is None:
        st.caption("No load test has run in this console process yet.")
        return
    run = report.run
    state = {"running": "running", "stopping": "stopping", "finished": "finished", "stopped": "stopped",
             "failed": "ended early"}.get(report.state, report.state)
    st.markdown(f"**{escape_markdown(state.capitalize())}**: {run.concurrency} concurrent chats for {run.seconds} s "
                f"on {escape_markdown(run.model_version)}, prompt set {escape_markdown(run.prompt_set)}, started by "
                f"{escape_markdown(run.started_by)} at {run.started_at:%H:%M:%S} UTC "
                f"({report.elapsed_s:.0f} s so far).")
    st.dataframe(pd.DataFrame([{
        "requests": report.requests, "errors": report.errors,
        "statuses": ", ".join(f"{k}: {v}" for k, v in sorted(report.by_status.items())) or "-",
        "time to first token p50 / p95": f"{format_ms(report.ttft_p50_ms)} / {format_ms(report.ttft_p95_ms)}",
        "end-to-end p50 / p95": f"{format_ms(report.e2e_p50_ms)} / {format_ms(report.e2e_p95_ms)}",
        "output tokens per second (whole run)": "-" if report.output_tokens_per_s is None
        else f"{report.output_tokens_per_s:,.1f}",
    }]), hide_index=True, width="stretch", key="load_report")
    for message in report.error_messages:
        st.caption(f"Error: {escape_markdown(message)}")
    if report.running and load_svc.may_stop(principal, run):
        if st.button("Stop the load test", key="load_stop"):
            ui.call(load_svc.stop_load, ctx, principal)
    elif report.running:
        st.caption(f"Only {escape_markdown(run.started_by)}, who started it, or an admin can stop it.")


def load_test_panel(ctx: AppContext, principal: Principal) -> None:
    """The load test in an expander, for those who may run one."""
    if not access.allowed(principal.roles, "loadtest.run"):
        return
    with st.expander("Load test: synthetic traffic against the live version", expanded=False):
        st.caption("Its chats are stored as synthetic: excluded from these charts unless Traffic says otherwise, "
                   "and from the watch window after a switch. Latencies in the report are measured at the console "
                   "(safety scans and storage included).")
        sets = load_svc.prompt_sets()
        with st.form("load_form"):
            l1, l2, l3 = st.columns([3, 2, 2])
            load_set = l1.selectbox("Prompt set", list(sets), format_func=lambda k: sets[k], key="load_set")
            load_n = l2.number_input("Concurrent chats", min_value=1, max_value=ctx.settings.loadtest_max_concurrency,
                                     value=min(2, ctx.settings.loadtest_max_concurrency), step=1, key="load_n")
            load_t = l3.number_input("Seconds", min_value=1, max_value=ctx.settings.loadtest_max_seconds,
                                     value=min(30, ctx.settings.loadtest_max_seconds), step=1, key="load_t")
            if st.form_submit_button("Start load test"):
                started = ui.call(load_svc.start_load, ctx, principal, load_set, int(load_n), int(load_t))
                if started is not None:
                    st.success(f"Load test started: {started.concurrency} chats for {started.seconds} s.")
        current_load = ui.call(load_svc.load_status, ctx, principal)
        st.fragment(_load_status, run_every=2 if current_load is not None and current_load.running else None)(
            ctx, principal)
