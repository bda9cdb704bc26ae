"""Analysts and admins: search the audit log, verify its hash chain, export it."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from console import ui
from console.services import access
from console.services import audit as audit_svc

principal = ui.require_page("audit")
ctx = ui.app_context()

st.title("Audit log")
c1, c2, c3, c4 = st.columns(4)
since = c1.date_input("From", value=None, key="audit_since")
until = c2.date_input("To", value=None, key="audit_until")
actor = c3.text_input("Actor", key="audit_actor")
action = c4.text_input("Action starts with", key="audit_action", placeholder="auth.")
flt = audit_svc.AuditFilter(since, until, actor, action)

rows = ui.call(audit_svc.search, ctx, principal, flt)
if rows is not None:
    st.caption(f"{len(rows)} events shown (at most {audit_svc.MAX_ROWS_ON_SCREEN}; export for all).")
    st.dataframe(pd.DataFrame([{**r, "details": json.dumps(r["details"], ensure_ascii=False)} for r in rows]),
                 hide_index=True, width="stretch")

left, right = st.columns(2)
if left.button("Verify the hash chain", key="audit_verify", icon=":material/verified:"):
    report = ui.call(audit_svc.verify, ctx, principal)
    if report is not None:
        if report.ok:
            st.success(f"The chain is intact: {report.checked} events verified.")
        else:
            st.error(f"The chain is broken at event {report.first_bad_seq}: {report.reason}")

if access.allowed(principal.roles, "audit.export"):
    if right.button("Prepare CSV export", key="audit_export"):
        data = ui.call(audit_svc.export_csv, ctx, principal, flt)
        if data is not None:
            st.download_button("Download audit.csv", data, file_name="audit.csv", mime="text/csv",
                               key="audit_download")
