"""Admins: escalated review items, with the reviewers' notes, decided for good."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from console import ui
from console.services import review
from console.widgets import decision_fields, show_item

principal = ui.require_page("escalations")
ctx = ui.app_context()
page_state = ui.session().escalations

if page_state.flash:
    st.success(page_state.flash)
    page_state.flash = None
st.title("Escalations")
st.caption("Keyboard: Tab to the decision, arrow keys change it, Enter in the note or Ctrl+Enter decides.")
rows = ui.call(review.list_escalations, ctx, principal) or ()
if not rows:
    st.info("No escalated items.")
    st.stop()
st.dataframe(pd.DataFrame([{"item": r.item_id, "severity": r.severity, "due": "🔴 overdue" if r.overdue else "",
                            "labels": r.labels, "max score": r.max_score, "model": r.model_version,
                            "flagged": r.created_at} for r in rows]), hide_index=True, key="escalation_table")
chosen = st.selectbox("Item", [r.item_id for r in rows], key="escalation_item")
view = ui.call(review.escalation_view, ctx, principal, chosen)
if view is None:
    st.stop()
with st.container(border=True):
    show_item(view, key="escalation")

with st.form("escalation_form"):
    decision, category, note = decision_fields("esc_", view.item_id, choices=("violation", "false_positive"),
                                               label="Final decision", note="Note")
    if st.form_submit_button("Decide", type="primary", key="esc_decide", shortcut="Ctrl+Enter"):
        if ui.call(review.decide_escalation, ctx, principal, view.item_id, decision, category=category,
                   note=note) is not None:
            page_state.flash = f"Item {view.item_id} decided."
            st.rerun()
