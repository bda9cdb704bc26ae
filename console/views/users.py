"""Admin: add users, change roles, disable or enable accounts, reset passwords, set quotas, erase a person's content."""

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
from console.views import users_quotas

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

add_tab, edit_tab, quotas_tab = st.tabs(["Add a user", "Change a user", "Quotas"])
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
            st.markdown(escape_markdown(f"Erases {retention_svc.ERASES}. Keeps {retention_svc.KEEPS}. Another "
                                        "admin approves the request, which carries it out; it cannot be undone."))
            with st.form(f"erase_form_{state.round}"):
                reason = st.text_area(
                    "Reason (shown to the approving admin, blanked once decided)", key=f"erase_reason_{state.round}",
                    max_chars=retention_svc.MAX_REASON_CHARS, placeholder="e.g. erasure request #1234")
                basis = st.text_input(
                    "Legal basis to erase logs younger than six months too (optional; recorded in the audit log)",
                    key=f"erase_basis_{state.round}", placeholder="e.g. court order 2026/123")
                confirmed = st.checkbox(
                    f"I ask for every prompt, answer, raw text, conversation title and note of "
                    f"{escape_markdown(user.username)} to be erased for good once another admin approves.",
                    key=f"erase_confirm_{state.round}")
                if st.form_submit_button("Ask for the erasure", type="primary", key="erase_submit"):
                    if not confirmed:
                        st.error("Tick the box to confirm the request; nothing was asked for.")
                    else:
                        asked = ui.call(retention_svc.request_erasure, ctx, principal, user.id, reason, basis or None)
                        if asked:
                            state.flash = (f"Asked for the erasure of {asked.username}'s content (request "
                                           f"#{asked.id}); another admin approves it below.")
                            state.round += 1
                            st.rerun()

with quotas_tab:  # requests per minute and tokens per day (console/views/users_quotas.py)
    users_quotas.render(ctx, principal, state)

# ---- erasure requests: another admin approves (which erases) or rejects ----
st.subheader("Erasure requests")
pending = ui.call(retention_svc.list_erasure_requests, ctx, principal, "pending") or []
if not pending:
    st.caption("No erasure request is waiting.")
for req in pending:
    basis = f"legal basis: {req.legal_basis}" if req.legal_basis else "logs younger than six months stay"
    st.markdown(escape_markdown(f"#{req.id}: erase the content of {req.username}, asked by {req.requested_by} on "
                                f"{req.created_at:%Y-%m-%d %H:%M} UTC; reason: {req.reason}; {basis}."))
    if req.requested_by_id == principal.user_id:
        if st.button("Cancel my request", key=f"erase_cancel_{req.id}"):
            if ui.call(retention_svc.cancel_erasure, ctx, principal, req.id):
                state.flash = f"Cancelled erasure request #{req.id}."
                st.rerun()
        continue
    if req.user_id == principal.user_id:
        st.caption("This request is about your own content: another admin decides it.")
        continue
    preview = ui.call(retention_svc.preview_erasure, ctx, principal, req.id)
    if preview:
        held = (f" Kept, being younger than six months: {preview.held_exchanges} exchanges and "
                f"{preview.held_events} audit events." if preview.floor is not None else "")
        st.caption(escape_markdown(f"Approving erases now: {preview.summary}.{held}"))
    approve_col, reject_col = st.columns(2)
    if approve_col.button("Approve and erase", key=f"erase_approve_{req.id}", type="primary"):
        done = ui.call(retention_svc.decide_erasure, ctx, principal, req.id, True)
        if done:
            state.flash = f"Erased the content of {done.username}: {done.summary}. The account itself stays."
            st.rerun()
    if reject_col.button("Reject", key=f"erase_reject_{req.id}"):
        if ui.call(retention_svc.decide_erasure, ctx, principal, req.id, False):
            state.flash = f"Rejected erasure request #{req.id}."
            st.rerun()
