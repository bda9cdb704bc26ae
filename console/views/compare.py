"""Admins and reviewers: one prompt to the live version and a candidate at once, both answers side by side."""

from __future__ import annotations

import threading
import time

import streamlit as st

from console import ui
from console.services import compare as compare_svc
from console.textsafe import escape_markdown

principal = ui.require_page("compare")
ctx = ui.app_context()

st.title("Side by side")
st.caption("The same prompt goes to the version being served and to a candidate, which runs in a short-lived "
           "engine of its own (the first comparison with a version takes a few seconds to start it). Both answers "
           "are scanned, stored and audited like any chat, in conversations titled “Comparison · …”.")

candidates = ui.call(compare_svc.candidate_versions, ctx, principal) or []
if not candidates:
    st.info("There is no other registered version to compare with the one being served.")
    st.stop()

# One form under fixed keys, kept from one comparison to the next (prompt, candidate and settings stay for the
# next try). Keys that changed after a send left the next click on the old form's widgets: that run saw a form
# it had never drawn, so its prompt was dropped and nothing was sent (every second prompt).
with st.form("compare_form"):
    candidate = st.selectbox("Candidate version", candidates, key="compare_candidate")
    prompt = st.text_area("Prompt", key="compare_prompt", max_chars=20_000)
    c1, c2, c3 = st.columns(3)
    temperature = c1.slider("Temperature", 0.0, 2.0, 0.3, 0.05, key="compare_temperature")
    top_p = c2.slider("Top-p", 0.05, 1.0, 0.95, 0.05, key="compare_top_p")
    max_tokens = c3.number_input("Max tokens", 1, 4096, 256, 16, key="compare_max_tokens")
    submitted = st.form_submit_button("Send to both", type="primary")


def _caption(side: compare_svc.SideView) -> str:
    parts = [side.version, side.status]
    if side.ttft_ms is not None:
        parts.append(f"first token {side.ttft_ms:,.0f} ms")
    if side.tokens_per_s is not None:
        parts.append(f"{side.tokens_per_s:,.1f} tokens/s")
    if side.output_tokens is not None:
        parts.append(f"{side.output_tokens} tokens")
    parts.append(f"prompt {side.prompt_action or '-'} · output {side.output_action or '-'}")
    return " · ".join(parts)


if submitted:
    comparison = ui.call(compare_svc.start_comparison, ctx, principal, candidate, prompt,
                         temperature=float(temperature), top_p=float(top_p), max_tokens=int(max_tokens))
    if comparison is not None:
        columns = st.columns(2)
        sides = [("live", comparison.live, comparison.live_version), ("candidate", comparison.candidate,
                                                                      comparison.candidate_version)]
        boxes, threads = [], []
        buffers: list[list[str]] = []
        errors: list[list[str]] = []
        for column, (label, turn, version) in zip(columns, sides, strict=True):
            # A short title and the version's full name under it (wrapped, and in the title's help), so a long name
            # is read whole instead of cut at the column's edge.
            name = escape_markdown(version)
            column.subheader(label.capitalize(), anchor=False, help=f"{label.capitalize()} version: {name}")
            column.caption(f"**{name}**")
            boxes.append(column.empty())
            buffers.append([])
            errors.append([])
            threads.append(threading.Thread(target=compare_svc.drain, args=(turn, buffers[-1], errors[-1]),
                                            daemon=True))
        for t in threads:
            t.start()
        # Both answers stream at once: reader threads fill the buffers, this loop redraws (no st call off-thread).
        while any(t.is_alive() for t in threads):
            for box, buffer in zip(boxes, buffers, strict=True):
                box.markdown(escape_markdown("".join(buffer)) or "…")
            time.sleep(0.1)
        for column, box, (_, turn, version), error in zip(columns, boxes, sides, errors, strict=True):
            side = compare_svc.side_view(turn, version)
            box.markdown(escape_markdown(side.text) or "_(no text)_")
            if error:
                column.error(escape_markdown(error[0]))
            if side.notice:
                column.info(escape_markdown(side.notice))
            column.caption(escape_markdown(_caption(side)))
