"""Widgets several pages share: the review item as reviewers and admins see it, and the decision fields.

Streamlit-side only: no service logic here, the pages call the services and hand the views in.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd
import streamlit as st

from console.services import review
from console.textsafe import escape_markdown

# Redaction placeholders as the PII scanner writes them into stored text: <EMAIL_ADDRESS>, <PERSON>...
PLACEHOLDER = re.compile(r"(<[A-Z_]+>)")


def marked(text: str, spans: Sequence[tuple[int, int]] = ()) -> str:
    """Escaped text with redaction placeholders (or the given raw spans) highlighted."""
    if spans:
        out, pos = [], 0
        for start, end in sorted(spans):
            out += [escape_markdown(text[pos:start]), f":red-background[{escape_markdown(text[start:end])}]"]
            pos = max(pos, end)
        return "".join(out) + escape_markdown(text[pos:])
    return "".join(f":orange-background[{escape_markdown(p)}]" if PLACEHOLDER.fullmatch(p) else escape_markdown(p)
                   for p in PLACEHOLDER.split(text))


ERASED_TEXT = ("The prompt and answer of this exchange were erased (retention limit or a person's erasure request); "
               "its findings and decisions remain.")


def show_item(view: review.ItemView, *, key: str) -> None:
    """One review item: badges, versions and actions, the conversation's system prompt, earlier turns, the flagged
    exchange, the operator's note, the findings and the decisions so far. ``key`` tells apart the places one page
    shows items."""
    badges = [f":violet-badge[severity {view.severity}]", f":gray-badge[{escape_markdown(view.reason)}]"]
    if view.overdue:
        badges.append(":red-badge[overdue]")
    st.markdown(f"**Item {view.item_id}** " + " ".join(badges))
    policy = f"policy revision {view.policy_version}" if view.policy_version else "policy revision not recorded"
    st.caption(f"Model {escape_markdown(view.model_version)} · {policy} · "
               f"prompt action {escape_markdown(view.prompt_action or '-')} · "
               f"output action {escape_markdown(view.output_action or '-')}")
    if view.system_prompt:
        st.chat_message("system", avatar=":material/tune:").markdown(
            f"**System prompt:** {marked(view.system_prompt)}")
    for turn in view.context:
        st.chat_message("user").markdown(escape_markdown(turn.prompt))
        st.chat_message("assistant").markdown(escape_markdown(turn.response))
    if view.text_erased:  # two empty messages would look like a display fault
        st.caption(ERASED_TEXT)
    else:
        st.chat_message("user", avatar=":material/flag:").markdown(marked(view.prompt))
        st.chat_message("assistant", avatar=":material/flag:").markdown(marked(view.response))
    if view.operator_note:
        # A thumbs-down sent to review (reason "feedback") carries the user's reason as its note.
        who = "The user's feedback" if view.reason == "feedback" else "Operator's note"
        st.info(f"**{who}:** {escape_markdown(view.operator_note)}", icon=":material/sticky_note_2:")
    if view.findings:
        # A finding about the whole text (toxicity) has no span: "" rather than an empty cell, which the browser
        # shows as "None"; the positions are text, so each column has one type.
        st.dataframe(pd.DataFrame([{**f.__dict__, "start": "" if f.start is None else str(f.start),
                                    "end": "" if f.end is None else str(f.end)} for f in view.findings]),
                     hide_index=True,
                     key=f"{key}_findings_{view.item_id}",
                     column_config={"score": st.column_config.ProgressColumn("score", min_value=0.0, max_value=1.0)})
    else:
        st.caption("The scanners stored no findings for this exchange.")
    for d in view.decisions:
        st.markdown(f"**{escape_markdown(d.reviewer)}** · {review.DECISION_LABELS[d.decision]} · "
                    f"{d.created_at:%Y-%m-%d %H:%M}  \n{escape_markdown(d.note or '')}")


def decision_fields(prefix: str, scope: object, *, choices: Sequence[str] = tuple(review.DECISION_LABELS),
                    label: str = "Decision", note: str | None = "Note (required to escalate)",
                    ) -> tuple[str, str | None, str | None]:
    """Decision, category and note widgets; returns their values (the note is None when not asked for).

    The keys are ``{prefix}decision_{scope}``, ``{prefix}category_{scope}`` and ``{prefix}note_{scope}``: scope them
    by the item decided, so the next item opens with an empty form instead of the previous item's verdict.
    """
    decision = st.radio(label, list(choices), format_func=review.DECISION_LABELS.__getitem__, horizontal=True,
                        key=f"{prefix}decision_{scope}")
    category = st.selectbox("Category (for a violation)", list(review.CATEGORIES), index=None,
                            format_func=review.CATEGORIES.__getitem__, key=f"{prefix}category_{scope}")
    text = st.text_input(note, key=f"{prefix}note_{scope}") if note is not None else None
    return decision, category, text
