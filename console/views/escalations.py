"""Admins: escalated review items, with the reviewers' notes, decided for good."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from console import ui
from console.services import review
from console.textsafe import escape_markdown

principal = ui.require_page("escalations")
svc = ui.services()

flash = st.session_state.pop("escalation_flash", None)
if flash:
    st.success(flash)
st.title("Escalations")
st.caption("Keyboard: Tab to the decision, arrow keys change it, Enter in the note or Ctrl+Enter decides.")
rows = ui.call(review.list_escalations, svc, principal) or ()
if not rows:
    st.info("No escalated items.")
    st.stop()
st.dataframe(pd.DataFrame([{"item": r.item_id, "severity": r.severity, "due": "🔴 overdue" if r.overdue else "",
                            "labels": r.labels, "max score": r.max_score, "model": r.model_version,
                            "flagged": r.created_at} for r in rows]), hide_index=True, key="escalation_table")
chosen = st.selectbox("Item", [r.item_id for r in rows], key="escalation_item")
view = ui.call(review.escalation_view, svc, principal, chosen)
if view is None:
    st.stop()
with st.container(border=True):
    st.markdown(f"**Item {view.item_id}** :violet-badge[severity {view.severity}]"
                + (" :red-badge[overdue]" if view.overdue else ""))
    st.caption(f"Model {escape_markdown(view.model_version)} · policy v{view.policy_version or '?'} · "
               f"prompt action {view.prompt_action or '-'} · output action {view.output_action or '-'}")
    for turn in view.context:
        st.chat_message("user").markdown(escape_markdown(turn.prompt))
        st.chat_message("assistant").markdown(escape_markdown(turn.response))
    st.chat_message("user", avatar=":material/flag:").markdown(escape_markdown(view.prompt))
    st.chat_message("assistant", avatar=":material/flag:").markdown(escape_markdown(view.response))
    st.dataframe(pd.DataFrame([f.__dict__ for f in view.findings]), hide_index=True, key="escalation_findings",
                 column_config={"score": st.column_config.ProgressColumn("score", min_value=0.0, max_value=1.0)})
    for d in view.decisions:
        st.markdown(f"**{escape_markdown(d.reviewer)}** · {review.DECISION_LABELS[d.decision]} · "
                    f"{d.created_at:%Y-%m-%d %H:%M}  \n{escape_markdown(d.note or '')}")

with st.form("escalation_form"):
    decision = st.radio("Final decision", ["violation", "false_positive"], format_func=review.DECISION_LABELS.get,
                        horizontal=True, key="esc_decision")
    category = st.selectbox("Category (for a violation)", list(review.CATEGORIES), index=None,
                            format_func=review.CATEGORIES.get, key="esc_category")
    note = st.text_input("Note", key="esc_note")
    if st.form_submit_button("Decide", type="primary", key="esc_decide", shortcut="Ctrl+Enter"):
        if ui.call(review.decide_escalation, svc, principal, view.item_id, decision, category=category,
                   note=note) is not None:
            st.session_state["escalation_flash"] = f"Item {view.item_id} decided."
            st.rerun()
