"""Sign in with a local account, or with single sign-on when the console is configured for it.

Shown at every page's address while signed out; a successful sign-in starts a server-side session whose cookie
keeps the browser signed in across reloads and new tabs (console/services/sessions.py).
"""

from __future__ import annotations

import streamlit as st

from console import ui
from console.services import auth
from console.services.errors import LoginFailed

ctx = ui.app_context()
state = ui.session()
sso = ui.sso_config() is not None

st.title("LLM Console")
st.caption("Operations console for the self-hosted model: chat, latency, safety review, model versions, audit.")
if state.flash:
    st.info(state.flash)
    state.flash = None

if state.principal is None and sso and ui.sso_signed_in():
    try:
        principal = auth.login_sso(ctx, st.user.to_dict())
        ui.sign_in(principal, ctx.now(), ui.start_browser_session(principal, method="sso"))
        st.rerun()
    except LoginFailed as exc:
        st.error(str(exc))
        st.button("Sign out of the identity provider", on_click=st.logout)
        st.stop()

with st.form("login", clear_on_submit=False):
    # No max_chars: a browser box with a limit drops a longer paste whole and says nothing; the limits are said
    # here, and a longer value is refused with a message that says them (the text stays in the box).
    username = st.text_input("Username", key="login_username", autocomplete="username",
                             help=f"At most {auth.MAX_USERNAME_CHARS} characters.")
    password = st.text_input("Password", type="password", key="login_password", autocomplete="current-password",
                             help=f"At most {auth.MAX_PASSWORD_CHARS:,} characters.")
    submitted = st.form_submit_button("Sign in", type="primary", key="login_submit")

if submitted:
    try:
        principal = auth.login(ctx, username, password, client=ui.client_key())
        # A server-side session and its cookie keep the sign-in across reloads and new tabs; the page's address
        # stays, so the rerun lands on the page that was opened (a bookmark, a link) if the roles allow it.
        ui.sign_in(principal, ctx.now(), ui.start_browser_session(principal))
        st.rerun()
    except LoginFailed as exc:
        st.error(str(exc))

if sso:
    st.divider()
    st.button("Sign in with single sign-on", key="sso_login", on_click=st.login, icon=":material/key:")
