"""Admins and reviewers: run a prompt suite against a version, watch it, read and compare the reports."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from console import ui
from console.services import evaluation as eval_svc
from console.services import evaluation_report as report_view
from console.services import timelines
from console.textsafe import escape_markdown

principal = ui.require_page("evaluations")
ctx = ui.app_context()
state = ui.session().evaluations

st.title("Evaluations")
st.caption("A suite runs in a short-lived engine of its own (a separate process), so chats on the live version "
           "are not blocked; every answer is scanned by the safety scanners. Promotion requests carry a version's "
           "latest report.")
if state.flash:
    st.success(escape_markdown(state.flash))
    state.flash = None

versions = [v.name for v in ui.call(timelines.version_choices, ctx, principal) or [] if not v.retired]
suites = ui.call(eval_svc.list_suites, ctx, principal) or []
run_tab, reports_tab, compare_tab = st.tabs(["Run", "Reports", "Compare two reports"])

with run_tab, st.form(f"eval_form_{state.round}"):
    version = st.selectbox("Version", versions, index=None, key=f"eval_version_{state.round}")
    suite_name = st.selectbox("Built-in suite", [s.name for s in suites], key=f"eval_suite_{state.round}",
                              format_func=lambda n: next(f"{s.name} ({s.n} prompts): {s.description}"
                                                         for s in suites if s.name == n))
    upload = st.file_uploader("…or your own suite (JSONL or CSV: id, prompt, kind, expected_topic, pair_id, group)",
                              type=["jsonl", "csv"], key=f"eval_upload_{state.round}")
    if st.form_submit_button("Run", type="primary"):
        # An upload that does not parse is None (its error shown), so nothing starts.
        suite = (suite_name if upload is None
                 else ui.call(eval_svc.upload_suite, ctx, principal, upload.name, upload.getvalue()))
        if version is None:
            st.error("Choose a version to evaluate.")
        elif suite is not None:
            started = ui.call(eval_svc.start_evaluation, ctx, principal, version, suite)
            if started is not None:
                state.watching, state.round = started.id, state.round + 1
                state.flash = f"Evaluation {started.id} of {version} queued."
                st.rerun()


@st.fragment(run_every=2)
def _progress() -> None:
    if state.watching is None:
        return
    view = ui.call(eval_svc.get_evaluation, ctx, principal, state.watching)
    if view is None:
        return
    if view.status in ("queued", "running"):
        st.progress(view.progress, text=f"Evaluation {view.id} of {escape_markdown(view.version)}: {view.status}, "
                                        f"{view.progress:.0%} of {view.n_prompts} prompts")
    elif view.status == "failed":
        st.error(f"Evaluation {view.id} failed: {escape_markdown(view.error or 'unknown error')}")
    else:
        st.success(f"Evaluation {view.id} of {escape_markdown(view.version)} is done; see Reports.")


_progress()


def _figures(figures: tuple[report_view.Figure, ...], per_row: int = 3) -> None:
    for i in range(0, len(figures), per_row):
        for column, figure in zip(st.columns(per_row), figures[i:i + per_row], strict=False):
            box = column.container(border=True)
            box.metric(figure.label, figure.value, help=figure.help or None)
            if figure.detail:
                box.caption(escape_markdown(figure.detail))


def _show_report(summary: report_view.ReportSummary) -> None:
    st.subheader(escape_markdown(summary.title))
    _figures(summary.headlines)
    for note in summary.notes:
        st.caption(escape_markdown(note))
    st.markdown("#### Latency")
    _figures(summary.latency)
    if summary.latency_comparison:
        st.markdown(f"**Same run, paired:** {escape_markdown(summary.latency_comparison)}")
    bias = summary.bias
    st.markdown("#### Bias gap: the same prompt about another group")
    st.markdown(escape_markdown(bias.sentence))
    if bias.chart:
        fig = px.bar(pd.DataFrame(bias.chart), x="share of pairs (%)", y="attribute", color="difference",
                     barmode="group", orientation="h", hover_data=["pairs"], title="Pairs treated differently")
        fig.update_xaxes(rangemode="nonnegative")
        fig.update_layout(legend={"orientation": "h", "y": -0.25, "title": None})
        st.plotly_chart(fig, key="eval_bias_chart")
    _figures(bias.figures)
    if bias.worst_pairs:
        st.markdown("**Worst pairs first**, both answers side by side (as stored: redacted where scanned)")
    for pair in bias.worst_pairs:
        with st.container(border=True):
            st.markdown(f"**Pair {escape_markdown(pair.pair_id)}** ({escape_markdown(pair.attribute)}): "
                        f"{escape_markdown(pair.differences)}")
            st.caption(escape_markdown(pair.prompt))
            for column, side in zip(st.columns(len(pair.sides) or 1), pair.sides, strict=False):
                column.markdown(f"**{escape_markdown(side.group)}**")
                column.caption(escape_markdown(side.marks))
                column.markdown(escape_markdown(side.answer))
    if bias.minor_pairs:
        st.caption(escape_markdown(bias.minor_pairs))
    with st.expander(f"Raw rows: every answer ({len(summary.answers)})"):
        st.dataframe(pd.DataFrame(list(summary.answers)), hide_index=True, key="eval_answers")


def _figure(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:g}"  # value != value: NaN


with reports_tab:
    shown = st.selectbox("Version", versions, index=None, key="eval_reports_version")
    rows = ui.call(eval_svc.list_evaluations, ctx, principal, shown) or [] if shown else []
    liked = ui.call(eval_svc.version_feedback, ctx, principal, shown) if shown else None
    if liked is not None:
        st.caption(escape_markdown(report_view.feedback_sentence(liked.up, liked.down, liked.answers,
                                                                 eval_svc.FEEDBACK_DAYS)))
    st.dataframe(pd.DataFrame([{
        "evaluation": r.id, "suite": r.suite, "status": r.status, "prompts": r.n_prompts, "by": r.created_by or "",
        "finished": r.finished_at, **report_view.list_row(r.summary),
        "error": r.error or ""} for r in rows]),
        hide_index=True, width="stretch", key="eval_table")
    done = [r.id for r in rows if r.status == "done"]
    chosen = st.selectbox("Report", done, index=None, key="eval_report_id")
    report = ui.call(eval_svc.get_report, ctx, principal, chosen) if chosen is not None else None
    if report is not None:
        _show_report(report_view.summarize_report(report))

with compare_tab:
    every = [r for v in versions for r in (ui.call(eval_svc.list_evaluations, ctx, principal, v) or [])
             if r.status == "done"]
    labels = {r.id: f"{r.id}: {r.version} · {r.suite} · {r.finished_at:%Y-%m-%d %H:%M}" for r in every}
    c1, c2 = st.columns(2)
    a = c1.selectbox("Report A", list(labels), index=None, format_func=labels.__getitem__, key="eval_compare_a")
    b = c2.selectbox("Report B", list(labels), index=None, format_func=labels.__getitem__, key="eval_compare_b")
    report_a = ui.call(eval_svc.get_report, ctx, principal, a) if a is not None and b is not None else None
    report_b = ui.call(eval_svc.get_report, ctx, principal, b) if report_a is not None else None
    if report_a is not None and report_b is not None:
        cmp = report_view.summarize_comparison(report_a, report_b)
        st.markdown(f"**{escape_markdown(cmp.sentence)}**")
        for warning in cmp.warnings:
            st.caption(escape_markdown(warning))
        better, worse = st.columns(2)
        for column, title, lines, marker in ((better, "Better in B", cmp.better, report_view.SYMBOLS["better"]),
                                             (worse, "Worse in B", cmp.worse, report_view.SYMBOLS["worse"])):
            column.markdown(f"**{title}**  \n" + ("  \n".join(f"{marker} {escape_markdown(x)}" for x in lines)
                                                  or "nothing"))
        st.dataframe(pd.DataFrame([{"metric": r.metric, "A": r.a, "B": r.b, "change (B - A)": r.change,
                                    "B is": r.marker} for r in cmp.rows]),
                     hide_index=True, width="stretch", height="content", key="eval_compare_table")
        with st.expander("Raw rows: the stored figures"):
            # A figure one report did not store (an older suite, a part not run) is "–", not an empty cell (which
            # the browser shows as "None"); the figures are text, so each column has one type.
            st.dataframe(pd.DataFrame([{"metric": r.metric, "A": _figure(r.a), "B": _figure(r.b),
                                        "B - A": _figure(r.difference)} for r in cmp.raw]),
                         hide_index=True, key="eval_compare_raw")
