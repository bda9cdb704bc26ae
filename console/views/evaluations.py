"""Admins and reviewers: run a prompt suite against a version, watch it, read and compare the reports."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from console import ui
from console.services import evaluation as eval_svc
from console.services import promotion as promotion_svc
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

versions = [v.name for v in ui.call(promotion_svc.version_choices, ctx, principal) or [] if not v.retired]
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
        suite = suite_name
        if upload is not None:
            suite = ui.call(eval_svc.upload_suite, ctx, principal, upload.name, upload.getvalue())
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


def _pct(value: object) -> str:
    return "-" if value is None else f"{float(value):.0%}"  # type: ignore[arg-type]


with reports_tab:
    shown = st.selectbox("Version", versions, index=None, key="eval_reports_version")
    rows = ui.call(eval_svc.list_evaluations, ctx, principal, shown) or [] if shown else []
    st.dataframe(pd.DataFrame([{
        "evaluation": r.id, "suite": r.suite, "status": r.status, "prompts": r.n_prompts, "by": r.created_by or "",
        "finished": r.finished_at, "topic accuracy": _pct((r.summary or {}).get("topic_accuracy")),
        "declined off-topic": _pct((r.summary or {}).get("decline_rate")),
        "flagged": _pct((r.summary or {}).get("flag_rate_any")),
        "p95 first token (ms)": (r.summary or {}).get("ttft_p95_ms"),
        "tokens/s per answer": (r.summary or {}).get("tokens_per_s")} for r in rows]),
        hide_index=True, width="stretch", key="eval_table")
    done = [r.id for r in rows if r.status == "done"]
    chosen = st.selectbox("Report", done, index=None, key="eval_report_id")
    if chosen is not None:
        report = ui.call(eval_svc.get_report, ctx, principal, chosen) or {}
        bias = report.get("bias_gap") or {}
        st.markdown(f"**Bias gap** (answer {bias.get('answer_gap')}, toxicity {bias.get('toxicity_gap')}, "
                    f"flag rate {bias.get('flag_gap')}) over {bias.get('pairs', 0)} pairs")
        if bias.get("worst_pairs"):
            st.dataframe(pd.DataFrame(bias["worst_pairs"]), hide_index=True, key="eval_worst_pairs")
        st.dataframe(pd.DataFrame(report.get("answers") or []), hide_index=True, key="eval_answers")

with compare_tab:
    every = [r for v in versions for r in (ui.call(eval_svc.list_evaluations, ctx, principal, v) or [])
             if r.status == "done"]
    labels = {r.id: f"{r.id}: {r.version} · {r.suite} · {r.finished_at:%Y-%m-%d %H:%M}" for r in every}
    c1, c2 = st.columns(2)
    a = c1.selectbox("Report A", list(labels), index=None, format_func=labels.get, key="eval_compare_a")
    b = c2.selectbox("Report B", list(labels), index=None, format_func=labels.get, key="eval_compare_b")
    if a is not None and b is not None:
        rows = ui.call(eval_svc.compare_evaluations, ctx, principal, a, b) or []
        st.dataframe(pd.DataFrame([{"metric": r.metric, "A": r.a, "B": r.b, "B - A": r.difference} for r in rows]),
                     hide_index=True, width="stretch", key="eval_compare_table")
