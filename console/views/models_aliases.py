"""The Models page's Aliases and retirement tab (point an alias, protect one, retire a version) and its History tab
(every alias move)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from console import ui
from console.services import registry
from console.services.access import Principal
from console.services.context import AppContext
from console.services.registry import ModelVersionView
from console.ui import ModelsPageState


def aliases_tab(ctx: AppContext, principal: Principal, state: ModelsPageState, versions: list[ModelVersionView],
                held: dict[str, str]) -> None:
    """Point an alias at a version, protect an alias, retire a version (``held``: protected alias -> holder)."""
    servable = [v.name for v in versions if not v.retired]
    st.caption("Aliases other versions point at freely. A protected alias that a version holds moves only through "
               "an approved promotion" + (f" ({', '.join(held)})" if held else "") + ".")
    with st.form(f"alias_form_{state.round}"):
        name = st.selectbox("Version", servable, index=None, key=f"alias_version_{state.round}")
        alias = st.text_input("Alias", key=f"alias_name_{state.round}", placeholder="staging, candidate, ...",
                              max_chars=60)
        reason = st.text_input("Reason", key=f"alias_reason_{state.round}", max_chars=1000)
        if st.form_submit_button("Point the alias at this version"):
            if name is None:
                st.error("Choose a version.")
            elif ui.call(registry.set_alias, ctx, principal, name, alias, reason) is not None:
                state.flash = f"{alias.strip().lower()} now points at {name}."
                state.round += 1
                st.rerun()
    with st.form(f"protect_form_{state.round}"):
        st.caption("Protecting an alias is recorded in the audit log. It cannot be undone on this page: only on the "
                   "server, with `llm-console model protect ALIAS --off --break-glass REASON`, which every admin "
                   "sees until another admin acknowledges it.")
        alias = st.text_input("Alias to protect", key=f"protect_alias_{state.round}", max_chars=60,
                              placeholder="staging")
        reason = st.text_input("Reason", key=f"protect_reason_{state.round}", max_chars=1000)
        if st.form_submit_button("Protect this alias"):
            if ui.call(registry.protect_alias, ctx, principal, alias, reason) is not None:
                state.flash = f"{alias.strip().lower()} is protected: it now moves only through a promotion."
                state.round += 1
                st.rerun()
    # A version holding a protected alias is not offered: retiring it would free the alias for one person.
    retirable = [v.name for v in versions if not v.retired and v.name not in held.values()]
    with st.form(f"retire_form_{state.round}"):
        name = st.selectbox("Version to retire", retirable, index=None, key=f"retire_version_{state.round}")
        reason = st.text_input("Reason", key=f"retire_reason_{state.round}", max_chars=1000)
        if st.form_submit_button("Retire"):
            if name is None:
                st.error("Choose a version to retire.")
            elif ui.call(registry.retire, ctx, principal, name, reason) is not None:
                state.flash = f"{name} is retired."
                state.round += 1
                st.rerun()


def history_tab(ctx: AppContext, principal: Principal) -> None:
    """Every alias move, newest first."""
    moves = ui.call(registry.alias_history, ctx, principal) or []
    if not moves:
        st.info("No alias has moved yet.")
    else:
        st.dataframe(pd.DataFrame([{"when": m.created_at, "alias": m.alias, "from": m.from_version or "",
                                    "to": m.to_version or "(removed)", "by": m.actor, "reason": m.reason}
                                   for m in moves]), hide_index=True, width="stretch", key="alias_history")
