"""The Audit log page's integrity panel: verify the hash chain against the signed checkpoints, and download every
checkpoint to keep where the database's owners cannot write."""

from __future__ import annotations

import streamlit as st

from console import ui
from console.services import audit as audit_svc
from console.services.access import Principal
from console.services.context import AppContext
from console.textsafe import escape_markdown


def verify_panel(ctx: AppContext, principal: Principal) -> None:
    """The verify button with its verdict, and the checkpoints download."""
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
                st.caption(f"Events {first} to {report.checked} are chained but not yet anchored: a checkpoint is "
                           "signed every minute while the log grows, at every export and at shutdown.")
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
