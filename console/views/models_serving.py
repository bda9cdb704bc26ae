"""The Models page's Serve and Restart tabs: the first version of an installation, a retried switch, an engine
restart. Every other move of production goes through the Promotions page."""

from __future__ import annotations

import streamlit as st

from console import ui
from console.services import serving as serving_svc
from console.services.access import Principal
from console.services.context import AppContext
from console.textsafe import escape_markdown
from console.ui import ModelsPageState


def serve_tab(ctx: AppContext, principal: Principal, state: ModelsPageState, servable: list[str],
              production: str | None) -> None:
    """Serve the first version while nothing holds production; else say it is protected (and offer a retry of
    a failed switch to it)."""
    if production is None:
        with st.form(f"serve_form_{state.round}"):
            st.caption("No version holds production yet: the first version may be served by one admin. From then "
                       "on, production moves only through an approved promotion.")
            name = st.selectbox("Version", servable, index=None, key=f"serve_version_{state.round}")
            reason = st.text_input("Reason (recorded in the audit log)", key=f"serve_reason_{state.round}",
                                   max_chars=1000)
            if st.form_submit_button("Serve this version", type="primary"):
                if name is None:
                    st.error("Choose a version to serve.")
                elif ui.call(serving_svc.serve, ctx, principal, name, reason) is not None:
                    state.flash = f"{name} now holds production; the console is switching to it."
                    state.round += 1
                    st.rerun()
    else:
        st.info(f"Production ({escape_markdown(production)}) is protected: moving it to another version needs an "
                "approved promotion (one admin asks, another approves). In an emergency, one admin may roll it "
                "back to the version that held it just before, on the Promotions page.", icon=":material/lock:")
        ui.page_link("promotions", "Request a promotion or roll back on the Promotions page")
        failed = serving_svc.last_switch_problem(ctx)
        if failed is not None and failed.version == production:
            with st.form(f"retry_form_{state.round}"):
                st.caption(f"The switch to {escape_markdown(production)} failed; retrying loads it again (it "
                           "moves nothing).")
                reason = st.text_input("Reason (recorded in the audit log)", key=f"retry_reason_{state.round}",
                                       max_chars=1000)
                if st.form_submit_button(f"Retry the switch to {production}"):
                    if ui.call(serving_svc.serve, ctx, principal, production, reason) is not None:
                        state.flash = f"Retrying the switch to {production}."
                        state.round += 1
                        st.rerun()


def restart_tab(ctx: AppContext, principal: Principal, state: ModelsPageState) -> None:
    """Ask every console to restart its engine."""
    with st.form(f"restart_form_{state.round}"):
        st.caption("Restarts the engine of the version being served (for example after it stopped working). "
                   "Answers in progress are cut; new chats wait for the engine to be back.")
        reason = st.text_input("Reason (recorded in the audit log)", key=f"restart_reason_{state.round}",
                               max_chars=1000)
        if st.form_submit_button("Restart the engine"):
            if ui.call(serving_svc.request_restart, ctx, principal, reason) is not None:
                state.flash = "Restart requested; the engine restarts within seconds."
                state.round += 1
                st.rerun()
