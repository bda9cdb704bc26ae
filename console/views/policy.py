"""The safety policy in force, and changes to it as requests: an admin proposes (with a backtest), another approves."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from console import ui
from console.services import access
from console.services import backtest as backtest_svc
from console.services import policy as policy_svc
from console.services import policy_changes as changes_svc
from console.services.policy_changes import ChangeView
from console.textsafe import escape_markdown as esc

principal = ui.require_page("policy")
ctx = ui.app_context()
state = ui.session().policy
can_manage = access.allowed(principal.roles, "policy.manage")

st.title("Safety policy")
if state.flash:
    st.success(esc(state.flash))
    state.flash = None


def _done(message: str) -> None:
    state.flash, state.round = message, state.round + 1
    st.rerun()


def _pct(count: int, total: int) -> str:
    return f"{100 * count / total:.2f} %" if total else "-"


def _backtest(change: ChangeView) -> None:
    bt = change.backtest
    n, days = int(bt.get("exchanges", 0)), int(bt.get("days", change.days))
    before, after = int(bt.get("items_before", 0)), int(bt.get("items_after", 0))
    c1, c2, c3 = st.columns(3)
    c1.metric("Exchanges replayed", f"{n:,}", help=f"Real (not load-test) exchanges of the last {days} day(s).")
    c2.metric("Review items per day", f"{after / days:.1f} items/day", f"{(after - before) / days:+.1f} items/day",
              delta_color="off", help=f"Before: {before / days:.1f} items/day ({before:,} in {days} day(s)); "
                                      f"after: {after:,}.")
    c3.metric("Exchanges that change verdict", f"{int(bt.get('changed', 0)):,}")
    labels = bt.get("labels") or []
    if labels:
        st.markdown("**Per label and direction** (share of the exchanges replayed)")
        st.dataframe(pd.DataFrame([{
            "direction": r["direction"], "label": r["label"],
            "flagged before": _pct(r["flag_before"], n), "flagged after": _pct(r["flag_after"], n),
            "blocked before": _pct(r["block_before"], n), "blocked after": _pct(r["block_after"], n),
        } for r in labels]), hide_index=True, width="stretch")
    else:
        st.caption("No label flags or blocks anything in this window under either policy.")
    daily = bt.get("daily") or []
    if daily:
        st.markdown("**Review items per day**, current policy against the proposed one")
        frame = pd.DataFrame([{"day": d["day"], "current (items/day)": d["items_before"],
                               "proposed (items/day)": d["items_after"]} for d in daily]).set_index("day")
        st.bar_chart(frame, stack=False, y_label="review items per day")
    examples = ui.call(changes_svc.examples, ctx, principal, change.id) or []
    if examples:
        st.markdown(f"**Exchanges that change verdict** (the {len(examples)} most recent, stored redacted text; "
                    "its events are on the Audit search page: target type exchange, target id the number)")
        st.dataframe(pd.DataFrame([{
            "exchange": f"#{e.id}", "at (UTC)": e.created_at, "before": e.before, "after": e.after,
            "labels": e.labels, "prompt (stored)": e.prompt, "answer (stored)": e.answer,
        } for e in examples]), hide_index=True, width="stretch")
    for limit in bt.get("limits") or []:
        st.caption(esc(limit))
    st.caption(f"Replayed in {float(bt.get('seconds', 0)):.2f} s from the stored findings; scanners were not re-run.")


def _pending(change: ChangeView) -> None:
    st.markdown(f"**#{change.id}: policy '{esc(change.file_version)}'** against revision {change.base_version}, "
                f"proposed by {esc(change.requested_by)} at {change.created_at:%Y-%m-%d %H:%M} UTC, backtested over "
                f"{change.days} day(s).")
    st.markdown(f"Reason: {esc(change.reason)}")
    if change.stale:
        st.warning(f"Stale: revision {change.base_version} is no longer in force, so this backtest compared with "
                   "another policy. It cannot be approved; reject or cancel it and propose again.",
                   icon=":material/history:")
    _backtest(change)
    with st.expander("What changes in the policy text"):
        st.code(change.diff or "(no difference)", language="diff")
    if not can_manage:
        return
    own = change.requested_by_id == principal.user_id
    with st.form(f"decide_{change.id}_{state.round}"):
        note = st.text_input("Note (recorded; required to reject)", key=f"note_{change.id}_{state.round}",
                             max_chars=changes_svc.MAX_REASON_CHARS)
        if own:
            st.caption("You proposed this change: another admin approves or rejects it.")
            if st.form_submit_button("Cancel my request"):
                if ui.call(changes_svc.cancel, ctx, principal, change.id, note) is not None:
                    _done(f"Request #{change.id} is cancelled.")
        else:
            a, r = st.columns(2)
            if a.form_submit_button("Approve and put in force", type="primary", disabled=change.stale):
                done = ui.call(changes_svc.approve, ctx, principal, change.id, note)
                if done is not None:
                    _done(f"Request #{change.id} is approved: policy '{done.file_version}' (stored revision "
                          f"{done.applied_version}) is in force; every console follows within seconds.")
            if r.form_submit_button("Reject"):
                if ui.call(changes_svc.reject, ctx, principal, change.id, note) is not None:
                    _done(f"Request #{change.id} is rejected.")


view = ui.call(policy_svc.current, ctx, principal)
if view is not None:
    if view.scanner_notice:
        st.warning(esc(view.scanner_notice))
    c1, c2, c3 = st.columns(3)
    c1.metric("Policy in force", view.file_version,
              help="The policy's own name: its `version` field, set by whoever wrote it.")
    c2.metric("Output mode", view.output_mode.replace("_", " "))
    c3.metric("Raw text kept", "yes" if view.keep_raw_text else "no")
    st.info(esc(view.raw_text_note), icon=":material/visibility:" if view.keep_raw_text else
            ":material/visibility_off:")
    st.caption(esc(f"Policy '{view.file_version}' (stored revision {view.version}): the console numbers each policy "
                   "text it stores 1, 2, 3, ...; every exchange records the revision that judged it. A change is a "
                   "request another admin approves, with a backtest of recent exchanges attached."))
    st.caption(esc("Scanners: " + ", ".join(f"{k} ({v})" for k, v in view.scanners.items())))
    # Which toxicity detector judges, and the policy table of thresholds that applies to its findings.
    for name, table in (("detoxify", "detoxify"), ("tox-block", "offline"), ("profanity-fallback", "fallback")):
        if name in view.scanners:
            st.markdown(f"**Toxicity is judged by** {esc(view.scanners[name])}. Its thresholds: "
                        f"`[toxicity.thresholds.{table}]` below, where the policy has that table (labels it "
                        "leaves out, and policies without it, use the rules' thresholds).")
    changes = ui.call(changes_svc.list_changes, ctx, principal) or []
    pending = [c for c in changes if c.status == "pending"]
    names = [f"Pending ({len(pending)})", *(["Propose a change"] if can_manage else []), "History", "Policy text"]
    tabs = dict(zip(names, st.tabs(names), strict=True))
    with tabs[names[0]]:
        if not pending:
            st.caption("No policy change is waiting for approval.")
        for change in pending:
            with st.container(border=True):
                _pending(change)
    if can_manage:
        with tabs["Propose a change"], st.form(f"propose_{state.round}"):
            st.caption("Nothing changes until another admin approves. The backtest replays the stored findings of "
                       "the last days through the policy in force and through yours.")
            content = st.text_area("Policy (TOML)", value=view.content, height=420, key=f"policy_content_{state.round}")
            reason = st.text_input("Reason for the change", key=f"policy_reason_{state.round}",
                                   max_chars=changes_svc.MAX_REASON_CHARS)
            days = st.number_input("Days to backtest", min_value=backtest_svc.MIN_DAYS, max_value=backtest_svc.MAX_DAYS,
                                   value=7, step=1, key=f"policy_days_{state.round}",
                                   help=f"{backtest_svc.MIN_DAYS} to {backtest_svc.MAX_DAYS} days of stored exchanges.")
            if st.form_submit_button("Validate, backtest and request approval", type="primary"):
                with st.spinner("Backtesting…"):
                    made = ui.call(changes_svc.propose, ctx, principal, content, reason, int(days))
                if made is not None:
                    _done(f"Request #{made.id} is waiting for another admin's approval (backtest of "
                          f"{made.backtest.get('exchanges', 0):,} exchanges attached).")
    with tabs["History"]:
        decided = [c for c in changes if c.status != "pending"]
        if decided:
            st.dataframe(pd.DataFrame([{
                "request": f"#{c.id}", "policy": c.file_version, "status": c.status,
                "stored revision": "-" if c.applied_version is None else str(c.applied_version), "proposed by": c.requested_by, "reason": c.reason,
                "decided by": c.decided_by, "note": c.decision_note or "",
                "decided at (UTC)": None if c.decided_at is None else f"{c.decided_at:%Y-%m-%d %H:%M}",
                "review items/day before → after": (f"{c.backtest.get('items_before', 0) / c.days:.1f} → "
                                                    f"{c.backtest.get('items_after', 0) / c.days:.1f}"),
            } for c in decided]), hide_index=True, width="stretch")
        else:
            st.caption("No policy change has been decided yet.")
    with tabs["Policy text"]:
        st.code(view.content, language="toml")
