"""The Users page's Quotas tab: every user's effective limits (and where they come from) and usage now; forms for
role defaults and per-user overrides (console/services/quotas.py). Drawn by console/views/users.py."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from console import ui
from console.services import quotas as quotas_svc
from console.services.access import ALL_ROLES, Principal
from console.services.context import AppContext

KINDS = list(quotas_svc.KIND_LABELS)
VALUE_HELP = ("A whole number (0 refuses every chat), or 'no limit'. At most "
              + " and ".join(f"{quotas_svc.MAXIMUMS[k]:,} {label}" for k, label in quotas_svc.KIND_LABELS.items())
              + ".")


def _limit(value: int | None) -> str:
    return "no limit" if value is None else f"{value:,}"


def _role_value(row: quotas_svc.RoleQuota, kind: str) -> str:
    return _limit(row.requests_per_minute if kind == "requests_per_minute" else row.tokens_per_day)


def _kind_label(kind: str) -> str:
    return quotas_svc.KIND_LABELS[kind]


def render(ctx: AppContext, principal: Principal, state: Any) -> None:
    """Draw the tab; ``state`` is the Users page's (its ``flash`` shows after the rerun, ``round`` keys the forms
    so they open empty after a success)."""
    rows = ui.call(quotas_svc.quota_overview, ctx, principal) or []
    st.dataframe(
        pd.DataFrame([{
            "user": q.username, "roles": ", ".join(q.roles) or "no role",
            "requests per minute (limit)": _limit(q.requests_per_minute.value),
            "requests: from": q.requests_per_minute.source,
            "requests this minute": q.requests_this_minute,
            "tokens per day (limit)": _limit(q.tokens_per_day.value),
            "tokens: from": q.tokens_per_day.source,
            "tokens today": q.tokens_today,
        } for q in rows]),
        hide_index=True, width="stretch",
    )
    st.caption("Requests are counted per UTC minute (a fixed window: at a minute's boundary up to twice the limit "
               "can pass within seconds); tokens (prompt + answer tokens of finished chats) per UTC day. A user's "
               "override wins; without one, the most generous default of their roles applies. Load tests and "
               "side-by-side comparisons are not counted.")

    defaults = ui.call(quotas_svc.role_defaults, ctx, principal) or []
    st.subheader("Role defaults")
    st.dataframe(
        pd.DataFrame([{"role": r.role,
                       "requests per minute": _limit(r.requests_per_minute)
                       + (" (shipped)" if "requests_per_minute" in r.shipped else ""),
                       "tokens per day": _limit(r.tokens_per_day)
                       + (" (shipped)" if "tokens_per_day" in r.shipped else "")} for r in defaults]),
        hide_index=True, width="stretch",
    )
    round_ = state.round
    with st.form(f"quota_role_{round_}"):
        cols = st.columns(3)
        role = cols[0].selectbox("Role", ALL_ROLES, key=f"quota_role_name_{round_}")
        kind = cols[1].selectbox("Limit", KINDS, format_func=_kind_label, key=f"quota_role_kind_{round_}")
        value = cols[2].text_input("Value", key=f"quota_role_value_{round_}", placeholder="e.g. 20, or no limit",
                                   help=VALUE_HELP)
        save, reset = st.columns(2)
        if save.form_submit_button("Save role default", type="primary", key="quota_role_save"):
            saved = ui.call(quotas_svc.set_role_limit, ctx, principal, role, kind, value)
            if saved:
                value_text = _role_value(saved, kind)
                state.flash = (f"The {role} role's default is now " + (f"no limit on {_kind_label(kind)}."
                               if value_text == "no limit" else f"{value_text} {_kind_label(kind)}."))
                state.round += 1
                st.rerun()
        if reset.form_submit_button("Back to the shipped default", key="quota_role_reset"):
            saved = ui.call(quotas_svc.reset_role_limit, ctx, principal, role, kind)
            if saved:
                state.flash = (f"The {role} role's {_kind_label(kind)} is the shipped default "
                               f"({_role_value(saved, kind)}).")
                state.round += 1
                st.rerun()

    st.subheader("A user's own limit")
    by_name = {q.username: q for q in rows}
    with st.form(f"quota_user_{round_}"):
        cols = st.columns(3)
        chosen = cols[0].selectbox("User", list(by_name), index=None, placeholder="Choose a user",
                                   key=f"quota_user_name_{round_}")
        kind = cols[1].selectbox("Limit", KINDS, format_func=_kind_label, key=f"quota_user_kind_{round_}")
        value = cols[2].text_input("Value", key=f"quota_user_value_{round_}", placeholder="e.g. 1, or no limit",
                                   help=VALUE_HELP + " Higher or lower than the user's roles allow.")
        save, clear = st.columns(2)
        pressed_save = save.form_submit_button("Save override", type="primary", key="quota_user_save")
        pressed_clear = clear.form_submit_button("Remove override", key="quota_user_clear")
        if (pressed_save or pressed_clear) and chosen is None:
            st.error("Choose a user in 'User' first; nothing was changed.")
        elif pressed_save and chosen is not None:
            done = ui.call(quotas_svc.set_user_override, ctx, principal, by_name[chosen].user_id, kind, value)
            if done:
                limit = done.requests_per_minute if kind == "requests_per_minute" else done.tokens_per_day
                state.flash = f"{chosen}'s own limit is now {limit.text}."
                state.round += 1
                st.rerun()
        elif pressed_clear and chosen is not None:
            done = ui.call(quotas_svc.clear_user_override, ctx, principal, by_name[chosen].user_id, kind)
            if done:
                limit = done.requests_per_minute if kind == "requests_per_minute" else done.tokens_per_day
                state.flash = f"{chosen} has no override of {_kind_label(kind)}: {limit.text} ({limit.source})."
                state.round += 1
                st.rerun()
