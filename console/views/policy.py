"""The safety policy in force; admins can replace it (validated, versioned, audited)."""

from __future__ import annotations

import streamlit as st

from console import ui
from console.services import access
from console.services import policy as policy_svc
from console.textsafe import escape_markdown

principal = ui.require_page("policy")
ctx = ui.app_context()

st.title("Safety policy")
view = ui.call(policy_svc.current, ctx, principal)
if view is not None:
    if view.scanner_notice:
        st.warning(escape_markdown(view.scanner_notice))
    c1, c2, c3 = st.columns(3)
    c1.metric("Stored version", view.version)
    c2.metric("Output mode", view.output_mode.replace("_", " "))
    c3.metric("Raw text kept", "yes" if view.keep_raw_text else "no")
    st.caption(escape_markdown("Scanners: " + ", ".join(f"{k} ({v})" for k, v in view.scanners.items())))
    if access.allowed(principal.roles, "policy.manage"):
        with st.form("policy_form"):
            content = st.text_area("Policy (TOML)", value=view.content, height=420, key="policy_content")
            if st.form_submit_button("Validate and put in force", type="primary"):
                updated = ui.call(policy_svc.replace, ctx, principal, content)
                if updated is not None:
                    st.success(f"Policy version {updated.version} is in force.")
    else:
        st.code(view.content, language="toml")
