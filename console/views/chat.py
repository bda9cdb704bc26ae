"""Chat with the served model: streaming answers, history, sampling settings, stop, send to review, thumbs up or down
(what to say about an exchange is worked out in console.services.chat_view_model)."""

from __future__ import annotations

import streamlit as st

from console import ui
from console.services import chat as chat_svc
from console.services import chat_view_model as vm
from console.services import demo_builds
from console.services import feedback as feedback_svc
from console.services import quotas as quotas_svc
from console.services import serving as serving_svc
from console.services.chat import ExchangeView
from console.services.errors import InvalidInput
from console.services.feedback import FeedbackView
from console.textsafe import escape_markdown, escape_stream

principal = ui.require_page("chat")
ctx = ui.app_context()
page_state = ui.session().chat
st.title("Chat")
# The open conversation is in the page's address too (?conversation=12), so a reload or a link reopens it.
CONVERSATION_PARAM = "conversation"
PROMPT_KEY = "chat_prompt"


def _open(conversation_id: int | None) -> None:
    page_state.conversation_id = conversation_id
    if conversation_id is None:
        if CONVERSATION_PARAM in st.query_params:
            del st.query_params[CONVERSATION_PARAM]
    elif st.query_params.get(CONVERSATION_PARAM) != str(conversation_id):
        st.query_params[CONVERSATION_PARAM] = str(conversation_id)


linked = st.query_params.get(CONVERSATION_PARAM)
if page_state.conversation_id is None and linked is not None:  # a reload, a bookmark or a link
    _open(ui.call(chat_svc.linked_conversation, ctx, principal, linked))  # only the user's own
else:
    _open(page_state.conversation_id)  # back from another page: the address says it again
if page_state.toast:
    st.toast(escape_markdown(page_state.toast))
    page_state.toast = None


# --- sidebar: conversations and settings -----------------------------------------------------------------------
with st.sidebar:
    st.subheader("Conversations")
    if st.button("New conversation", key="new_conversation", icon=":material/add:"):
        _open(None)
    for conv in ui.call(chat_svc.list_conversations, ctx, principal) or []:
        button = vm.conversation_button(conv, page_state.conversation_id)
        if st.button(button.label, key=f"conversation_{conv.id}", type=button.type, help=button.help):
            _open(conv.id)
            st.rerun()
    with st.expander("Sampling and system prompt", expanded=False):
        # No max_chars (a browser limit drops a longer paste whole, without a word): the service says the limit.
        system_prompt = st.text_area("System prompt", key="system_prompt", help=vm.SYSTEM_PROMPT_HELP)
        temperature = st.slider("Temperature", 0.0, 2.0, 0.3, 0.05, key="temperature")
        top_p = st.slider("Top-p", 0.05, 1.0, 0.95, 0.05, key="top_p")
        max_tokens = st.number_input("Max tokens", min_value=1, max_value=4096, value=256, step=16, key="max_tokens")
    limits = vm.quota_caption(ui.call(quotas_svc.my_quota, ctx, principal))
    if limits is not None:
        st.caption(limits)


def _show(notice: vm.Notice | None) -> None:
    if notice is not None:
        getattr(st, notice.level)(notice.text)
        if notice.progress is not None:
            st.progress(notice.progress)


def _captions(captions: list[vm.Caption]) -> None:
    for caption in captions:
        st.caption(caption.text, help=caption.help)


def _feedback(ex: ExchangeView, stored: FeedbackView | None) -> None:
    """Thumbs up or down under an answer (read back from the database), and a reason box for a thumbs-down."""
    key, seen = f"feedback_{ex.id}", f"feedback_seen_{ex.id}"
    if key not in st.session_state:  # first drawn since the page opened: what the database says
        st.session_state[key] = st.session_state[seen] = vm.thumbs_of(stored)
    thumbs = st.feedback("thumbs", key=key)
    if thumbs != st.session_state.get(seen):  # the user clicked: store it once (None takes the rating back)
        st.session_state[seen] = thumbs
        rating = vm.rating_of(thumbs)
        stored_now = (ui.call(feedback_svc.clear_feedback, ctx, principal, ex.id) if rating is None
                      else ui.call(feedback_svc.give_feedback, ctx, principal, ex.id, rating))
        if stored_now is not None:
            st.rerun()
    _captions(vm.feedback_captions(stored))
    if vm.asks_reason(stored):
        reason_key, back_key = f"feedback_reason_{ex.id}", f"feedback_back_{ex.id}"
        if back_key in st.session_state:  # refused at the last send: the text goes back in the box, with why
            text, why = st.session_state.pop(back_key)
            st.error(escape_markdown(why), icon=":material/block:")
            st.session_state[reason_key] = text
        with st.form(f"feedback_form_{ex.id}", clear_on_submit=True, border=False):
            reason = st.text_input("What was wrong with this answer? (optional)", key=reason_key,
                                   help=vm.REASON_HELP)
            if st.form_submit_button("Send reason", key=f"feedback_send_{ex.id}"):
                problem = vm.reason_problem(reason)
                if problem is not None:
                    st.warning(problem)
                    return
                with ui.shows_errors():
                    try:
                        done = feedback_svc.give_feedback(ctx, principal, ex.id, -1, reason)
                    except InvalidInput as exc:  # too long: nothing stored, the text comes back
                        st.session_state[back_key] = (reason, str(exc))
                        st.rerun()
                    page_state.toast = vm.reason_thanks(done)
                    del st.session_state[reason_key]  # the box starts empty (the rerun comes before the form's reset)
                    st.rerun()


def _render(ex: ExchangeView, stored: FeedbackView | None) -> None:
    with st.chat_message("user"):
        st.markdown(escape_markdown(ex.prompt))
        _captions(vm.prompt_captions(ex))
    with st.chat_message("assistant"):
        _show(vm.answer(ex))
        _captions(vm.answer_captions(ex))
        if not vm.can_send_to_review(ex):  # its answer may still come (and be judged): nothing to send yet
            return
        with st.popover("Send to review", icon=":material/flag:"):
            with st.form(f"review_form_{ex.id}", clear_on_submit=True):
                note = st.text_area("Note for the reviewer", key=f"review_note_{ex.id}")
                if st.form_submit_button("Send"):
                    if ui.call(chat_svc.send_to_review, ctx, principal, ex.id, note) is not None:
                        # Drawn again at once, so its "review: pending" marker shows now (not at the next click).
                        page_state.toast = vm.SENT_TO_REVIEW
                        st.rerun()
        if vm.can_rate(ex):
            _feedback(ex, stored)


if page_state.notice:
    st.info(escape_markdown(page_state.notice))
    page_state.notice = None

# --- what is served (the version to serve may still be being built: ``llm-console run`` builds it in the background)
serving = serving_svc.serving_status(ctx)
page_state.engine_was_ready = serving.ready
if serving.state == "none" and ui.call(demo_builds.served_version_build, ctx, principal) is None:
    st.warning(vm.NO_MODEL)
else:  # refreshed every 2 s: loading progress, or the served version's build until the model is up

    @st.fragment(run_every=2)
    def _serving_status() -> None:
        now = serving_svc.serving_status(ctx)
        if now.ready != page_state.engine_was_ready:  # the whole page must follow: enable or disable the input
            page_state.engine_was_ready = now.ready
            st.rerun(scope="app")
        waits = vm.waits_for_build(now)  # nothing loaded yet: the version to serve may still be being built
        _show(vm.serving_notice(now, ui.call(demo_builds.served_version_build, ctx, principal) if waits else None))

    _serving_status()

# --- conversation -----------------------------------------------------------------------------------------------
if page_state.conversation_id is not None:
    history = ui.call(chat_svc.conversation_history, ctx, principal, page_state.conversation_id) or []
    ratings = ui.call(feedback_svc.my_feedback, ctx, principal, [ex.id for ex in history]) or {}
    for exchange in history:
        _render(exchange, ratings.get(exchange.id))
else:
    st.caption(vm.NEW_CONVERSATION)

if page_state.refused_text is not None:  # refused at the last send: the text goes back in the box, with why
    why, hint = vm.refusal_lines(page_state.refused_why, page_state.refused_hint)
    st.error(escape_markdown(why), icon=":material/block:")
    st.caption(hint)
    st.session_state[PROMPT_KEY] = page_state.refused_text
    page_state.refused_text = page_state.refused_why = page_state.refused_hint = None

# No max_chars: a browser box with a limit drops a longer paste whole and says nothing. The service refuses it
# with the limit instead, and the text comes back.
prompt = st.chat_input(f"Ask the support model… (up to {chat_svc.MAX_PROMPT_CHARS:,} characters)", key=PROMPT_KEY,
                       disabled=not serving.ready)
if prompt:
    with st.chat_message("user"):
        st.markdown(escape_markdown(prompt))
    with st.chat_message("assistant"):
        turn = None
        with ui.shows_errors():
            try:
                turn = chat_svc.start_turn(ctx, principal, page_state.conversation_id, prompt,
                                           temperature=float(temperature), top_p=float(top_p),
                                           max_tokens=int(max_tokens),
                                           system_prompt=system_prompt if page_state.conversation_id is None else None)
            except InvalidInput as exc:  # too long, empty, bad settings: nothing sent (a new conversation not made)
                refused = vm.refusal(prompt, exc)
                page_state.refused_text, page_state.refused_why = refused.text, refused.why
                page_state.refused_hint = refused.hint
                st.rerun()
        if turn:
            _open(turn.conversation_id)
            if turn.blocked:
                st.warning(escape_markdown(vm.blocked_notice(turn)))
            else:
                # Any click reruns the script, which closes the stream: the request is aborted and stored.
                st.button("Stop", key="stop_generation", icon=":material/stop_circle:")
                with ui.shows_errors():
                    st.write_stream(escape_stream(turn.deltas()))
            end = vm.turn_end(turn)
            if end.warning is not None:
                # The database could not take it: the answer on screen is its only copy, so no rerun wipes it.
                st.warning(escape_markdown(end.warning), icon=":material/warning:")
            if end.rerun:
                if end.notice is not None:
                    page_state.notice = end.notice
                st.rerun()
