"""Analysts and admins: search the audit log (newest first, keyset pages), open an event, verify the chain, export."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta

import pandas as pd
import streamlit as st

from console import ui
from console.services import access
from console.services import audit as audit_svc
from console.services import exports as exports_svc
from console.services.errors import InvalidInput
from console.textsafe import escape_markdown

PAGE_ROWS = 100
EXPORT_KINDS = {"events": "Audit events", "exchanges": "Exchanges", "decisions": "Review decisions"}
EXPORT_FORMATS = {"csv": "CSV", "jsonl": "JSON Lines", "parquet": "Parquet"}

principal = ui.require_page("audit")
ctx = ui.app_context()
state = ui.session().audit

st.title("Audit log")
if state.flash:
    st.success(escape_markdown(state.flash))
    state.flash = None


def _when(day: date | None, at: time | None, *, end: bool) -> datetime | None:
    """A picked day and time as UTC; a day without a time is its start (or, for the end, the next day's start)."""
    if day is None:
        return None
    if at is None:
        return datetime.combine(day + timedelta(days=1) if end else day, time.min, UTC)
    return datetime.combine(day, at.replace(second=0, microsecond=0), UTC)


def _shown_time(ts: str) -> str:
    return datetime.fromisoformat(ts).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(rows: list[dict], marked: int | None = None) -> pd.DataFrame:
    frame = pd.DataFrame([{
        **({"": "▶" if r["seq"] == marked else ""} if marked is not None else {}),
        "Event": r["seq"], "Time (UTC)": _shown_time(r["ts"]), "Actor": r["actor"], "Action": r["action"],
        "Target": ":".join(str(p) for p in (r["object_type"], r["object_id"]) if p is not None),
        "Details": json.dumps(r["details"], ensure_ascii=False, sort_keys=True),
    } for r in rows])
    return frame if rows else pd.DataFrame(columns=["Event", "Time (UTC)", "Actor", "Action", "Target", "Details"])


def _run_export(run: Callable[[], exports_svc.ExportResult]) -> bool:
    """Write the export into the export folder; the browser then fetches it from the console's own route, which
    streams the file in chunks (never whole in memory) and deletes it once sent."""
    with ui.shows_errors():
        result = run()
        state.last_manifest = result.manifest_path.read_bytes()
        if result.file_id is not None and result.expires_at is not None:
            state.last_export = (result.file_id, result.path.name, result.expires_at)
        return True
    return False


def _export_link() -> None:
    if state.last_export is None:
        return
    file_id, name, expires = state.last_export
    st.link_button(f"Download {name}", f"exports/{file_id}", key="audit_export_link", icon=":material/download:",
                   help="One download: the file is deleted once it has been sent.")
    st.caption(f"Kept until it is downloaded, or until {expires.astimezone(UTC):%Y-%m-%d %H:%M} UTC.")


def _manifest_data() -> bytes:
    if state.last_manifest is None:
        raise RuntimeError("no export has finished in this session yet")
    return state.last_manifest


# --- filters: applied when "Search" is pressed ---------------------------------------------------------------------
if state.actions is None:
    state.actions = ui.call(audit_svc.actions, ctx, principal)
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

flt = audit_svc.AuditFilter(
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
    page = ui.call(audit_svc.search, ctx, principal, flt, before_seq=key[1], limit=PAGE_ROWS)
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
        detail = ui.call(audit_svc.event_detail, ctx, principal, picked)
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

# --- the hash chain ------------------------------------------------------------------------------------------------
st.divider()
st.subheader("Integrity")
if st.button("Verify the hash chain", key="audit_verify", icon=":material/verified:"):
    report = ui.call(audit_svc.verify, ctx, principal)
    if report is not None:
        if report.ok:
            st.success(f"The chain is intact: {report.checked} events verified.")
        else:
            where = f" at event {report.first_bad_seq}" if report.first_bad_seq is not None else ""
            st.error(escape_markdown(f"The chain is damaged ({report.kind or 'unknown damage'}){where}: "
                                     f"{report.reason or 'no reason given'}"))
        n = report.checkpoints_checked
        checked = f"{n} signed checkpoint{'' if n == 1 else 's'} checked"
        if report.anchored_seq:
            st.info(f"{checked}; events 1 to {report.anchored_seq} are anchored by the newest.")
        else:
            st.info(f"{checked}; none covers an event yet.")
        if report.ok and report.anchored_seq < report.checked:
            first = report.anchored_seq + 1
            st.caption(f"Events {first} to {report.checked} are chained but not yet anchored: a checkpoint is signed "
                       "every minute while the log grows, at every export and at shutdown.")
        for warning in report.warnings:
            st.warning(escape_markdown(warning))


def _checkpoint_file() -> bytes:
    # Runs when the button is clicked (on Streamlit's download thread): a fresh checkpoint, then every one signed.
    return audit_svc.checkpoints_file(ctx, principal)


st.download_button("Download the signed checkpoints", _checkpoint_file, file_name="audit-checkpoints.jsonl",
                   mime="application/jsonl", key="audit_checkpoints_download", icon=":material/download:",
                   on_click="ignore",
                   help="Keep this file where the database's owners cannot write: `llm-console audit verify "
                        "--checkpoints FILE` checks the log against it, so a cut or rewritten log shows.")

# --- exports: one click runs the export (into the export folder, with its manifest) and downloads it ---------------
if access.allowed(principal.roles, "audit.export"):
    st.divider()
    st.subheader("Export")
    if state.export_error:
        st.error(escape_markdown(state.export_error))
        state.export_error = None
    e1, e2 = st.columns(2)
    what = e1.selectbox("What", list(EXPORT_KINDS), format_func=EXPORT_KINDS.get, key="audit_export_what")
    fmt = e2.selectbox("Format", list(EXPORT_FORMATS), format_func=EXPORT_FORMATS.get, key="audit_export_format")
    left_out = audit_svc.not_exported(flt, what)
    st.caption("Uses every filter above." if what == "events" else
               "Uses the time range, the actor (the exchange's user, or the reviewer) and the model version above."
               + (f" Not applied to this export: {', '.join(left_out)}." if left_out else ""))
    try:
        spec = audit_svc.export_spec(flt, what, fmt)
    except InvalidInput:  # the search above already says what is wrong with the filter
        st.caption("Correct the filters above to export.")
    else:
        if st.button(f"Export {EXPORT_KINDS[what].lower()} ({EXPORT_FORMATS[fmt]})", key="audit_export_run",
                     icon=":material/file_export:"):
            _run_export(lambda: exports_svc.run_export(ctx, principal, spec,
                                                       exports_svc.default_export_path(ctx, spec)))
        _export_link()
        st.download_button("Download the manifest of my last export", _manifest_data,
                           file_name=f"{what}.{fmt}.manifest.json", mime="application/json",
                           key="audit_export_manifest", disabled=state.last_manifest is None,
                           help="What was exported, its SHA-256 and the signed checkpoint it is anchored to.")

if access.allowed(principal.roles, "audit.export_raw"):
    st.subheader("Raw text export")
    st.caption("Exchanges with their unredacted text. Another admin must approve; only you can run it, once.")
    with st.form(f"audit_raw_request_{state.round}"):
        raw_fmt = st.selectbox("Format", list(EXPORT_FORMATS), format_func=EXPORT_FORMATS.get, key="audit_raw_format")
        reason = st.text_area("Why you need the raw text (recorded)", key="audit_raw_reason", max_chars=2000)
        if st.form_submit_button("Ask for a raw text export", key="audit_raw_submit"):
            with ui.shows_errors():
                asked = exports_svc.request_raw_export(ctx, principal, audit_svc.export_spec(flt, "exchanges", raw_fmt),
                                                       reason)
                state.flash, state.round = f"Raw text export #{asked.id} requested.", state.round + 1
                st.rerun()
    requests = ui.call(exports_svc.list_export_requests, ctx, principal) or []
    for r in requests:
        mine = r.requested_by_id == principal.user_id
        if r.status not in ("pending", "approved") or (not mine and r.status != "pending"):
            continue
        with st.container(border=True, key=f"audit_raw_request_{r.id}"):
            st.markdown(escape_markdown(f"#{r.id} · {r.status} · {EXPORT_FORMATS.get(r.format, r.format)} · asked by "
                                        f"{r.requested_by} on {r.created_at:%Y-%m-%d %H:%M} UTC: {r.reason}"))
            if not mine:
                note = st.text_input("Note (optional)", key=f"audit_raw_note_{r.id}")
                a, b, _ = st.columns([1, 1, 3])
                for column, approve, label in ((a, True, "Approve"), (b, False, "Reject")):
                    if column.button(label, key=f"audit_raw_{label.lower()}_{r.id}"):
                        with ui.shows_errors():
                            exports_svc.decide_raw_export(ctx, principal, r.id, approve, note or None)
                            state.flash = f"Raw text export #{r.id} {'approved' if approve else 'rejected'}."
                            st.rerun()
                continue
            a, b, _ = st.columns([2, 1, 2])
            if r.status == "approved":
                if a.button("Run the export (once)", key=f"audit_raw_run_{r.id}", icon=":material/file_export:"):
                    out = exports_svc.default_export_path(ctx, exports_svc.ExportSpec("exchanges", r.format))
                    if _run_export(lambda rid=r.id, out=out: exports_svc.run_approved_raw_export(
                            ctx, principal, rid, out)):
                        state.flash = "The raw text export is written: download it above (once)."
                        st.rerun()
            if b.button("Cancel", key=f"audit_raw_cancel_{r.id}"):
                with ui.shows_errors():
                    exports_svc.cancel_raw_export(ctx, principal, r.id)
                    state.flash = f"Raw text export #{r.id} cancelled."
                    st.rerun()
