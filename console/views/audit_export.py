"""The Audit log page's export panel: one click exports what the search filter shows (into the export folder, with
its manifest) and offers the download; raw-text exports are asked for, approved by another admin and run once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from functools import partial

import streamlit as st

from console import ui
from console.services import access
from console.services import audit_search as search_svc
from console.services import export_approvals as approvals_svc
from console.services import exports as exports_svc
from console.services.access import Principal
from console.services.context import AppContext
from console.services.errors import InvalidInput
from console.textsafe import escape_markdown

EXPORT_KINDS = {"events": "Audit events", "exchanges": "Exchanges", "decisions": "Review decisions"}
EXPORT_FORMATS = {"csv": "CSV", "jsonl": "JSON Lines", "parquet": "Parquet"}


def _run_export(state: ui.AuditPageState, run: Callable[[], exports_svc.ExportResult]) -> bool:
    """Write the export into the export folder; the browser then fetches it from the console's own route, which
    streams the file in chunks (never whole in memory) and deletes it once sent."""
    with ui.shows_errors():
        result = run()
        state.last_manifest = result.manifest_path.read_bytes()
        if result.file_id is not None and result.expires_at is not None:
            state.last_export = (result.file_id, result.path.name, result.expires_at)
        return True
    return False


def _export_link(state: ui.AuditPageState) -> None:
    if state.last_export is None:
        return
    file_id, name, expires = state.last_export
    st.link_button(f"Download {name}", f"exports/{file_id}", key="audit_export_link", icon=":material/download:",
                   help="One download: the file is deleted once it has been sent.")
    st.caption(f"Kept until it is downloaded, or until {expires.astimezone(UTC):%Y-%m-%d %H:%M} UTC.")


def _manifest_data(state: ui.AuditPageState) -> bytes:
    if state.last_manifest is None:
        raise RuntimeError("no export has finished in this session yet")
    return state.last_manifest



def export_panel(ctx: AppContext, principal: Principal, state: ui.AuditPageState, flt: search_svc.AuditFilter) -> None:
    """The export of the filter's events, exchanges or decisions, and raw-text exports under four eyes."""
    if access.allowed(principal.roles, "audit.export"):
        st.divider()
        st.subheader("Export")
        if state.export_error:
            st.error(escape_markdown(state.export_error))
            state.export_error = None
        e1, e2 = st.columns(2)
        what = e1.selectbox("What", list(EXPORT_KINDS), format_func=EXPORT_KINDS.__getitem__,
                            key="audit_export_what")
        fmt = e2.selectbox("Format", list(EXPORT_FORMATS), format_func=EXPORT_FORMATS.__getitem__,
                           key="audit_export_format")
        left_out = search_svc.not_exported(flt, what)
        st.caption("Uses every filter above." if what == "events" else
                   "Uses the time range, the actor (the exchange's user, or the reviewer) and the model version above."
                   + (f" Not applied to this export: {', '.join(left_out)}." if left_out else ""))
        try:
            spec = search_svc.export_spec(flt, what, fmt)
        except InvalidInput:  # the search above already says what is wrong with the filter
            st.caption("Correct the filters above to export.")
        else:
            if st.button(f"Export {EXPORT_KINDS[what].lower()} ({EXPORT_FORMATS[fmt]})", key="audit_export_run",
                         icon=":material/file_export:"):
                _run_export(state, lambda: exports_svc.run_export(ctx, principal, spec,
                                                                  exports_svc.default_export_path(ctx, spec)))
            _export_link(state)
            st.download_button("Download the manifest of my last export", lambda: _manifest_data(state),
                               file_name=f"{what}.{fmt}.manifest.json", mime="application/json",
                               key="audit_export_manifest", disabled=state.last_manifest is None,
                               help="What was exported, its SHA-256 and the signed checkpoint it is anchored to.")

    if access.allowed(principal.roles, "audit.export_raw"):
        st.subheader("Raw text export")
        st.caption("Exchanges with their unredacted text. Another admin must approve; only you can run it, once.")
        with st.form(f"audit_raw_request_{state.round}"):
            raw_fmt = st.selectbox("Format", list(EXPORT_FORMATS), format_func=EXPORT_FORMATS.__getitem__,
                                   key="audit_raw_format")
            reason = st.text_area("Why you need the raw text (recorded)", key="audit_raw_reason", max_chars=2000)
            if st.form_submit_button("Ask for a raw text export", key="audit_raw_submit"):
                with ui.shows_errors():
                    spec = search_svc.export_spec(flt, "exchanges", raw_fmt)
                    asked = approvals_svc.request_raw_export(ctx, principal, spec, reason)
                    state.flash, state.round = f"Raw text export #{asked.id} requested.", state.round + 1
                    st.rerun()
        requests = ui.call(approvals_svc.list_export_requests, ctx, principal) or []
        for r in requests:
            mine = r.requested_by_id == principal.user_id
            if r.status not in ("pending", "approved") or (not mine and r.status != "pending"):
                continue
            with st.container(border=True, key=f"audit_raw_request_{r.id}"):
                shown_format = EXPORT_FORMATS.get(r.format, r.format)
                st.markdown(escape_markdown(f"#{r.id} · {r.status} · {shown_format} · asked by "
                                            f"{r.requested_by} on {r.created_at:%Y-%m-%d %H:%M} UTC: {r.reason}"))
                if not mine:
                    note = st.text_input("Note (optional)", key=f"audit_raw_note_{r.id}")
                    a, b, _ = st.columns([1, 1, 3])
                    for column, approve, label in ((a, True, "Approve"), (b, False, "Reject")):
                        if column.button(label, key=f"audit_raw_{label.lower()}_{r.id}"):
                            with ui.shows_errors():
                                approvals_svc.decide_raw_export(ctx, principal, r.id, approve, note or None)
                                state.flash = f"Raw text export #{r.id} {'approved' if approve else 'rejected'}."
                                st.rerun()
                    continue
                a, b, _ = st.columns([2, 1, 2])
                if r.status == "approved":
                    if a.button("Run the export (once)", key=f"audit_raw_run_{r.id}", icon=":material/file_export:"):
                        out = exports_svc.default_export_path(ctx, exports_svc.ExportSpec("exchanges", r.format))
                        if _run_export(state, partial(approvals_svc.run_approved_raw_export, ctx, principal,
                                                      r.id, out)):
                            state.flash = "The raw text export is written: download it above (once)."
                            st.rerun()
                if b.button("Cancel", key=f"audit_raw_cancel_{r.id}"):
                    with ui.shows_errors():
                        approvals_svc.cancel_raw_export(ctx, principal, r.id)
                        state.flash = f"Raw text export #{r.id} cancelled."
                        st.rerun()

