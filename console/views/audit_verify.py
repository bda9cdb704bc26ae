"""The Audit log page's integrity panel: the console's own scheduled verification (its last verdict, the schedule and
the newest runs), verify the hash chain against the signed checkpoints now, and download every checkpoint to keep
where the database's owners cannot write."""

from __future__ import annotations

from datetime import UTC, datetime

import streamlit as st

from console import ui
from console.services import audit as audit_svc
from console.services import audit_watch
from console.services.access import Principal
from console.services.context import AppContext
from console.textsafe import escape_markdown

TRIGGER_LABELS = {"schedule": "automatic", "manual": "Audit page", "cli": "command line"}


def _utc(at: datetime) -> str:
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _verdict(run: audit_watch.VerificationRun) -> str:
    if run.ok:
        return "intact"
    where = f" at event {run.first_bad_seq}" if run.first_bad_seq is not None else ""
    return f"damaged ({run.kind or 'unknown damage'}){where}"


def schedule_panel(ctx: AppContext, principal: Principal) -> None:
    """The last automatic verification (green when intact, red with the first bad event), the schedule, and the
    newest runs of every kind (a verify just run on this page among them)."""
    status = ui.call(audit_watch.verification_status, ctx, principal)
    if status is None:
        return
    schedule = (f"every {status.every_minutes} minute{'' if status.every_minutes == 1 else 's'}"
                if status.every_minutes else "off (LLM_CONSOLE_AUDIT_VERIFY_MINUTES=0)")
    last = status.last_automatic
    if last is None:
        st.info(f"No automatic verification yet. Schedule: {schedule}"
                + (" (the first runs about a minute after the console starts)." if status.every_minutes else "."))
    elif last.ok:
        st.success(f"Last automatic verification: {_utc(last.finished_at)}, {last.checked:,} events, intact "
                   f"({last.duration_ms:,.0f} ms). Schedule: {schedule}.")
    else:
        st.error(f"Last automatic verification: {_utc(last.finished_at)}: the chain is {_verdict(last)}: "
                 f"{escape_markdown(last.reason or 'no reason given')}. Schedule: {schedule}.")
    if status.recent:
        with st.expander(f"The newest {len(status.recent)} verifications", expanded=False):
            st.dataframe([{
                "started (UTC)": _utc(r.started_at), "by": TRIGGER_LABELS.get(r.trigger, r.trigger),
                "verdict": _verdict(r), "events": r.checked, "duration (ms)": round(r.duration_ms)}
                for r in status.recent], hide_index=True, width="stretch", key="audit_verifications_table")


def verify_panel(ctx: AppContext, principal: Principal) -> None:
    """The scheduled verification, the verify button with its verdict, and the checkpoints download."""
    st.divider()
    st.subheader("Integrity")
    # Filled after the button below, so that a verify run now is among the runs it lists.
    schedule = st.container()
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
    with schedule:
        schedule_panel(ctx, principal)


    def _checkpoint_file() -> bytes:
        # Runs when the button is clicked (on Streamlit's download thread): a fresh checkpoint, then every one signed.
        return audit_svc.checkpoints_file(ctx, principal)


    st.download_button("Download the signed checkpoints", _checkpoint_file, file_name="audit-checkpoints.jsonl",
                       mime="application/jsonl", key="audit_checkpoints_download", icon=":material/download:",
                       on_click="ignore",
                       help="Keep this file where the database's owners cannot write: `llm-console audit verify "
                            "--checkpoints FILE` checks the log against it, so a cut or rewritten log shows.")
