"""The moderation policy in force: view it (admins, reviewers); every console follows the newest stored version.

Changing it is a request another admin approves (:mod:`console.services.policy_changes`): nobody replaces the
policy in one step any more. The policy file seeds the first version at start-up, and a changed file on disk
becomes a new version when a console starts with it (an operator's deployment, audited as ``policy.version`` by
``system``; see docs/safety.md "Changing the policy").

Each console process holds the policy it enforces in its safety stack. :func:`follow` makes it catch up with the
newest stored version (one indexed ``SELECT version ... LIMIT 1``; the text is read only when the number moved), so
a change approved on one replica reaches every replica: :class:`PolicyFollower` runs it on the reconciler's
cadence, and the Policy page runs it before it shows the policy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import ConsoleError, InvalidInput
from console.services.periodic import PeriodicTask
from console.services.text import is_clean
from db import policy_changes as changes_q
from db import safety as safety_q

if TYPE_CHECKING:
    from console.services.moderation import SafetyStack
    from engine.safety.policy import Policy

logger = logging.getLogger(__name__)


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


def _stack(ctx: AppContext) -> SafetyStack:
    stack: SafetyStack | None = ctx.safety
    if stack is None:
        raise ConsoleError("Safety scanning is switched off (LLM_CONSOLE_SAFETY_ENABLED=false).")
    return stack


def validate(content: object) -> Policy:
    """Parse a proposed policy text; InvalidInput naming the bad key (as the policy file's own errors do)."""
    from engine.safety.policy import Policy, PolicyError

    if not isinstance(content, str) or not content.strip():
        raise InvalidInput("The policy is empty.")
    if not is_clean(content.replace("\x00", "")):  # a NUL is TOML's to refuse; a lone surrogate cannot be stored
        raise InvalidInput("The policy is not valid TOML: it holds a broken surrogate character.")
    try:
        return Policy.from_toml(content)
    except PolicyError as exc:
        raise InvalidInput(f"The policy is not valid: {exc}") from None


def follow(ctx: AppContext) -> int | None:
    """Put the newest stored policy version in force in this process if it is not yet; returns the version now in
    force (None without a safety stack). Cheap when nothing changed: one indexed read of a number."""
    stack = ctx.safety
    if stack is None:
        return None
    with ctx.db.session(readonly=True) as s:
        newest = changes_q.latest_version_number(s)
        in_force: int = stack.policy_version
        if newest is None or newest == in_force:
            return in_force
        row = safety_q.latest_policy_version(s)
        if row is None:
            return in_force
        number, content = row.version, row.content
    from engine.safety.policy import Policy

    try:
        policy = Policy.from_toml(content)
    except Exception:  # noqa: BLE001 - a stored version that no longer parses must not stop serving
        logger.exception("stored policy version %s does not parse; keeping version %s", number, in_force)
        return in_force
    with stack.lock:
        if stack.policy_version != number:
            logger.info("policy version %s in force (was %s)", number, stack.policy_version)
            stack.policy, stack.policy_version = policy, number
    return number


class PolicyFollower(PeriodicTask):
    """Every few seconds (the reconciler's cadence), :func:`follow` in this process: every replica runs it."""

    def __init__(self, ctx: AppContext, *, interval_s: float) -> None:
        super().__init__(interval_s, name="policy-follower")
        self.ctx = ctx

    def run_once(self) -> int | None:
        return follow(self.ctx)


@requires("policy.view")
def current(ctx: AppContext, actor: Principal) -> PolicyView:
    stack = _stack(ctx)
    follow(ctx)
    p = stack.policy
    return PolicyView(stack.policy_version, p.version, p.output_mode, p.keep_raw_text, p.source_text, stack.notice,
                      dict(stack.runner.versions),
                      raw_text_note(p.keep_raw_text, ctx.settings.retention_raw_days))
