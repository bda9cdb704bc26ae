"""What the chat page says about a stored exchange, worked out without Streamlit (the page only draws it).

Plain text in, plain text out: the page escapes it (``console.textsafe``) where it draws it; only what is drawn as
it comes is markdown, its values escaped: :func:`build_notice`, the :class:`Notice` and :class:`Caption` texts, the
:class:`ConversationButton` labels and :func:`quota_caption`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from console.services import demo_builds
from console.services.chat import MAX_SYSTEM_PROMPT_CHARS, ChatTurn, ConversationView, ExchangeView
from console.services.feedback import MAX_REASON_CHARS, RATEABLE_STATUSES, FeedbackResult, FeedbackView
from console.services.quotas import QuotaExceeded, UserQuota, usage_text
from console.services.serving import ServingView
from console.textsafe import escape_markdown
from engine.errors import PromptTooLongError

# What a ``<LABEL>`` placeholder in stored text stands for: (one, several).
PII_NAMES = {
    "LOCATION": ("place name", "place names"), "PERSON": ("person's name", "people's names"),
    "EMAIL_ADDRESS": ("email address", "email addresses"), "PHONE_NUMBER": ("phone number", "phone numbers"),
    "ADDRESS": ("street address", "street addresses"), "CREDIT_CARD": ("card number", "card numbers"),
    "IBAN_CODE": ("IBAN", "IBANs"), "US_SSN": ("social security number", "social security numbers"),
    "IP_ADDRESS": ("IP address", "IP addresses"),
}
_PLACEHOLDER = re.compile(r"<([A-Z][A-Z_]*)>")
# st.feedback("thumbs") gives 0 for thumbs down and 1 for thumbs up; the store keeps -1 and +1.
THUMBS_TO_RATING = {0: -1, 1: 1}
RATING_TO_THUMBS = {v: k for k, v in THUMBS_TO_RATING.items()}


def refusal_hint(refusal: Exception) -> str:
    """What the page says under a refused message about the text it put back in the box."""
    if isinstance(refusal, QuotaExceeded):
        return "Your message is back in the box below: send it again once the limit resets (the time is above)."
    if isinstance(refusal.__cause__, PromptTooLongError) or "the limit is" in str(refusal):  # characters or tokens
        return "Your message is back in the box below: shorten it and send it again."
    return "Your message is back in the box below: change what the message above names and send it again."


def when(at: datetime | None) -> str:
    """A stored time as the sidebar shows it (SQLite gives naive UTC)."""
    if at is None:
        return "no date"
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def status_line(ex: ExchangeView) -> str:
    """The line under an answer: version, first-token time, speed, tokens, and the status unless ``ok``."""
    parts = [ex.model_version or "no model"]
    if ex.ttft_ms is not None:
        parts.append(f"first token {ex.ttft_ms:,.0f} ms")
    if ex.tokens_per_s:
        parts.append(f"{ex.tokens_per_s:,.1f} tokens/s")
    if ex.output_tokens is not None:
        parts.append(f"{ex.output_tokens} tokens")
    if ex.status != "ok":
        parts.append(ex.status)
    return " · ".join(parts)


# --- the sidebar -----------------------------------------------------------------------------------------------------

SYSTEM_PROMPT_HELP = (f"At most {MAX_SYSTEM_PROMPT_CHARS:,} characters. Applies to new conversations; a conversation "
                      "keeps the one it started with.")
NEW_CONVERSATION = "A new conversation. Ask about accounts, billing, orders, refunds, cancellations or privacy."


@dataclass(frozen=True)
class ConversationButton:
    """A conversation's button in the sidebar: ``label`` (markdown, its title escaped), ``help`` and ``type`` (the
    open conversation stands out)."""

    label: str
    help: str
    type: Literal["primary", "tertiary"]


def conversation_button(conv: ConversationView, open_id: int | None) -> ConversationButton:
    at = when(conv.updated_at)
    return ConversationButton(f"{escape_markdown(conv.title or f'Conversation {conv.id}')} · {at}",
                              f"Conversation {conv.id}; last message {at}.",
                              "primary" if conv.id == open_id else "tertiary")


def quota_caption(quota: UserQuota | None) -> str | None:
    """The sidebar's line of the user's own limits and usage (markdown), None while no limit applies (an admin sets
    them on Users → Quotas)."""
    text = usage_text(quota) if quota is not None else None
    return None if text is None else f":material/speed: {escape_markdown(text)}"


# --- the lines under a message ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caption:
    """A line the page shows with ``st.caption``: markdown, its values escaped; ``help`` its tooltip."""

    text: str
    help: str | None = None


STORED_NOTE_HELP = "The history shows the stored text. The action is what the policy did to the message itself."


@dataclass(frozen=True)
class FindingsLine:
    labels: str  # "EMAIL_ADDRESS 0.93, toxicity 0.40" or "none"
    action: str


def findings_line(ex: ExchangeView, direction: str) -> FindingsLine | None:
    """The findings worth showing on one side (None when there is nothing to say). Scores under 0.1 that triggered
    nothing are noise on every message; they stay in the store."""
    items = [f for f in ex.findings if f.direction == direction and (f.score >= 0.1 or f.action != "allow")]
    action = ex.prompt_action if direction == "prompt" else ex.output_action
    if not items and action in (None, "allow"):
        return None
    return FindingsLine(", ".join(f"{f.label} {f.score:.2f}" for f in items) or "none", action or "allow")


def stored_note(ex: ExchangeView, direction: str) -> str | None:
    """What was stored and why, when the stored text differs from what was written: personal data found in it (the
    exchange's findings) is replaced by ``<LABEL>`` in storage whatever the enforced action. None otherwise."""
    text = ex.prompt if direction == "prompt" else ex.response
    labels = {f.label for f in ex.findings if f.direction == direction and f.start is not None}
    counts: dict[str, int] = {}
    for label in _PLACEHOLDER.findall(text or ""):
        if label in labels:
            counts[label] = counts.get(label, 0) + 1
    if not counts:
        return None
    parts = []
    for label, n in counts.items():
        one, many = PII_NAMES.get(label, (f"{label} value", f"{label} values"))
        parts.append(f"{n} {one if n == 1 else many} (<{label}>)")
    what = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
    action = ex.prompt_action if direction == "prompt" else ex.output_action
    if direction == "prompt":
        seen = ("the model saw it redacted too" if action == "redact"
                else "the model saw it as written" if action in (None, "allow", "flag") else "")
    else:
        seen = "it was shown to you as written" if action in (None, "allow", "flag") else ""
    return (f"Stored with {what} replaced (privacy policy: personal data is cut from stored text, whatever the "
            f"action)" + (f"; {seen}." if seen else "."))


def _side_captions(ex: ExchangeView, direction: str, stored: bool = True) -> list[Caption]:
    """The findings line of one side, then (``stored``) the note on what was stored of it."""
    out = []
    line = findings_line(ex, direction)
    if line is not None:
        out.append(Caption(f":material/shield: {direction} findings: {escape_markdown(line.labels)} · action: "
                           f"**{escape_markdown(line.action)}**"))
    note = stored_note(ex, direction) if stored else None
    if note is not None:
        out.append(Caption(escape_markdown(note), STORED_NOTE_HELP))
    return out


def prompt_captions(ex: ExchangeView) -> list[Caption]:
    """Under the user's message: its findings and what was stored of it."""
    return _side_captions(ex, "prompt")


def answer_captions(ex: ExchangeView) -> list[Caption]:
    """Under the answer: the status line, its findings, what was stored of it (only of an answer the user saw) and
    its review state."""
    out = [Caption(escape_markdown(status_line(ex))), *_side_captions(ex, "output", stored=answer_was_shown(ex))]
    review = review_status(ex)
    if review is not None:
        out.append(Caption(f":material/flag: review: {escape_markdown(review)}"))
    return out


def can_rate(ex: ExchangeView) -> bool:
    """Whether the answer takes a thumbs up or down (it has an answer the user saw)."""
    return ex.status in RATEABLE_STATUSES


def thumbs_of(feedback: FeedbackView | None) -> int | None:
    """The st.feedback value (0 down, 1 up, None) for a stored rating."""
    return RATING_TO_THUMBS.get(feedback.rating) if feedback is not None else None


def feedback_caption(feedback: FeedbackView | None) -> str | None:
    """The line under the thumbs: what the user said, when."""
    if feedback is None:
        return None
    said = "You rated this answer " + ("thumbs up" if feedback.rating > 0 else "thumbs down")
    said += f" ({when(feedback.updated_at)})"
    return said + (f"; your reason: {feedback.reason}" if feedback.reason else ".")


def feedback_captions(feedback: FeedbackView | None) -> list[Caption]:
    """:func:`feedback_caption` as the page shows it (escaped), none without a rating."""
    said = feedback_caption(feedback)
    return [Caption(escape_markdown(said))] if said else []


def build_notice(build: demo_builds.DemoBuildView) -> tuple[str, str]:
    """What the page says while the version it is to serve is being built: (``info`` | ``error`` | ``warning``,
    markdown with the values escaped)."""
    name = escape_markdown(build.name)
    if build.state == "building":
        return "info", (f"{name} is being built: {build.fraction:.0%} ({escape_markdown(build.detail)}). The chat "
                        "opens by itself when it is ready; nothing to do.")
    if build.state == "built":
        return "info", (f"{name} is built; the engine starts loading it in a moment. The chat opens by itself when "
                        "it is ready.")
    if build.state == "failed":
        return "error", (f"Building {name} failed: {escape_markdown(build.message)}. The chat opens once it is "
                         f"built; the build's log is `{str(build.log or demo_builds.BUILD_LOG).replace('`', '')}`. "
                         "Ask an admin: starting the console again (`llm-console run`) retries the build.")
    return "warning", (f"Building {name} stopped at {build.fraction:.0%}: its process is gone. Ask an admin: "
                       "starting the console again (`llm-console run`) continues it.")


# --- one answer: what is said in its place, what can be done with it ------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """A message the page shows with ``st.<level>`` (``markdown``, ``info``, ``warning`` or ``error``): markdown, its
    values escaped; ``progress`` (0..1) draws a bar under it."""

    level: str
    text: str
    progress: float | None = None


def answer_notice(ex: ExchangeView) -> Notice | None:
    """What stands in place of an answer that is not one (blocked, interrupted, still pending, failed); None for an
    answer, which the page shows as it was written."""
    if ex.status == "blocked":
        return Notice("warning", "This message was blocked by the safety policy and never reached the model.")
    if ex.status == "interrupted":
        return Notice("warning", "(no answer: the console stopped while the model was answering)")
    if ex.status == "pending":
        return Notice("info", "(no answer stored: the model is still answering, or its answer could not be saved)")
    if ex.status == "error":
        return Notice("error", f"The model failed to answer: {escape_markdown(ex.error or 'unknown error')}")
    return None


def answer(ex: ExchangeView) -> Notice:
    """What the assistant's message shows: the answer as written (level ``markdown``), or what stands in its place
    (:func:`answer_notice`)."""
    return answer_notice(ex) or Notice("markdown", escape_markdown(ex.response) or "_(no text)_")


def answer_was_shown(ex: ExchangeView) -> bool:
    """Whether the answer reached the user (so what was stored of it may differ from what they saw)."""
    return ex.status not in ("blocked", "error")


def review_status(ex: ExchangeView) -> str | None:
    """The exchange's review state the page marks it with ("pending", "decided"...), None when it never went to
    review."""
    return ex.review_status if ex.review_status and ex.review_status != "none" else None


def can_send_to_review(ex: ExchangeView) -> bool:
    """A pending answer may still come (and be judged): nothing to send yet."""
    return ex.status != "pending"


SENT_TO_REVIEW = "Sent to review: a reviewer sees your note."


# --- feedback on one answer ----------------------------------------------------------------------------------------

NO_REASON = "Type what was wrong in the box first; your thumbs down is saved either way."
REASON_HELP = (f"At most {MAX_REASON_CHARS:,} characters. Personal data is cut before it is stored; a reviewer may "
               "read it.")


def rating_of(thumbs: int | None) -> int | None:
    """The stored rating for an st.feedback value (None: the user took their rating back)."""
    return None if thumbs is None else THUMBS_TO_RATING[thumbs]


def asks_reason(feedback: FeedbackView | None) -> bool:
    """A thumbs down takes a reason (a thumbs up, or no rating, does not)."""
    return feedback is not None and feedback.rating < 0


def reason_problem(reason: str) -> str | None:
    """Why a reason is not sent (an empty box), None when it is sent."""
    return None if reason.strip() else NO_REASON


def reason_thanks(result: FeedbackResult) -> str:
    """The toast after a reason is saved: whether a reviewer will read it."""
    return ("Thank you: a reviewer will look at it." if result.review_item_id
            else "Thank you: your reason is saved.")


# --- a refused message -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A message the service refused (too long, empty, bad settings, over quota): it goes back in the box, with
    why (``why``, shown as an error) and what to do (``hint``)."""

    text: str
    why: str
    hint: str


def refusal(text: str, refused: Exception) -> Refusal:
    return Refusal(text, str(refused), refusal_hint(refused))


def refusal_lines(why: str | None, hint: str | None) -> tuple[str, str]:
    """(error, caption) the page shows above the box the refused text is back in."""
    return why or "The message was refused.", hint or "Your message is back in the box below."


# --- a turn that has just been answered -------------------------------------------------------------------------


def blocked_notice(turn: ChatTurn) -> str:
    """What the page says in place of the answer to a blocked prompt (plain text)."""
    return turn.outcome.notice if turn.outcome and turn.outcome.notice else "Blocked."


@dataclass(frozen=True)
class TurnEnd:
    """After a turn: ``rerun`` to draw the stored exchange (with ``notice`` shown above the history), or stay put
    with ``warning`` under an answer that could not be stored (the screen is its only copy: a rerun would wipe it).
    Texts are plain."""

    rerun: bool
    notice: str | None = None
    warning: str | None = None


def turn_end(turn: ChatTurn) -> TurnEnd:
    outcome = turn.outcome
    if outcome is not None and not outcome.saved:
        return TurnEnd(False, warning=None if turn.blocked else (outcome.notice or "This answer was not saved."))
    return TurnEnd(True, notice=outcome.notice if outcome is not None and outcome.notice else None)


# --- what is served --------------------------------------------------------------------------------------------

NO_MODEL = "No model is being served; ask an admin."


def waits_for_build(serving: ServingView) -> bool:
    """Nothing is loaded yet: the version the console is to serve may still be being built (the page looks)."""
    return serving.model_version is None and serving.state in ("none", "stopped")


def build_progress(build: demo_builds.DemoBuildView) -> Notice:
    """:func:`build_notice` as a :class:`Notice`, with a progress bar while it builds."""
    level, text = build_notice(build)
    return Notice(level, text, build.fraction if build.state == "building" else None)


def serving_notice(serving: ServingView, build: demo_builds.DemoBuildView | None = None) -> Notice | None:
    """What the page says about the served model while it cannot chat, or is switching (None when it is ready).
    A console waiting on a build (:func:`waits_for_build`: the page looks for one, ``build``) says how the build
    goes instead."""
    model = escape_markdown(serving.model_version or "?")
    if waits_for_build(serving) and build is not None:
        return build_progress(build)
    if waits_for_build(serving):
        if serving.state == "none":
            return Notice("warning", NO_MODEL)
        return Notice("error", f"{escape_markdown(serving.message)} Chat is paused; ask an admin.")
    if serving.state == "switching":
        # The served engine's own words: whether messages wait for the new version (stop-then-load) and why, or
        # are answered by the old one meanwhile (blue-green).
        return Notice("info", escape_markdown(serving.message), serving.progress)
    if serving.state == "loading":
        return Notice("info", f"The model {model} is loading: {escape_markdown(serving.message)}", serving.progress)
    if not serving.ready:
        what = "has stopped" if serving.state == "stopped" else "failed"
        why = escape_markdown(serving.error or serving.message)
        return Notice("error", f"The model {model} {what}: {why}. Chat is paused; ask an admin.")
    return None
