"""The Audit log page's search panel: the filters (applied when "Search" is pressed), one audited search per filter
and page (keyset pages, newest first), and one event opened in full with the events around it."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from console import ui
from console.services import audit_search as search_svc
from console.services.access import Principal
from console.services.context import AppContext

PAGE_ROWS = 100


def _when(day: date | None, at: time | None, *, end: bool) -> datetime | None:
    """A picked day and time as UTC; a day without a time is its start (or, for the end, the next day's start)."""
    if day is None:
        return None
    if at is None:
        return datetime.combine(day + timedelta(days=1) if end else day, time.min, UTC)
    return datetime.combine(day, at.replace(second=0, microsecond=0), UTC)


def _shown_time(ts: str) -> str:
    return datetime.fromisoformat(ts).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(rows: list[dict[str, Any]], marked: int | None = None) -> pd.DataFrame:
    frame = pd.DataFrame([{
        **({"": "▶" if r["seq"] == marked else ""} if marked is not None else {}),
        "Event": r["seq"], "Time (UTC)": _shown_time(r["ts"]), "Actor": r["actor"], "Action": r["action"],
        "Target": ":".join(str(p) for p in (r["object_type"], r["object_id"]) if p is not None),
        "Details": json.dumps(r["details"], ensure_ascii=False, sort_keys=True),
    } for r in rows])
    return frame if rows else pd.DataFrame(columns=["Event", "Time (UTC)", "Actor", "Action", "Target", "Details"])


def search_panel(ctx: AppContext, principal: Principal, state: ui.AuditPageState) -> search_svc.AuditFilter:
    """The filters, a page of results and an opened event; returns the filter (the export panel uses it too)."""
    # --- filters: applied when "Search" is pressed -----------------------------------------------------------------
    if state.actions is None:
        state.actions = ui.call(search_svc.actions, ctx, principal)
    actions = state.actions or []
    with st.form("audit_filters"):
        c1, c2, c3, c4 = st.columns(4)
        since_day = c1.date_input("From day (UTC)", value=None, key="audit_since_day")
        since_at = c2.time_input("From time (UTC)", value=None, key="audit_since_time", step=60,
                                 help="Events at or after this minute. Without a time: from the start of the day.")
        until_day = c3.date_input("To day (UTC)", value=None, key="audit_until_day")
        until_at = c4.time_input("To time (UTC)", value=None, key="audit_until_time", step=60,
                                 help="Events before this minute. Without a time: to the end of the day.")
        c1, c2, c3 = st.columns(3)
        actor = c1.text_input("Actor (exact username)", key="audit_actor", placeholder="anyone")
        action_prefix = c2.text_input("Action starts with", key="audit_action_prefix", placeholder="any action",
                                      help="For example `auth.` for every sign-in event.")
        action = c3.selectbox("Exact action", actions, index=None, key="audit_action", placeholder="any action")
        c1, c2, c3, c4 = st.columns(4)
        object_type = c1.text_input("Target type", key="audit_object_type", placeholder="any type",
                                    help="For example `user`, `model_version`, `exchange`.")
        object_id = c2.text_input("Target id", key="audit_object_id", placeholder="any id")
        model_version = c3.text_input("Model version", key="audit_model_version", placeholder="any version")
        text = c4.text_input("Text in details", key="audit_text", placeholder="no text filter",
                             help="Case-insensitive; searched in the event's details.")
        st.form_submit_button("Search", key="audit_search", icon=":material/search:")

    flt = search_svc.AuditFilter(
        since=_when(since_day, since_at, end=False), until=_when(until_day, until_at, end=True), actor=actor,
        action_prefix=action_prefix, action=action, object_type=object_type, object_id=object_id,
        model_version=model_version, text=text)


    # --- results: one audited search per filter and page, not per rerun ----------------------------------------------
    def _older(cursor: int) -> None:
        state.cursors.append(cursor)


    def _newer() -> None:
        if len(state.cursors) > 1:
            state.cursors.pop()


    def _refresh() -> None:
        state.searched, state.actions = None, None


    if state.searched is not None and state.searched[0] != flt:
        state.cursors = [None]  # a new filter starts at the newest events
    key = (flt, state.cursors[-1])
    if state.searched != key:
        page = ui.call(search_svc.search, ctx, principal, flt, before_seq=key[1], limit=PAGE_ROWS)
        if page is not None:
            state.searched, state.page = key, page
    page = state.page if state.searched == key else None

    if page is not None:
        span = f": events {page.rows[0]['seq']} to {page.rows[-1]['seq']}" if page.rows else ""
        st.caption(f"{len(page.rows)} events shown, newest first (page {len(state.cursors)}{span}). Times are in UTC.")
        st.dataframe(_table(page.rows), hide_index=True, width="stretch", key="audit_results")
        b1, b2, b3, _ = st.columns([1, 1, 1, 3])
        b1.button("Newer", key="audit_newer", icon=":material/arrow_back:", on_click=_newer,
                  disabled=len(state.cursors) <= 1)
        b2.button("Older", key="audit_older", icon=":material/arrow_forward:", on_click=_older,
                  args=(page.next_before_seq,), disabled=page.next_before_seq is None)
        b3.button("Refresh", key="audit_refresh", icon=":material/refresh:", on_click=_refresh)

        # --- one event in full, with what happened around it ------------------------------------------------------
        by_seq = {r["seq"]: r for r in page.rows}
        picked = st.selectbox("Open an event", list(by_seq), index=None, key=f"audit_pick_{key[1]}",
                              placeholder="choose an event on this page",
                              format_func=lambda s: f"{s} · {_shown_time(by_seq[s]['ts'])} · {by_seq[s]['action']}")
        if picked is not None and picked != state.opened:
            detail = ui.call(search_svc.event_detail, ctx, principal, picked)
            if detail is not None:
                state.opened, state.detail = picked, detail
        if state.detail is not None:
            event, around = state.detail
            st.subheader(f"Event {event['seq']}")
            facts = {k: event[k] for k in ("seq", "actor", "actor_id", "action", "object_type", "object_id",
                                           "details_hash", "prev_hash", "hash", "erased_at")}
            facts = {"time (UTC)": _shown_time(event["ts"]), **facts}
            st.dataframe(pd.DataFrame({"field": list(facts), "value": [str(v) for v in facts.values()]}),
                         hide_index=True, width="stretch", key="audit_event_facts")
            st.json(event["details"])
            st.caption("Around it (unfiltered, in order):")
            st.dataframe(_table(around, marked=event["seq"]), hide_index=True, width="stretch", key="audit_around")
    return flt
