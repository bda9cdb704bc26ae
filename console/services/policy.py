"""The moderation policy in force: view it (admins, reviewers) and replace it (admins); changes are versioned."""

from __future__ import annotations

from dataclasses import dataclass

from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import ConsoleError, InvalidInput
from console.services.text import is_clean
from db import safety as safety_q


@dataclass(frozen=True)
class PolicyView:
    version: int
    file_version: str
    output_mode: str
    keep_raw_text: bool
    content: str
    scanner_notice: str | None
    scanners: dict[str, str]
    raw_text_note: str = ""  # what keep_raw_text means here: whether "reveal raw text" can ever be offered


def raw_text_note(keep_raw_text: bool, retention_raw_days: int) -> str:
    """What the policy's ``keep_raw_text`` means for reviewers, and what turning it on (or off) changes."""
    kept = (f"Where personal data was cut from a prompt or an answer before it was stored, the text as written is "
            f"kept apart from the stored (redacted) text, for {retention_raw_days} days (retention setting "
            "LLM_CONSOLE_RETENTION_RAW_DAYS), and is erased with a person's content on request. Only reviewers can "
            "reveal it, one side of one review item at a time, after typing a reason; every reveal is an audit "
            "event, and an export with raw text needs a second admin's approval. A text with nothing cut has no "
            "raw copy, and a system prompt's raw text is never kept.")
    if keep_raw_text:
        return f"Raw text is kept (keep_raw_text = true). {kept}"
    return ("Raw text is not kept (keep_raw_text = false): only redacted text is stored, so reviewers can never "
            "reveal raw text (the review queue's \"Reveal raw text\" is not offered). Turning it on (keep_raw_text = "
            f"true) changes that for exchanges stored from then on, not for earlier ones: {kept}")


def _stack(ctx: AppContext):  # noqa: ANN202
    stack = ctx.safety
    if stack is None:
        raise ConsoleError("Safety scanning is switched off (LLM_CONSOLE_SAFETY_ENABLED=false).")
    return stack


@requires("policy.view")
def current(ctx: AppContext, actor: Principal) -> PolicyView:
    stack = _stack(ctx)
    p = stack.policy
    return PolicyView(stack.policy_version, p.version, p.output_mode, p.keep_raw_text, p.source_text, stack.notice,
                      dict(stack.runner.versions),
                      raw_text_note(p.keep_raw_text, ctx.settings.retention_raw_days))


@requires("policy.manage")
def replace(ctx: AppContext, actor: Principal, content: str) -> PolicyView:
    """Validate ``content`` (TOML), store it as a new policy version (audited) and put it in force."""
    from engine.safety.policy import Policy, PolicyError

    if not content or not content.strip():
        raise InvalidInput("The policy is empty.")
    if not is_clean(content.replace("\x00", "")):  # a NUL is TOML's to refuse; a lone surrogate cannot be stored
        raise InvalidInput("The policy is not valid TOML: it holds a broken surrogate character.")
    try:
        policy = Policy.from_toml(content)
    except PolicyError as exc:
        raise InvalidInput(f"The policy is not valid: {exc}") from None
    stack = _stack(ctx)
    with ctx.db.session() as s:
        stored = safety_q.store_policy_version(s, policy.source_text, actor.user_id, actor=actor.username)
        version = stored.version
    with stack.lock:
        stack.policy = policy
        stack.policy_version = version
    return current(ctx, actor)
