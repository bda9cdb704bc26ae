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
    c1.metric("Policy in force", view.file_version,
              help="The policy's own name: its `version` field, set by whoever wrote it.")
    c2.metric("Output mode", view.output_mode.replace("_", " "))
    c3.metric("Raw text kept", "yes" if view.keep_raw_text else "no")
    st.info(escape_markdown(view.raw_text_note), icon=":material/visibility:" if view.keep_raw_text else
            ":material/visibility_off:")
    st.caption(escape_markdown(f"Policy '{view.file_version}' (stored revision {view.version}): the console "
                               "numbers each policy text it stores 1, 2, 3, ...; every exchange records the "
                               "revision that judged it."))
    st.caption(escape_markdown("Scanners: " + ", ".join(f"{k} ({v})" for k, v in view.scanners.items())))
    # Which toxicity detector judges, and the policy table of thresholds that applies to its findings.
    for name, table in (("detoxify", "detoxify"), ("tox-block", "offline"), ("profanity-fallback", "fallback")):
        if name in view.scanners:
            st.markdown(f"**Toxicity is judged by** {escape_markdown(view.scanners[name])}. Its thresholds: "
                        f"`[toxicity.thresholds.{table}]` below, where the policy has that table (labels it "
                        "leaves out, and policies without it, use the rules' thresholds).")
    if access.allowed(principal.roles, "policy.manage"):
        with st.form("policy_form"):
            content = st.text_area("Policy (TOML)", value=view.content, height=420, key="policy_content")
            if st.form_submit_button("Validate and put in force", type="primary"):
                updated = ui.call(policy_svc.replace, ctx, principal, content)
                if updated is not None:
                    st.success(escape_markdown(f"Policy '{updated.file_version}' (stored revision {updated.version}) "
                                               "is in force."))
    else:
        st.code(view.content, language="toml")
