"""Admin: add users, change roles, disable or enable accounts, reset passwords."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from console import ui
from console.services import auth
from console.services import users as users_svc
from console.services.access import ALL_ROLES

principal = ui.require_page("users")
ctx = ui.app_context()

st.title("Users")
users = ui.call(users_svc.list_users, ctx, principal) or []
st.dataframe(
    pd.DataFrame([{"username": u.username, "name": u.display_name or "", "email": u.email or "",
                   "roles": ", ".join(u.roles), "status": "disabled" if u.disabled else "active",
                   "locked until": u.locked_until, "last sign-in": u.last_login_at} for u in users]),
    hide_index=True, width="stretch",
)

add_tab, edit_tab = st.tabs(["Add a user", "Change a user"])
with add_tab, st.form("add_user", clear_on_submit=True):
    username = st.text_input("Username", key="new_username", max_chars=auth.MAX_USERNAME_CHARS)
    display_name = st.text_input("Display name", key="new_display_name", max_chars=users_svc.MAX_DISPLAY_NAME_CHARS)
    email = st.text_input("Email (for single sign-on)", key="new_email", max_chars=auth.MAX_EMAIL_CHARS)
    roles = st.multiselect("Roles", ALL_ROLES, key="new_roles")
    password = st.text_input("Initial password", type="password", key="new_password",
                             max_chars=auth.MAX_PASSWORD_CHARS,
                             help=f"At least {ctx.settings.min_password_length} characters. "
                                  "Leave empty for a single sign-on user (email required).")
    if st.form_submit_button("Add user", type="primary", key="add_user_submit"):
        created = ui.call(users_svc.add_user, ctx, principal, username, password or None, roles,
                          display_name=display_name, email=email)
        if created:
            st.success(f"Added {created.username}.")
            st.rerun()

with edit_tab:
    by_name = {u.username: u for u in users}
    chosen = st.selectbox("User", list(by_name), key="edit_user", index=None, placeholder="Choose a user")
    if chosen:
        user = by_name[chosen]
        with st.form("edit_roles"):
            new_roles = st.multiselect("Roles", ALL_ROLES, default=list(user.roles), key="edit_roles_value")
            if st.form_submit_button("Save roles"):
                if ui.call(users_svc.set_roles, ctx, principal, user.id, new_roles):
                    st.success("Roles saved.")
                    st.rerun()
        with st.form("reset_password", clear_on_submit=True):
            new_password = st.text_input("New password", type="password", key="reset_password_value",
                                         max_chars=auth.MAX_PASSWORD_CHARS)
            if st.form_submit_button("Reset password"):
                if ui.call(users_svc.reset_password, ctx, principal, user.id, new_password):
                    st.success("Password reset; the user's lockout is cleared and their open sessions end.")
        label = "Enable account" if user.disabled else "Disable account"
        if st.button(label, key="toggle_disabled", type="secondary"):
            if ui.call(users_svc.set_disabled, ctx, principal, user.id, not user.disabled):
                st.rerun()
