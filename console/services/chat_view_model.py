"""What the chat page says about a stored exchange, worked out without Streamlit (the page only draws it).

Plain text in, plain text out: the page escapes it (``console.textsafe``) where it draws it; only
:func:`build_notice` returns markdown, its values escaped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from console.services import demo_builds
from console.services.chat import ExchangeView
from console.services.feedback import RATEABLE_STATUSES, FeedbackView
from console.services.quotas import QuotaExceeded
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
