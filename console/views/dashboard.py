"""Latency and traffic per model version: percentiles over time, throughput, status rates, the console's own overhead
beside the engine's times, service-level objectives with their breaches and goodput. The charts refresh live."""

from __future__ import annotations

import html
from datetime import UTC, datetime, time, timedelta

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from console import ui
from console.services import access
from console.services import dashboard as dash_svc
from console.services import health as health_svc
from console.services import loadtest as load_svc
from console.services.dashboard import format_ms
from console.textsafe import defang_links, escape_markdown

principal = ui.require_page("dashboard")
ctx = ui.app_context()

REFRESH_SECONDS = 30
PERCENTILE_DASH = {"p50": "solid", "p95": "dash", "p99": "dot"}
# Equal percentiles (few requests) draw on top of each other: p99 goes first, widest, with an open square, then p95
# (a diamond inside the square), then p50, so every line that exists stays visible; the hover lists all three.
PERCENTILE_STYLE = {"p99": (3.5, "square-open", 11), "p95": (2.0, "diamond", 7), "p50": (1.5, "circle", 4)}
LATENCY_TITLES = {
    "ttft_ms": "Time to first token",
    "itl_ms": "Inter-token latency",
    "e2e_ms": "End-to-end latency",
    "queue_ms": "Queue time (waiting for the engine)",
}
RATE_NAMES = {"error_rate": "errors", "abort_rate": "aborted", "flag_rate": "flagged (prompt or answer)",
              "block_rate": "blocked"}
TIME_AXIS = "time (UTC)"



def _plain(text: object) -> str:
    """Text from the database as Plotly shows it: links defanged, markup shown as text."""
    return html.escape(defang_links(str(text)))


def _slo_choices() -> dict[str, tuple[str, str]]:
    choices = {}
    for metric, stats in dash_svc.SLO_METRICS.items():
        for stat in stats:
            unit = "%" if stat == "rate" else "ms"
            name = dash_svc.METRIC_LABELS[metric]
            choices[f"{name} ({unit})" if stat == "rate" else f"{stat} {name} ({unit})"] = (metric, stat)
    return choices


st.title("Latency and traffic")

# ---- service-level objectives (before the charts, so a change shows in this run) --------------------------------
can_manage = access.allowed(principal.roles, "slo.manage")
with st.expander("Service-level objectives", expanded=False):
    if can_manage:
        choices = _slo_choices()
        with st.form("slo_form"):
            f1, f2 = st.columns([3, 1])
            choice = f1.selectbox("Target", list(choices), key="slo_choice")
            threshold = f2.number_input("Threshold (ms, or % for a rate)", min_value=0.0, max_value=3_600_000.0,
                                        value=500.0, step=1.0, key="slo_threshold")
            if st.form_submit_button("Set target"):
                metric, stat = choices[choice]
                value = threshold / 100.0 if stat == "rate" else threshold
                saved = ui.call(dash_svc.set_slo, ctx, principal, metric, stat, value)
                if saved is not None:
                    st.success(f"Target set: {escape_markdown(saved.label)}.")
        current = ui.call(dash_svc.list_slos, ctx, principal) or []
        if current:
            r1, r2 = st.columns([3, 1])
            labels = {s.label: s.id for s in current}
            gone = r1.selectbox("Remove a target", list(labels), index=None, key="slo_remove")
            if r2.button("Remove", key="slo_remove_button") and gone is not None:
                removed = ui.call(dash_svc.delete_slo, ctx, principal, labels[gone])
                if removed is not None:
                    st.success(f"Target removed: {escape_markdown(removed)}.")
    slos = ui.call(dash_svc.list_slos, ctx, principal) or []
    if slos:
        st.dataframe(pd.DataFrame([{"target": s.label, "set by": s.set_by or "", "set at (UTC)": s.set_at}
                                   for s in slos]), hide_index=True, width="stretch", key="slo_table")
    else:
        st.caption("No targets set yet." + (" Set one above." if can_manage else " Admins set them."))

# ---- load test (operators and admins) ---------------------------------------------------------------------------


def _load_status() -> None:
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


if access.allowed(principal.roles, "loadtest.run"):
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
        st.fragment(_load_status, run_every=2 if current_load is not None and current_load.running else None)()

# ---- range and filters ----------------------------------------------------------------------------------------------
versions = ui.call(dash_svc.known_versions, ctx, principal) or []
c1, c2, c3, c4 = st.columns([2, 2, 2, 2])
range_choice = c1.selectbox("Time window", [*dash_svc.RANGES, dash_svc.CUSTOM], index=3, key="dash_range")
layout = c2.radio("Versions", ["together", "side by side"], horizontal=True, key="dash_layout")
traffic = c3.selectbox("Traffic", list(dash_svc.TRAFFIC), key="dash_traffic",
                       help="Load-test traffic is synthetic and left out unless chosen here.")
live = c4.toggle(f"Live: refresh every {REFRESH_SECONDS} s", value=True, key="dash_live")
since = until = None
if range_choice == dash_svc.CUSTOM:
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
statuses = tuple(v2.multiselect("Final status (none = all)", list(dash_svc.STATUSES), key="dash_statuses"))
user = v3.text_input(f"One user (username; reads their newest {dash_svc.RAW_ROW_CAP:,} requests)", key="dash_user",
                     max_chars=150).strip()

flt = dash_svc.DashboardFilter(range=range_choice, since=since, until=until, versions=chosen, statuses=statuses,
                               traffic=traffic, user=user or None)


# ---- charts ---------------------------------------------------------------------------------------------------------


def _markers(fig: go.Figure, report: dash_svc.DashboardReport) -> None:
    for switch in report.switches:
        color = "#2e7d32" if switch.ok else "#c62828"
        fig.add_vline(x=switch.at, line_width=1, line_dash="dashdot", line_color=color)
        text = f"{'switch' if switch.ok else 'failed switch'} to {_plain(switch.to_version or '?')}"
        fig.add_annotation(x=switch.at, y=1.0, yref="paper", text=text, showarrow=False, textangle=-90,
                           xanchor="right", yanchor="top", font={"size": 10, "color": color})


def _target_lines(fig: go.Figure, report: dash_svc.DashboardReport, metric: str, scale: float = 1.0) -> None:
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


def _latency_figure(report: dash_svc.DashboardReport, frame: pd.DataFrame, metric: str,
                    y_range: list[float] | None) -> go.Figure:
    fig = go.Figure()
    for version, rows in frame.groupby("model_version", sort=True):
        for stat, (width, symbol, size) in PERCENTILE_STYLE.items():
            fig.add_trace(go.Scatter(x=rows["bucket_start"], y=rows[f"{metric}_{stat}"], mode="lines+markers",
                                     line={"dash": PERCENTILE_DASH[stat], "width": width},
                                     marker={"symbol": symbol, "size": size},
                                     legendrank=list(PERCENTILE_DASH).index(stat),  # the legend reads p50, p95, p99
                                     name=f"{_plain(version)} {stat}", legendgroup=_plain(version)))
    _target_lines(fig, report, metric)
    _markers(fig, report)
    fig.update_layout(hovermode="x unified")
    return _layout(fig, f"{LATENCY_TITLES[metric]}: p50 (solid), p95 (dashed), p99 (dotted) per "
                        f"{report.bucket_label} bucket", "milliseconds", y_range)


def _per_version(report: dash_svc.DashboardReport, side_by_side: bool) -> list[pd.DataFrame]:
    if side_by_side:  # the two chosen versions, left and right
        return [report.series[report.series["model_version"] == v] for v in chosen]
    return [report.series]


def _latency_charts(report: dash_svc.DashboardReport, side_by_side: bool) -> None:
    st.subheader("Engine latency")
    for metric in dash_svc.LATENCY_METRICS:
        frames = _per_version(report, side_by_side)
        top = pd.concat([f[f"{metric}_p99"] for f in frames]).max()
        y_range = [0.0, float(top) * 1.1] if side_by_side and pd.notna(top) else None
        columns = st.columns(len(frames))
        for column, frame in zip(columns, frames, strict=True):
            if frame[f"{metric}_n"].sum() == 0:
                column.caption(f"{LATENCY_TITLES[metric]}: no values in this window.")
                continue
            column.plotly_chart(_latency_figure(report, frame, metric, y_range), width="stretch")


def _throughput_charts(report: dash_svc.DashboardReport) -> None:
    st.subheader("Throughput")
    st.caption(f"What the engine delivered: the requests, and the output tokens generated by all of them, "
               f"in each {report.bucket_label} bucket divided by its length in minutes or seconds (an idle bucket is "
               "near 0). "
               "Not one answer's speed: the chat shows that under each answer, and the table above averages over "
               "the whole window.")
    t1, t2 = st.columns(2)
    for column, field, title, unit in (
        (t1, "requests_per_min", "Requests per minute", "requests/min"),
        (t2, "output_tokens_per_s", "Output tokens per second", "output tokens/s"),
    ):
        fig = go.Figure()
        for version, rows in report.series.groupby("model_version", sort=True):
            fig.add_trace(go.Scatter(x=rows["bucket_start"], y=rows[field], mode="lines+markers", name=_plain(version),
                                     marker={"size": 4}))
        _markers(fig, report)
        column.plotly_chart(_layout(fig, f"{title}, averaged per {report.bucket_label} bucket", unit),
                            width="stretch")


def _rate_chart(report: dash_svc.DashboardReport) -> None:
    st.subheader("Errors, aborts, flags and blocks")
    fig = go.Figure()
    for version, rows in report.series.groupby("model_version", sort=True):
        for field, name in RATE_NAMES.items():
            split = {}
            if field == "flag_rate":  # which side the policy flagged (an exchange flagged both ways is in both)
                split = {"customdata": rows[["prompt_flag_rate", "output_flag_rate"]].to_numpy() * 100,
                         "hovertemplate": "%{y:.2f} % (prompt %{customdata[0]:.2f} %, answer %{customdata[1]:.2f} %)"}
            fig.add_trace(go.Scatter(x=rows["bucket_start"], y=rows[field] * 100, mode="lines+markers",
                                     marker={"size": 4}, name=f"{_plain(version)}: {name}", **split))
    for metric in RATE_NAMES:
        _target_lines(fig, report, metric, scale=100.0)
    _markers(fig, report)
    st.plotly_chart(_layout(fig, f"Share of requests per {report.bucket_label} bucket: errors, aborted (stopped, cut "
                                 "or interrupted), flagged (prompt or answer), blocked (prompt or answer)",
                            "% of the bucket's requests"), width="stretch")


def _overhead(report: dash_svc.DashboardReport, totals: pd.DataFrame) -> None:
    st.subheader("Where a request's time goes: the engine and the console")
    if not report.overhead_recorded:
        st.info("The console's own overhead (safety scans before and after, storage) is not recorded for these "
                "requests" + (" (one user's figures come from their requests, which do not keep it)."
                              if report.source_note else "."))
    st.caption("The prompt is scanned whole before the model sees it (added before the first token). The answer is "
               "scanned while it streams, finished sentences in the background; only its last sentences are scanned "
               "after the last token, and that is the time shown here.")
    st.dataframe(dash_svc.overhead_table(totals), hide_index=True, width="stretch", key="overhead_table")
    fig = go.Figure()
    for _, total in totals.iterrows():
        fig.add_trace(go.Bar(x=[part for _, part in dash_svc.OVERHEAD_PARTS], name=_plain(total["model_version"]),
                             y=dash_svc.overhead_medians(total)))
    fig.update_layout(barmode="group")
    st.plotly_chart(_layout(fig, "Median (p50) of each part over the window; missing bars were not recorded",
                            "milliseconds", x_title="part of the request"), width="stretch")


def _summary(report: dash_svc.DashboardReport, totals: pd.DataFrame) -> None:
    table = dash_svc.summary_table(totals)
    st.dataframe(table, hide_index=True, width="stretch", key="summary_table")


def _slo_tables(report: dash_svc.DashboardReport) -> None:
    st.subheader("Service-level objectives")
    if not report.slos:
        st.caption("No targets are set: goodput and breaches need at least one (admins set them above).")
        return
    goodput = report.goodput
    st.dataframe(pd.DataFrame({
        "model version": goodput["model_version"],
        "requests that reached the model": goodput["reached_model"],
        "goodput (met every target)": [
            "–" if pd.isna(lo) else (f"{lo * 100:.2f} %" if abs(hi - lo) < 1e-12 else
                                     f"{lo * 100:.2f} % to {hi * 100:.2f} %")
            for lo, hi in zip(goodput["share_low"], goodput["share_high"], strict=True)],
        "exact": ["yes" if exact else "bounds" for exact in goodput["exact"]],
    }), hide_index=True, width="stretch", key="goodput_table")
    st.caption("Goodput: requests that finished without error and were at or under every latency target, out of "
               "those that reached the model. With targets on several latency metrics it is given as bounds "
               "(the histograms are per metric).")
    comp = report.compliance
    st.dataframe(pd.DataFrame({
        "target": comp["target"], "model version": comp["model_version"],
        "measured over the window": dash_svc.format_measured(comp["measured"], comp["stat"]),
        "met": ["no data" if met is None or pd.isna(met) else ("yes" if met else "NO") for met in comp["met"]],
    }), hide_index=True, width="stretch", key="compliance_table")
    breaches = report.breaches
    st.markdown(f"**Breaches** ({len(breaches):,} {report.bucket_label} buckets in which a version missed a target)")
    if not breaches.empty:
        newest = breaches.sort_values("bucket_start", ascending=False).head(500)
        st.dataframe(pd.DataFrame({
            "bucket start (UTC)": newest["bucket_start"], "model version": newest["model_version"],
            "target": newest["target"],
            "measured": dash_svc.format_measured(newest["measured"], newest["stat"]),
            "requests in the bucket": newest["requests"],
        }), hide_index=True, width="stretch", key="breaches_table")


def _engine_health(report: dash_svc.DashboardReport) -> None:
    """The engine's own load over the same window (sampled by each console process; not per version or user)."""
    st.subheader("Engine health")
    since = max(report.since, report.until - health_svc.MAX_RANGE)
    history = ui.call(health_svc.health_history, ctx, principal, since, report.until)
    if history is None:
        return
    if history.empty:
        st.caption("No engine health samples in this window.")
        return
    if since > report.since:
        st.caption(f"Engine health covers the last {health_svc.MAX_RANGE.days} days of the window.")
    columns = st.columns(2)
    for i, chart in enumerate(history.charts):
        fig = px.line(**chart.line_args())
        # Counts, shares and rates: never below 0 (an idle engine's zeros would get an axis from -1 to 1).
        fig.update_yaxes(rangemode="nonnegative")
        fig.update_xaxes(title_text=TIME_AXIS)
        _markers(fig, report)
        columns[i % 2].plotly_chart(fig, width="stretch")
    if not history.errors.empty:
        st.markdown("**Recent engine errors**")
        st.dataframe(history.errors, hide_index=True, width="stretch", key="engine_errors_table")


def _switch_table(report: dash_svc.DashboardReport) -> None:
    if report.switches:
        st.markdown("**Version switches in this window** (vertical lines on the charts)")
        st.dataframe(pd.DataFrame([{"at (UTC)": s.at, "from": s.from_version or "", "to": s.to_version or "",
                                    "switched": "yes" if s.ok else "failed",
                                    "took (s)": s.seconds} for s in report.switches]),
                     hide_index=True, width="stretch", key="switch_table")


def _charts() -> None:
    report = ui.call(dash_svc.overview, ctx, principal, flt)
    if report is None:
        return
    st.caption(f"{report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC in {report.bucket_label} "
               f"buckets (the window is widened to whole buckets). Percentiles are read from log-spaced histograms: "
               f"within {dash_svc.MAX_RELATIVE_ERROR * 100:.1f} % of the exact value. Updated "
               f"{ctx.now():%H:%M:%S} UTC.")
    if report.source_note:
        st.info(escape_markdown(report.source_note))
    if report.empty:
        st.info("No requests in this window with these filters.")
        _switch_table(report)
        return
    totals = report.totals
    _summary(report, totals)
    _slo_tables(report)
    _latency_charts(report, side_by_side)
    _throughput_charts(report)
    _rate_chart(report)
    _overhead(report, totals)
    _engine_health(report)
    _switch_table(report)


st.fragment(_charts, run_every=REFRESH_SECONDS if live else None)()
