"""Analysts and admins: search the audit log (newest first, keyset pages), open an event, verify the chain, export.

One panel per module: ``audit_search`` (filters, results, one event), ``audit_verify`` (the chain and its
checkpoints), ``audit_export`` (exports and raw-text exports under four eyes)."""

from __future__ import annotations

import streamlit as st

from console import ui
from console.textsafe import escape_markdown
from console.views import audit_export, audit_search, audit_verify

principal = ui.require_page("audit")
ctx = ui.app_context()
state = ui.session().audit

st.title("Audit log")
if state.flash:
    st.success(escape_markdown(state.flash))
    state.flash = None

flt = audit_search.search_panel(ctx, principal, state)

# --- the hash chain (the panel draws its own heading) ---------------------------------------------------------------
audit_verify.verify_panel(ctx, principal)

# --- exports: one click runs the export (into the export folder, with its manifest) and downloads it ---------------
audit_export.export_panel(ctx, principal, state, flt)
