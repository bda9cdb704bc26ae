"""Reviewers and admins: promotion requests (four eyes), canaries, rollback, the watch window and each version's
history. The canary parts are :mod:`console.views.promotions_canary`."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import plotly.express as px
import streamlit as st

from console import ui
from console.services import canary as canary_svc
from console.services import promotion as promotion_svc
from console.services import promotions_view_model as pvm
from console.services import registry, timelines, watch
from console.services.access import allowed
from console.textsafe import escape_markdown as esc
from console.views import promotions_canary

principal = ui.require_page("promotions")
ctx = ui.app_context()
state = ui.session().promotions
can_request = allowed(principal.roles, "promotion.request")
can_decide = allowed(principal.roles, "promotion.approve")
can_rollback = allowed(principal.roles, "models.emergency_rollback")
can_acknowledge = allowed(principal.roles, "models.acknowledge_emergency")

st.title("Promotions")
if state.flash:
    st.success(esc(state.flash))
    state.flash = None


def _done(message: str) -> None:
    state.flash, state.round = message, state.round + 1
    st.rerun()


for move in ui.emergency_warnings(ctx, principal, link=False):
    if can_acknowledge and move.actor_id != principal.user_id:
        with st.form(f"ack_{move.id}_{state.round}"):
            note = st.text_input("Note (recorded)", key=f"ack_note_{move.id}_{state.round}", max_chars=1000)
            if st.form_submit_button(f"Acknowledge emergency move #{move.id}"):
                if ui.call(registry.acknowledge_emergency, ctx, principal, move.id, note) is not None:
                    _done(f"Emergency move #{move.id} is acknowledged.")

production = ui.call(watch.production_state, ctx, principal)
if production is not None:
    st.markdown(f"**Production:** {esc(production.current or 'none')}")
    for notice in pvm.production_notices(production):
        if notice.level == "caption":
            st.caption(notice.text)
        else:
            getattr(st, notice.level)(notice.text, icon=notice.icon)

for running in ui.call(promotion_svc.list_requests, ctx, principal, canary_svc.RUNNING) or []:
    if (stopped := promotions_canary.running_panel(ctx, principal, running, can_stop=can_decide,
                                                   round_=state.round)) is not None:
        _done(stopped)

tab_names = ["Pending", *(["Request"] if can_request else []), *(["Emergency rollback"] if can_rollback else []),
             "History"]
tabs = dict(zip(tab_names, st.tabs(tab_names), strict=True))


def _gates(request: promotion_svc.RequestView) -> None:
    st.markdown(pvm.gate_badges(request))
    st.dataframe(pd.DataFrame(pvm.gate_rows(request)), hide_index=True, key=f"gates_{request.id}")
    with st.expander("Frozen reports: candidate and baseline"):
        st.dataframe(pd.DataFrame(pvm.report_rows(request)), hide_index=True, key=f"reports_{request.id}")


with tabs["Pending"]:
    pending = ui.call(promotion_svc.list_requests, ctx, principal, "pending") or []
    if not pending:
        st.info("No promotion request is waiting for a decision.")
    for r in pending:
        with st.container(border=True):
            st.markdown(pvm.request_heading(r))
            if (moved := pvm.moved_warning(r)) is not None:
                st.warning(moved, icon=":material/history:")
            promotions_canary.show_plan(r)
            _gates(r)
            if r.requested_by_id == principal.user_id:
                st.caption("Your request: another reviewer or admin decides it.")
                if can_request and st.button("Cancel this request", key=f"cancel_{r.id}_{state.round}"):
                    if ui.call(promotion_svc.cancel, ctx, principal, r.id) is not None:
                        _done(f"Request #{r.id} is cancelled.")
            elif can_decide:
                with st.form(f"decide_{r.id}_{state.round}"):
                    note = st.text_input("Note (recorded)", key=f"decide_note_{r.id}_{state.round}", max_chars=1000)
                    override = st.text_input(
                        f"Override reason ({len(r.failed_gates)} gate(s) failed: required to approve)",
                        key=f"decide_override_{r.id}_{state.round}", max_chars=1000) if r.failed_gates else None
                    if st.form_submit_button("Approve and start the canary" if r.is_canary else "Approve",
                                             type="primary"):
                        if (done := ui.call(promotion_svc.approve, ctx, principal, r.id, note, override)) is None:
                            pass
                        elif done.canary_ends_at is not None:
                            _done(f"Approved: the canary of {r.version} runs until {done.canary_ends_at:%H:%M} UTC; "
                                  f"{r.alias} stays on {r.from_version or 'its version'} until it is decided.")
                        else:
                            _done(f"Approved: {r.alias} now points at {r.version}.")
                    if st.form_submit_button("Reject"):
                        if ui.call(promotion_svc.reject, ctx, principal, r.id, note) is not None:
                            _done(f"Request #{r.id} is rejected.")

    decided = [r for r in ui.call(promotion_svc.list_requests, ctx, principal, None, 50) or [] if r.status != "pending"]
    if decided:
        st.subheader("Recent decisions")
        st.dataframe(pd.DataFrame([{"#": r.id, "alias": r.alias, "version": r.version, "status": r.status,
                                    "asked by": r.requested_by, "decided by": r.decided_by or "",
                                    "note": r.decision_note or "", "override": r.override_reason or "",
                                    "decided": r.decided_at, "canary": "yes" if r.is_canary else ""}
                                   for r in decided]), hide_index=True, key="decided")
        for r in [r for r in decided if r.is_canary and r.status in ("approved", "rolled_back")][:3]:
            promotions_canary.ended(ctx, principal, r)

choices = ui.call(timelines.version_choices, ctx, principal) or []

if "Request" in tabs:
    with tabs["Request"]:
        as_canary = st.checkbox("Release as a canary (production only: a share of new conversations first, "
                                "decided by a sequential test)", key=f"request_canary_{state.round}")
        with st.form(f"request_form_{state.round}"):
            version = st.selectbox("Version", [c.name for c in choices if not c.retired], index=None,
                                   key=f"request_version_{state.round}")
            alias = st.text_input("Alias", value="production", key=f"request_alias_{state.round}", max_chars=60)
            reason = st.text_input("Reason (recorded)", key=f"request_reason_{state.round}", max_chars=1000)
            fields = promotions_canary.plan_fields(f"request_plan_{state.round}") if as_canary else None
            if st.form_submit_button("Request promotion", type="primary"):
                plan = None if fields is None else ui.call(canary_svc.parse_plan, **fields)
                if version is None:
                    st.error("Choose a version.")
                elif fields is not None and plan is None:
                    pass  # parse_plan's error is shown; nothing is stored
                elif (made := ui.call(promotion_svc.request_promotion, ctx, principal, version, alias, reason,
                                      plan)):
                    kind = "Canary request" if made.is_canary else "Request"
                    _done(f"{kind} #{made.id} to move {made.alias} to {made.version} waits for another person's "
                          f"decision ({len(made.failed_gates)} gate(s) failed).")

if "Emergency rollback" in tabs:
    with tabs["Emergency rollback"]:
        if production is None or production.previous is None:
            st.info(esc(production.no_rollback if production and production.no_rollback
                        else "There is no previous production version to roll back to."))
        else:
            target = production.previous
            with st.form(f"rollback_form_{state.round}"):
                st.caption(f"Returns production from {esc(production.current or '-')} to {esc(target)}, the version "
                           "that held it just before (no other), without a second approval; every console switches "
                           "back within seconds. Recorded as an emergency rollback and shown to every admin until "
                           "another admin acknowledges it.")
                reason = st.text_input("Reason (required, recorded)", key=f"rollback_reason_{state.round}",
                                       max_chars=1000)
                if st.form_submit_button("Roll back now"):
                    if (rolled := ui.call(promotion_svc.rollback, ctx, principal, reason)) is not None:
                        _done(f"Rolled back: production returns from {rolled.from_version} to {rolled.to_version}. "
                              "Another admin must acknowledge it.")

with tabs["History"]:
    days = st.selectbox("Served in the last", [1, 7, 30, 90], index=1, format_func=lambda d: f"{d} day(s)",
                        key="history_days")
    served = ui.call(timelines.served_timeline, ctx, principal, ctx.now() - timedelta(days=days)) or []
    if served:
        chart = pd.DataFrame([{"version": i.version, "start": i.start, "end": i.end} for i in served])
        st.plotly_chart(px.timeline(chart, x_start="start", x_end="end", y="version", color="version",
                                    title="Which version served production"), width="stretch")
    name = st.selectbox("Version", [c.name for c in choices], index=None, key="history_version")
    if name is not None:
        timeline = ui.call(timelines.version_history, ctx, principal, name) or []
        st.dataframe(pd.DataFrame([{"when": t.at, "what": t.kind, "by": t.actor or "", "details": t.summary}
                                   for t in timeline]), hide_index=True, width="stretch", key="history_timeline")
