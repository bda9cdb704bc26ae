"""Entrypoint: page config, the shared sidebar, and the pages each user's roles allow."""

from __future__ import annotations

import streamlit as st

from console import resources, ui
from console.app_pages import FAVICON, PAGE_PATHS, PAGE_TABLE, PAGES_DIR
from console.services import access, auth
from console.textsafe import escape_markdown

st.set_page_config(page_title="LLM Console", page_icon=FAVICON, layout="wide")
# Single sign-on with a placeholder or short cookie secret would let anyone forge a signed-in identity.
sso_problem = auth.sso_config_problem(ui.sso_config())
if sso_problem:
    st.error(sso_problem)
    st.stop()
ctx = resources.app_context()
state = ui.session()
# Signs the browser in from its session cookie (a reload, a new tab, a link opened directly), or out if the
# server-side session ended since the last run.
ui.restore_session()
# Start loading the model and the scanners at the first visit (both in the background), not at the first chat.
resources.engine_host()
resources.safety_loader()

if state.principal is None:
    # Every page's address shows the sign-in form (hidden pages with the same paths), so a bookmark or a link
    # opened while signed out asks to sign in instead of "Page not found", and lands on its page afterwards.
    page = st.navigation([st.Page(PAGES_DIR / "login.py", title="Sign in", icon=":material/login:", default=True)]
                         + [st.Page(PAGES_DIR / "login.py", title="Sign in", icon=":material/login:", url_path=path,
                                    visibility="hidden") for path in PAGE_PATHS.values()])
    ui.sync_cookie()
    page.run()
    st.stop()

with st.sidebar:
    ui.sync_cookie()
    principal = state.principal
    st.markdown(f"**{escape_markdown(principal.username)}**  \n{escape_markdown(', '.join(sorted(principal.roles)))}")
    ui.live_model(principal)  # refreshes itself every few seconds
    ui.emergency_notice(principal)  # admins: emergency moves no second admin has acknowledged
    judge = resources.toxicity_judge()
    if judge:
        st.caption(f"Toxicity judged by: {escape_markdown(judge)}")
    notice = resources.safety_notice()
    if notice:
        st.caption(f":material/warning: {escape_markdown(notice)}")
    if st.button("Sign out", key="logout", icon=":material/logout:"):
        auth.logout(ctx, principal)
        ui.sign_out("You are signed out.")
        if ui.sso_signed_in():
            st.logout()  # also end the identity provider's session, or the login page would sign in again
        st.rerun()

# Pages the user's roles allow are listed; the others are registered hidden, so opening one by its URL runs
# the page's own server-side guard, which refuses with a clear message and records the attempt.
allowed = access.allowed_pages(state.principal.roles)
if not allowed:
    st.warning("Your account has no roles yet. Ask an admin to give you one.")
    st.stop()
sections: dict[str, list[st.Page]] = {}
for key, (section, title, icon, file) in PAGE_TABLE.items():
    shown = key in allowed
    landing = key == allowed[0]
    # A page's address is its label (PAGE_PATHS: /latency for Latency). The landing page lives at the root address
    # ("/"; Streamlit gives the default page no other); a hidden twin keeps its own address ("/chat") working for
    # a reload, a bookmark or a new tab.
    path = PAGE_PATHS[key]
    sections.setdefault(section if shown else "", []).append(
        st.Page(PAGES_DIR / file, title=title, icon=icon, url_path=f"{path}-landing" if landing else path,
                default=landing, visibility="visible" if shown else "hidden")
    )
    if landing:
        sections.setdefault("", []).append(
            st.Page(PAGES_DIR / file, title=title, icon=icon, url_path=path, visibility="hidden"))
# Always fully expanded: with more than twelve pages (an admin who holds every role has thirteen) Streamlit would
# otherwise hide pages behind "View more", and a page a person may open must be in sight.
st.navigation(sections, expanded=True).run()
