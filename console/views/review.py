"""Reviewers: the queue of flagged exchanges, the claimed item, decisions one by one or in bulk, the quality loop."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pandas as pd
import plotly.express as px
import streamlit as st

from console import ui
from console.services import policy as policy_svc
from console.services import review
from console.services.access import allowed
from console.services.errors import ConsoleError
from console.textsafe import escape_markdown
from console.widgets import decision_fields, marked, show_item

principal = ui.require_page("review")
ctx = ui.app_context()
page_state = ui.session().review


def day(d: date | None, plus: int = 0) -> datetime | None:
    return datetime(d.year, d.month, d.day, tzinfo=UTC) + timedelta(days=plus) if d else None


def show_flash(tab: str) -> None:
    """The last action's message, inside the tab it is about, once (the next rerun clears it)."""
    if page_state.flash and page_state.flash_tab == tab:
        st.success(escape_markdown(page_state.flash))
        page_state.flash = None


def say_flash(text: str, tab: str = "queue") -> None:
    page_state.flash, page_state.flash_tab = text, tab


def no_raw_reason() -> str:
    """Why an item has no raw text to reveal."""
    try:
        keeps = policy_svc.current(ctx, principal).keep_raw_text
    except ConsoleError:  # safety scanning is off or not loaded: the policy cannot be read
        keeps = None
    if keeps is False:
        return "The policy keeps no raw text (keep_raw_text = false), so there is nothing to reveal."
    return ("No raw text is kept for this item, so there is nothing to reveal: its stored text is the text as "
            "written (nothing was cut from it), the raw text was erased after its retention period, or the policy "
            "kept none when it was stored (keep_raw_text = false).")


st.title("Review queue")
st.caption("Keyboard: Alt+N takes the next item; in the item, arrow keys change the decision, Tab moves on, "
           "Enter in the note or Ctrl+Enter decides, Alt+U releases it. After a decision the next item is taken.")
queue_tab, second_tab, quality_tab = st.tabs(["Queue", "Second review", "Quality"])

with queue_tab:
    show_flash("queue")
    opts = ui.call(review.filter_options, ctx, principal) or {}
    with st.expander("Filters"):
        c1, c2, c3, c4 = st.columns(4)
        statuses = c1.multiselect("Status", ["open", "claimed", "decided", "escalated"], default=["open", "claimed"],
                                  key="f_status")
        detector = c2.selectbox("Detector", opts.get("detector", []), index=None, key="f_detector")
        label = c3.selectbox("Label or entity", opts.get("label", []), index=None, key="f_label")
        model = c4.selectbox("Model version", opts.get("model_version", []), index=None, key="f_model")
        low, high = c1.slider("Score", 0.0, 1.0, (0.0, 1.0), step=0.05, key="f_score")
        since = c2.date_input("Flagged from", value=None, key="f_since")
        until = c3.date_input("Flagged until", value=None, key="f_until")
        assignee = c4.selectbox("Assignee", opts.get("assignee", []), index=None, key="f_assignee")
    filters = review.QueueFilter(
        statuses=tuple(statuses), detector=detector, label=label, model_version=model,
        min_score=low if low > 0 else None, max_score=high if high < 1 else None,
        created_from=day(since), created_to=day(until, 1),
        assignee_id=ui.call(review.user_id_of, ctx, principal, assignee) if assignee else None)
    page = ui.call(review.list_queue, ctx, principal, filters)
    if page is None:
        st.stop()
    cols = st.columns(6)
    for col, status in zip(cols, ["open", "claimed", "escalated", "decided"], strict=False):
        col.metric(status.capitalize(), page.summary.counts[status])
    cols[4].metric("Overdue", page.summary.overdue, delta="needs attention" if page.summary.overdue else None,
                   delta_color="inverse")
    age = page.oldest_open_age
    cols[5].metric("Oldest open", f"{age.days} d {age.seconds // 3600} h" if age else "-")

    if page.mine is not None:
        view = ui.call(review.item_view, ctx, principal, page.mine)
        if view is not None:
            with st.container(border=True):
                show_item(view, key="queue")
                if not view.raw_kept and allowed(principal.roles, "review.reveal_raw"):
                    st.caption(escape_markdown(no_raw_reason()), help="Reveal raw text is offered only where it is "
                               "kept.")
                if view.raw_kept and allowed(principal.roles, "review.reveal_raw"):
                    with st.form("reveal_form", clear_on_submit=True):
                        side = st.selectbox("Reveal raw text of", view.raw_kept, key="reveal_direction")
                        reason = st.text_input("Reason (recorded in the audit log)", key="reveal_reason")
                        if st.form_submit_button("Reveal raw text", key="reveal_submit"):
                            raw = ui.call(review.reveal_raw, ctx, principal, view.item_id, side, reason)
                            if raw is not None:
                                spans = [(f.start, f.end) for f in view.findings if f.direction == side
                                         and f.start is not None and f.end is not None and f.end <= len(raw)]
                                st.warning(marked(raw, spans), icon=":material/visibility:")
                with st.form("decision_form"):
                    decision, category, note = decision_fields("", view.item_id)
                    if st.form_submit_button("Decide", type="primary", key="decide", shortcut="Ctrl+Enter"):
                        done = ui.call(review.decide, ctx, principal, view.item_id, decision, category=category,
                                       note=note)
                        if done is not None:
                            nxt = ui.call(review.claim_next, ctx, principal, filters)
                            say_flash(
                                f"Item {done.item_id}: {review.DECISION_LABELS[decision].lower()} recorded"
                                + (" (drawn for a second review)" if done.sampled else "")
                                + (f"; took item {nxt}." if nxt else "; the queue is empty."))
                            st.rerun()
                if st.button("Release", key="release", shortcut="Alt+U"):
                    ui.call(review.release, ctx, principal, view.item_id)
                    st.rerun()

    c1, c2, c3 = st.columns([1, 2, 1])
    if c1.button("Take next", key="take_next", type="primary", shortcut="Alt+N"):
        taken = ui.call(review.claim_next, ctx, principal, filters)
        say_flash(f"Took item {taken}." if taken else "Nothing left to claim.")
        st.rerun()
    claimable = [r.item_id for r in page.rows if r.status == "open" or (r.status == "claimed" and not r.claim_active)]
    chosen = c2.selectbox("Item", claimable, index=None, key="chosen_item", label_visibility="collapsed",
                          placeholder="Choose an item to claim")
    if c3.button("Claim chosen", key="claim_chosen") and chosen is not None:
        if ui.call(review.claim, ctx, principal, chosen) is not None:
            st.rerun()
    st.dataframe(pd.DataFrame([{
        "item": r.item_id, "severity": r.severity, "due": ("🔴 overdue " if r.overdue else "") + (f"{r.due_at:%Y-%m-%d %H:%M}" if r.due_at else ""),
        "status": r.status if r.status != "claimed" or r.claim_active else "open (claim expired)",
        "assignee": r.assignee or "", "labels": r.labels, "max score": r.max_score, "model": r.model_version,
        "reason": r.reason, "flagged": r.created_at} for r in page.rows]), hide_index=True, key="queue_table",
        column_config={"max score": st.column_config.ProgressColumn("max score", min_value=0.0, max_value=1.0),
                       "labels": st.column_config.TextColumn(
                           "labels", help="The labels whose score reached the threshold that applied (what "
                                          "flagged or blocked the exchange); the item shows every finding.")})

    with st.expander("Decide several items at once (same cause)"), st.form("bulk_form"):
        picks = st.multiselect("Items", claimable, key="bulk_items")
        decision, category, note = decision_fields("bulk_", page_state.bulk_round)
        if st.form_submit_button("Decide selected", key="bulk_decide"):
            decided = ui.call(review.decide_bulk, ctx, principal, picks, decision, category=category, note=note)
            if decided:
                say_flash(f"Decided {len(decided)} items.")
                page_state.bulk_round += 1
                st.rerun()

with second_tab:
    show_flash("second")
    blind = ui.call(review.next_second_review, ctx, principal)
    if blind is None:
        st.info("No decided item waits for your second opinion.")
    else:
        st.caption("A blind second opinion: the first decision is hidden; it only feeds the agreement statistics.")
        show_item(blind, key="second")
        with st.form("second_form"):
            decision, category, _ = decision_fields("second_", blind.item_id, note=None)
            if st.form_submit_button("Give second opinion", key="second_decide"):
                if ui.call(review.decide_second_review, ctx, principal, blind.sample_id, decision,
                           category=category) is not None:
                    say_flash(f"Second opinion on item {blind.item_id} recorded.", "second")
                    st.rerun()

with quality_tab:
    report = ui.call(review.quality_report, ctx, principal)
    if report is not None:
        c1, c2, c3 = st.columns(3)
        c1.metric("Agreement (Cohen's kappa)", "-" if report.kappa is None else f"{report.kappa:.2f}")
        c2.metric("Double-reviewed items", report.pairs)
        c3.metric("Waiting for a second opinion", report.open_samples)
        if report.weekly:
            weekly = pd.DataFrame([{"week": p.week, "detector / label": f"{p.detector} / {p.label}",
                                    "precision": p.precision, "decided": p.decided} for p in report.weekly])
            st.plotly_chart(px.line(weekly, x="week", y="precision", color="detector / label", markers=True,
                                    hover_data=["decided"], range_y=[0, 1.05]), key="precision_chart")
        st.dataframe(pd.DataFrame([{"detector": p.detector, "label": p.label, "confirmed": p.confirmed,
                                    "decided": p.decided, "precision": p.precision} for p in report.overall]),
                     hide_index=True, key="precision_table")
        st.subheader("Threshold suggestions for the policy owner")
        for s in report.suggestions:
            st.markdown(f"- **{escape_markdown(s.detector)} / {escape_markdown(s.label)}**: a threshold of "
                        f"**{s.threshold:.2f}** would have avoided {s.avoided} of {s.false_positives} false "
                        f"positives while still flagging {s.kept} of {s.violations} confirmed violations.")
        if not report.suggestions:
            st.caption("No label has frequent false positives that a threshold would avoid.")
