"""Admin: add users, change roles, disable or enable accounts, reset passwords, erase a person's content."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from console import ui
from console.services import auth
from console.services import retention as retention_svc
from console.services import sessions as sessions_svc
from console.services import users as users_svc
from console.services.access import ALL_ROLES
from console.textsafe import escape_markdown

principal = ui.require_page("users")
ctx = ui.app_context()
state = ui.session().users

st.title("Users")
if state.flash:
    # Set before a rerun, so a success survives it (shown once).
    st.success(escape_markdown(state.flash))
    state.flash = None


def _utc(at: datetime | None, never: str) -> str:
    """A stored time as text (SQLite gives naive UTC), or what its absence means."""
    if at is None:
        return never
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _locked(at: datetime | None) -> str:
    if at is None:
        return "not locked"
    aware = at if at.tzinfo else at.replace(tzinfo=UTC)
    return _utc(at, "") if aware > ctx.now() else "not locked (lock expired)"


users = ui.call(users_svc.list_users, ctx, principal) or []
st.dataframe(
    pd.DataFrame([{"username": u.username, "name": u.display_name or "-", "email": u.email or "-",
                   "roles": ", ".join(u.roles) or "no role", "status": "disabled" if u.disabled else "active",
                   "locked until": _locked(u.locked_until), "last sign-in": _utc(u.last_login_at, "never")}
                  for u in users]),
    hide_index=True, width="stretch",
)
st.caption('"-": not given. "never": has not signed in yet. Times are in UTC.')
st.caption(f"Stored prompts and answers are kept {ctx.settings.retention_text_days} days and raw (unredacted) "
           f"text {ctx.settings.retention_raw_days} days; then their text is erased and the metadata stays.")

add_tab, edit_tab = st.tabs(["Add a user", "Change a user"])
ADD_FORM_EMPTY = {"new_username": "", "new_display_name": "", "new_email": "", "new_roles": [], "new_password": ""}
if state.clear_add_form:  # the user was added: the form opens empty (a refused one keeps what was typed)
    st.session_state.update(ADD_FORM_EMPTY)
    state.clear_add_form = False
# No max_chars on these boxes: a browser box with a limit drops a longer paste whole and says nothing. Each says its
# limit, and the service refuses a longer value with a message that says it.
with add_tab, st.form("add_user"):
    username = st.text_input("Username", key="new_username",
                             help=f"2 to {auth.MAX_USERNAME_CHARS} characters: lower-case letters, digits, '.', '_' "
                                  "or '-'.")
    display_name = st.text_input("Display name", key="new_display_name",
                                 help=f"At most {users_svc.MAX_DISPLAY_NAME_CHARS} characters; optional.")
    email = st.text_input("Email (for single sign-on)", key="new_email",
                          help=f"At most {auth.MAX_EMAIL_CHARS} characters.")
    roles = st.multiselect("Roles", ALL_ROLES, key="new_roles")
    password = st.text_input("Initial password", type="password", key="new_password",
                             help=f"{ctx.settings.min_password_length} to {auth.MAX_PASSWORD_CHARS:,} characters. "
                                  "Leave empty for a single sign-on user (email required).")
    if st.form_submit_button("Add user", type="primary", key="add_user_submit"):
        created = ui.call(users_svc.add_user, ctx, principal, username, password or None, roles,
                          display_name=display_name, email=email)
        if created:
            state.flash = f"Added {created.username}."
            state.clear_add_form = True
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
                    state.flash = f"Roles of {user.username} saved."
                    st.rerun()
        with st.form("reset_password", clear_on_submit=True):
            new_password = st.text_input("New password", type="password", key="reset_password_value",
                                         help=f"{ctx.settings.min_password_length} to "
                                              f"{auth.MAX_PASSWORD_CHARS:,} characters.")
            if st.form_submit_button("Reset password"):
                if ui.call(users_svc.reset_password, ctx, principal, user.id, new_password):
                    st.success("Password reset; the user's lockout is cleared and their open sessions end.")
        label = "Enable account" if user.disabled else "Disable account"
        if st.button(label, key="toggle_disabled", type="secondary"):
            if ui.call(users_svc.set_disabled, ctx, principal, user.id, not user.disabled):
                state.flash = f"{user.username} is {'enabled' if user.disabled else 'disabled'}."
                st.rerun()

        # ---- sessions (console/services/sessions.py) ----
        st.subheader("Sessions")
        open_sessions = ui.call(sessions_svc.list_sessions, ctx, principal, user.id) or []
        if not open_sessions:
            st.caption(f"{escape_markdown(user.username)} has no open session.")
        for sess in open_sessions:
            cols = st.columns([5, 1])
            cols[0].markdown(escape_markdown(
                f"Session {sess.id} · {sess.method} · started {sess.started:%Y-%m-%d %H:%M} UTC · last seen "
                f"{sess.last_seen:%Y-%m-%d %H:%M} UTC · until {sess.expires:%Y-%m-%d %H:%M} UTC"
                + (f" · {sess.client}" if sess.client else "")
                + (f" · {sess.user_agent[:60]}" if sess.user_agent else "")))
            if cols[1].button("End session", key=f"end_session_{sess.id}"):
                if ui.call(sessions_svc.end_session, ctx, principal, sess.id):
                    state.flash = (f"Ended session {sess.id} of {user.username}; they are signed out at their "
                                   "next click.")
                    st.rerun()

        st.subheader("Erase this person's content")
        if user.id == principal.user_id:
            st.info("You cannot erase your own content; ask another admin.")
        else:
            st.markdown(escape_markdown(f"Erases {retention_svc.ERASES}. Keeps {retention_svc.KEEPS}. "
                                        "It cannot be undone, and the account stays: disable it above if needed."))
            with st.form(f"erase_form_{state.round}"):
                reason = st.text_area(
                    "Reason (checked, not stored: it may name the person)", key=f"erase_reason_{state.round}",
                    max_chars=retention_svc.MAX_REASON_CHARS, placeholder="e.g. erasure request #1234")
                confirmed = st.checkbox(
                    f"I understand that every prompt, answer, raw text, conversation title and note of "
                    f"{escape_markdown(user.username)} is erased for good, and that the account, the timings and the audit chain "
                    "stay.", key=f"erase_confirm_{state.round}")
                if st.form_submit_button("Erase this person's content", type="primary", key="erase_submit"):
                    if not confirmed:
                        st.error("Tick the box to confirm the erasure; nothing was erased.")
                    else:
                        done = ui.call(retention_svc.erase_user, ctx, principal, user.username, reason)
                        if done:
                            state.flash = (f"Erased the content of {done.username}: {done.summary}. "
                                           "The account itself stays.")
                            state.round += 1
                            st.rerun()
