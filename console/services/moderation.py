"""Where the safety library meets the chat flow and the store: gates for prompts and outputs, and their records."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import OperationalError

from console.services.access import Principal
from console.services.context import AppContext
from console.services.errors import InvalidInput
from db import audit as audit_q
from db import safety as safety_q
from db import state as state_q
from db.review import items as review_items
from db.review.items import ReviewItemRecord
from db.safety import FindingRecord, RawTextRecord
from engine.safety.base import Finding
from engine.safety.deadline import ScanTimeout

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from console.settings import Settings
    from db.database import Database
    from engine.safety.incremental import StreamingScan
    from engine.safety.policy import Decision, Policy
    from engine.safety.runner import ScannerRunner, ScanReport

logger = logging.getLogger(__name__)

BLOCKED_PROMPT_NOTICE = "Your message was blocked by the safety policy and was not sent to the model."
BLOCKED_OUTPUT_NOTICE = "The answer was withheld: it did not pass the safety policy."
REDACTED_PROMPT_NOTICE = "Personal data in your message was replaced before it reached the model."
BLOCKED_SYSTEM_PROMPT_NOTICE = ("The system prompt was blocked by the safety policy: nothing was sent to the model. "
                                "Start a new conversation with another system prompt.")
REDACTED_SYSTEM_PROMPT_NOTICE = "Personal data in the system prompt was replaced before it reached the model."
# Injection and jailbreak findings say why in words ({reason}: engine.safety.injection_patterns.LABEL_DESCRIPTIONS).
BLOCKED_INJECTION_NOTICE = ("Your message was blocked by the safety policy and was not sent to the model: it looks "
                            "like {reason}.")
BLOCKED_INJECTION_SYSTEM_PROMPT_NOTICE = ("The system prompt was blocked by the safety policy: it looks like {reason}. "
                                          "Nothing was sent to the model. Start a new conversation with another "
                                          "system prompt.")
FLAGGED_INJECTION_NOTICE = "Your message was sent, and flagged for review: it looks like {reason}."
FLAGGED_INJECTION_SYSTEM_PROMPT_NOTICE = "The system prompt was flagged for review: it looks like {reason}."
# The system prompt is judged as a prompt; its findings are stored as prompt findings whose detector names it
# (the findings table knows two directions), without spans: those would point into the system prompt, not the
# exchange's prompt.
SYSTEM_PROMPT = "system_prompt"
SYSTEM_PROMPT_DETECTOR_PREFIX = "system prompt/"
# A scan over the time limit (setting scan_timeout_seconds): the prompt is refused, the answer withheld (fail closed:
# an answer nobody could check is neither shown nor stored; the stored exchange keeps this marker instead).
SLOW_PROMPT_NOTICE = ("Your message took longer than {limit:g} s to check for safety, so it was not sent to the model. "
                      "Shorten it, or split it into several messages.")
SLOW_SYSTEM_PROMPT_NOTICE = ("The system prompt took longer than {limit:g} s to check for safety, so nothing was sent "
                             "to the model. Shorten the system prompt.")
SLOW_OUTPUT_NOTICE = ("The answer was withheld: it took longer than {limit:g} s to check for safety. Ask for a shorter "
                      "answer.")
SLOW_OUTPUT_STORED = "[answer withheld: its safety check took longer than {limit:g} s]"
SCAN_TIMEOUT_ACTION = "safety.scan_timeout"
# Hours a reviewer has to decide an item, by severity (3 = highest).
REVIEW_DEADLINE_HOURS = {3: 4, 2: 24, 1: 72, 0: 168}


@dataclass(frozen=True)
class FindingView:
    direction: str
    detector: str
    label: str
    score: float
    start: int | None
    end: int | None
    action: str


@dataclass(frozen=True)
class GateResult:
    """The policy's verdict on one text and the versions of it that go to the model, the user and the store."""

    direction: str
    original: str
    action: str
    text_for_model: str
    text_for_user: str
    text_for_storage: str
    findings: tuple[Finding, ...] = ()
    decision: Decision | None = None
    notice: str | None = None
    policy_version: int | None = None
    keep_raw: bool = False
    source: str = ""  # "system_prompt" for the conversation's system prompt (judged as a prompt)
    timed_out: ScanTimeout | None = None  # the scan went over its time limit: the answer is withheld unchecked

    @property
    def is_system_prompt(self) -> bool:
        return self.source == SYSTEM_PROMPT


class ScanTooSlow(InvalidInput):
    """A prompt (or system prompt) whose safety scan went over the time limit: refused, nothing sent or stored."""

    def __init__(self, message: str, timeout: ScanTimeout, direction: str, source: str, chars: int) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.direction = direction
        self.source = source
        self.chars = chars


@dataclass
class SafetyStack:
    """The loaded scanners, the policy in force and its stored version number; one per process."""

    runner: ScannerRunner
    policy: Policy
    policy_version: int
    notice: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


POLICY_FILE_STATE_KEY = "policy_file_sha256"


def build_safety_stack(settings: Settings, db: Database) -> SafetyStack:
    """Load the scanners once and decide which policy is in force.

    The newest stored policy version is in force (admins change it on the Policy page). The policy file seeds
    the first version, and a changed file (its hash differs from the one last seen) becomes a new version.
    """
    from engine.safety.pii import PiiConfig
    from engine.safety.policy import DEFAULT_POLICY_PATH, Policy
    from engine.safety.runner import build_runner
    from engine.safety.toxicity import ToxicityConfig

    path = settings.policy_file if settings.policy_file.exists() else DEFAULT_POLICY_PATH
    file_policy = Policy.load(path)
    tox = ToxicityConfig(model_type=settings.detoxify_model, checkpoint=_path(settings.detoxify_checkpoint),
                         huggingface_config_dir=_path(settings.detoxify_config_dir))
    runner, notice = build_runner(PiiConfig(), tox, settings.scan_timeout_seconds)
    with db.session() as s:
        latest = safety_q.latest_policy_version(s)
        if latest is None or state_q.get_state(s, POLICY_FILE_STATE_KEY) != file_policy.sha256:
            latest = safety_q.store_policy_version(s, file_policy.source_text, None, actor="system")
            state_q.set_state(s, POLICY_FILE_STATE_KEY, file_policy.sha256, actor="system")
        policy = file_policy if latest.content == file_policy.source_text else Policy.from_toml(latest.content)
        version = latest.version
        from console.services.alerts import note_safety_stack

        note_safety_stack(s, notice)  # scanner_fallback alert while a fallback judges toxicity
    if notice:
        logger.warning("toxicity scanner: %s", notice)
    return SafetyStack(runner=runner, policy=policy, policy_version=version, notice=notice)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def hold_output(ctx: AppContext) -> bool:
    stack: SafetyStack | None = ctx.safety
    return bool(stack and stack.policy.hold_output)


PII_DETECTOR = "presidio"


def _redact_all(text: str, findings: tuple[Finding, ...], policy: Policy | None = None) -> str:
    """Cut every personal-data span (not toxicity windows: those judge the text, they are not data to hide).

    With a policy, place names it leaves in stored text (its ``redact_places``) stay: see Policy.stored_redactions.
    """
    from engine.safety.policy import redact

    pii = [f for f in findings if f.has_span and f.detector == PII_DETECTOR]
    return redact(text, policy.stored_redactions(text, pii) if policy is not None else pii)


def _gate(ctx: AppContext, direction: str, text: str, source: str = "", report: ScanReport | None = None) -> GateResult:
    stack: SafetyStack | None = ctx.safety
    if stack is None or not text:
        return GateResult(direction, text, "allow", text, text, text, source=source)
    if report is None:
        try:
            report = stack.runner.scan(text, direction=direction,
                                       asked=stack.policy.ruled_labels(direction))  # type: ignore[arg-type]
        except ScanTimeout as exc:
            return _scan_timed_out(direction, text, source, exc, stack.policy_version)
    decision: Decision = stack.policy.decide(direction, report.findings)  # type: ignore[arg-type]
    applied = decision.apply(text) if decision.action == "redact" else text
    # Stored text is redacted by default: every PII span is cut, whatever the enforced action.
    storage = _redact_all(text, report.findings, stack.policy)
    notice = None
    if direction == "prompt":
        system = source == SYSTEM_PROMPT
        injection = _injection_reason(decision)
        if decision.action == "block":
            notice = BLOCKED_SYSTEM_PROMPT_NOTICE if system else BLOCKED_PROMPT_NOTICE
            if injection:
                notice = (BLOCKED_INJECTION_SYSTEM_PROMPT_NOTICE if system
                          else BLOCKED_INJECTION_NOTICE).format(reason=injection)
        elif decision.action == "redact":
            notice = REDACTED_SYSTEM_PROMPT_NOTICE if system else REDACTED_PROMPT_NOTICE
        elif decision.action == "flag" and injection:
            notice = (FLAGGED_INJECTION_SYSTEM_PROMPT_NOTICE if system
                      else FLAGGED_INJECTION_NOTICE).format(reason=injection)
        for_model, for_user = applied, text
    else:
        for_model = text
        for_user = BLOCKED_OUTPUT_NOTICE if decision.action == "block" else applied
        if decision.action == "block":
            notice = BLOCKED_OUTPUT_NOTICE
    return GateResult(direction, text, decision.action, for_model, for_user, storage, report.findings, decision,
                      notice, stack.policy_version, stack.policy.keep_raw_text, source)


def _injection_reason(decision: Decision) -> str | None:
    """The injection labels among the enforced hits in words ("a prompt-injection attempt (...)"), or None."""
    from engine.safety.injection import describe

    return describe({h.finding.label for h in decision.triggered})


def _scan_timed_out(direction: str, text: str, source: str, exc: ScanTimeout, policy_version: int) -> GateResult:
    """A prompt over the limit raises :class:`ScanTooSlow`; an answer over it is withheld (fail closed)."""
    logger.warning("%s scan of %s characters stopped: %s", source or direction, len(text), exc)
    if direction == "prompt":
        notice = SLOW_SYSTEM_PROMPT_NOTICE if source == SYSTEM_PROMPT else SLOW_PROMPT_NOTICE
        raise ScanTooSlow(notice.format(limit=exc.limit_seconds), exc, direction, source, len(text))
    shown = SLOW_OUTPUT_NOTICE.format(limit=exc.limit_seconds)
    return GateResult(direction, text, "block", text, shown, SLOW_OUTPUT_STORED.format(limit=exc.limit_seconds),
                      notice=shown, policy_version=policy_version, source=source, timed_out=exc)


def record_scan_timeout(ctx: AppContext, by: Principal, *, direction: str, source: str, chars: int,
                        timeout: ScanTimeout, request_id: str | None = None, exchange_id: int | None = None) -> None:
    """Put a scan that went over its time limit on the audit chain (sizes and the step it stopped at, no text).

    Not an action of its own (so not guarded): the chat or evaluation service that ran the scan checked ``by``.
    """
    details = {"direction": direction, "source": source or direction, "chars": chars,
               "limit_seconds": timeout.limit_seconds, "stopped_at": timeout.where,
               "outcome": "refused" if direction == "prompt" else "withheld"}
    if request_id:
        details["request_id"] = request_id
    try:
        with ctx.db.session() as s:
            audit_q.append_event(s, actor=by.username, actor_id=by.user_id, action=SCAN_TIMEOUT_ACTION,
                                 object_type="exchange" if exchange_id is not None else "chat",
                                 object_id=exchange_id, details=details)
    except OperationalError as exc:  # a busy or full database must not turn the refusal into an error page
        logger.error("recording a scan over its time limit failed (%s): %s", details,
                     exc.orig if exc.orig is not None else exc)


def check_prompt(ctx: AppContext, text: str) -> GateResult:
    return _gate(ctx, "prompt", text)


def check_system_prompt(ctx: AppContext, text: str) -> GateResult:
    """The system prompt, judged by the prompt rules: blocked, redacted for the model, always redacted when stored."""
    return _gate(ctx, "prompt", text, SYSTEM_PROMPT)


def check_output(ctx: AppContext, text: str, scan: StreamingScan | None = None) -> GateResult:
    """The policy's verdict on an answer. ``scan`` is the answer's :func:`streaming_scan`, fed while it streamed:
    only its tail is scanned now. A scan over the time limit withholds the answer (``timed_out`` is set)."""
    report = None
    stack: SafetyStack | None = ctx.safety
    if scan is not None and stack is not None and text:
        try:
            report = scan.finish(text)
        except ScanTimeout as exc:
            return _scan_timed_out("output", text, "", exc, stack.policy_version)
    return _gate(ctx, "output", text, report=report)


def streaming_scan(ctx: AppContext) -> StreamingScan | None:
    """An output scan to feed while the answer streams (finished sentences are scanned in the background), or
    None when nothing is scanned (safety off)."""
    stack: SafetyStack | None = ctx.safety
    if stack is None:
        return None
    from engine.safety.incremental import StreamingScan

    return StreamingScan(stack.runner, asked=sorted(stack.policy.ruled_labels("output")))


def strongest_action(gates: Sequence[GateResult | None]) -> str:
    """The strongest enforced action of the gates (block > redact > flag > allow)."""
    order = ("allow", "flag", "redact", "block")
    return max((g.action for g in gates if g is not None), key=order.index, default="allow")


def _finding_action(gate: GateResult, finding: Finding) -> str:
    decision = gate.decision
    if decision is None:
        return "allow"
    for hit in decision.triggered:
        if hit.finding == finding:
            return hit.action
    for hit in decision.monitored:
        if hit.finding == finding:
            return f"monitor:{hit.action}"
    return "allow"


def severity_of(gates: Sequence[GateResult], manual: bool = False) -> int:
    """3: blocked, or PII in an output; 2: toxic content or PII in a prompt; 1: other flags or manual."""
    sev = 1 if manual else 0
    for g in gates:
        if g.action == "block":
            sev = max(sev, 3)
        for f in g.findings:
            if g.decision is None or g.action == "allow":
                continue
            if f.has_span and g.direction == "output":
                sev = max(sev, 3)
            else:
                sev = max(sev, 2)
        if g.action == "flag":
            sev = max(sev, 1)
    return sev


def finding_records(gates: Sequence[GateResult]) -> tuple[FindingRecord, ...]:
    """Every finding of the gates, with the action the policy took on it, ready to store.

    A system prompt's findings are prompt findings whose detector reads ``system prompt/<detector>``, spanless.
    """
    records = []
    for g in gates:
        for f in g.findings:
            system = g.is_system_prompt
            records.append(FindingRecord(
                direction=g.direction,
                detector=(SYSTEM_PROMPT_DETECTOR_PREFIX + f.detector) if system else f.detector,
                label=f.label, score=f.score, action=_finding_action(g, f), detector_version=f.detector_version,
                start=None if system else f.start, end=None if system else f.end,
            ))
    return tuple(records)


def raw_texts_to_keep(gates: Sequence[GateResult]) -> tuple[RawTextRecord, ...]:
    """The unredacted texts the policy keeps: only where the stored text differs from the original.

    Never the system prompt's: it is stored redacted, once, on its conversation.
    """
    return tuple(RawTextRecord(g.direction, g.original) for g in gates
                 if g.keep_raw and g.text_for_storage != g.original and not g.is_system_prompt)


def review_item_for(ctx: AppContext, gates: Sequence[GateResult]) -> ReviewItemRecord | None:
    """The review item a flagged or blocked turn enters the queue with (severity, deadline); None otherwise."""
    flagged = [g for g in gates if g.action in ("flag", "block")]
    if not flagged:
        return None
    severity = severity_of(gates)
    return ReviewItemRecord(
        reason="blocked" if any(g.action == "block" for g in flagged) else "flagged",
        direction=flagged[-1].direction,
        severity=severity,
        due_at=ctx.now() + timedelta(hours=REVIEW_DEADLINE_HOURS[severity]),
    )


def send_to_review(ctx: AppContext, session: Session, exchange: Any, actor: Principal, note: str) -> int:
    """Put an exchange in the queue by hand, or add ``note`` to its item that waits for a decision (one per
    exchange: see :func:`db.review.items.request_review`); ``note`` must already be redacted (:func:`redact_pii`).
    Returns the item's id."""
    item, _ = review_items.request_review(
        session, exchange_id=exchange.id, actor=actor.username, severity=1,
        due_at=ctx.now() + timedelta(hours=REVIEW_DEADLINE_HOURS[1]), note=note, created_by_id=actor.user_id,
    )
    return item.id


def system_prompt_blocked(session: Session, exchange_id: int) -> bool:
    """True when this exchange was refused for its conversation's system prompt."""
    return any(f.detector.startswith(SYSTEM_PROMPT_DETECTOR_PREFIX) and f.action == "block"
               for f in safety_q.list_findings(session, exchange_id))


def findings_of(session: Session, exchange_id: int) -> tuple[FindingView, ...]:
    return tuple(FindingView(f.direction, f.detector, f.label, f.score, f.start, f.end, f.action)
                 for f in safety_q.list_findings(session, exchange_id))


# --- free text people type: notes and reasons ------------------------------------------------------------------
# Operators' and reviewers' notes, escalation notes and reveal reasons are stored with personal data cut, like
# every stored prompt and answer. With the scanners loaded, Presidio (spaCy and its recognizers) finds it. With
# safety scanning switched off, or while the scanners failed to load, Presidio's pattern recognizers alone do
# (emails, phone numbers, cards, IBANs, SSNs, IP addresses; no names or places): a note is never refused and
# never stored with those in the clear.

_regex_lock = threading.Lock()
_regex_scanner: _RegexPiiScanner | None = None


class _RegexPiiScanner:
    """Presidio's pattern recognizers without spaCy: what can be found without a language model."""

    name = PII_DETECTOR

    def __init__(self) -> None:
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
            UsSsnRecognizer,
        )

        from engine.safety.pii import (
            DEFAULT_PHONE_REGIONS,
            DEFAULT_SCORE_THRESHOLD,
            _offline_email_recognizer,
        )

        self.threshold = DEFAULT_SCORE_THRESHOLD
        self.recognizers = [_offline_email_recognizer("en"), CreditCardRecognizer(), IbanRecognizer(),
                            UsSsnRecognizer(), IpRecognizer(), PhoneRecognizer(supported_regions=DEFAULT_PHONE_REGIONS)]
        self.lock = threading.Lock()

    def scan(self, text: str) -> tuple[Finding, ...]:
        from engine.safety.normalize import normalize

        norm = normalize(text)
        findings = []
        with self.lock:
            for recognizer in self.recognizers:
                # Pattern recognizers need no NLP artifacts (Presidio passes None when it has none either).
                found = recognizer.analyze(norm.text, recognizer.supported_entities, None)  # type: ignore[arg-type]
                for r in found or ():
                    if r.score >= self.threshold:
                        start, end = norm.to_original(r.start, r.end)
                        findings.append(Finding(PII_DETECTOR, r.entity_type, min(max(r.score, 0.0), 1.0), start, end,
                                                "presidio-patterns"))
        return tuple(findings)


def _pattern_scanner() -> _RegexPiiScanner:
    global _regex_scanner
    with _regex_lock:
        if _regex_scanner is None:
            _regex_scanner = _RegexPiiScanner()
        return _regex_scanner


def _pii_scanner(ctx: AppContext) -> Any:
    from console.services.errors import ConsoleError

    try:
        stack: SafetyStack | None = ctx.safety
    except ConsoleError:  # the scanners failed to load: the pattern recognizers still work
        stack = None
    if stack is not None:
        for scanner in stack.runner.scanners:
            if scanner.name == PII_DETECTOR:
                return scanner
    return _pattern_scanner()


def redact_pii(ctx: AppContext, text: str) -> str:
    """Free text a person typed, fit to store: every personal-data span replaced by its ``<LABEL>``, NULs removed."""
    text = text.replace("\x00", "")
    if not text.strip():
        return text
    return _redact_all(text, tuple(_pii_scanner(ctx).scan(text)))
