"""The moderation policy: per direction and label, a threshold and an action; loaded from a versioned TOML file.

File shape (see ``default_policy.toml``)::

    version = "2026-11-26.1"          # required; stored with every exchange
    output_mode = "stream_then_scan"  # or "hold_until_scanned"
    keep_raw_text = false
    redact_places = "personal"        # which place names stored text loses: addresses_only | personal | all

    [rules.prompt.default]            # used for labels without their own rule
    action = "allow"

    [rules.prompt.EMAIL_ADDRESS]      # a PII entity type or a toxicity label
    threshold = 0.5
    action = "redact"                 # allow | flag | redact | block
    monitor_only = false              # true: record the would-be action, do not enforce it

    [rules.prompt.jailbreak]          # injection labels (jailbreak, prompt_injection): allow, flag or block only
    threshold = 0.5
    action = "flag"
    block_threshold = 0.95            # optional, with action = "flag": block from this score on

    [toxicity.thresholds.offline]     # optional, per toxicity detector: detoxify | offline | fallback
    threat = 0.3                      # replaces the rules' threshold for this detector's findings (both directions)
    [toxicity.thresholds.offline.output]
    threat = 0.4                      # ... or in one direction only

    [feedback]
    thumbs_down_to_review = true      # a user's thumbs-down with a reason opens a review item (default true)

A rule's action applies whichever detector judged; each detector's scores have their own scale, so its table
says where its scores cross the rule's line. A policy without these tables uses the rules' thresholds for all.
"""

from __future__ import annotations

import hashlib
import logging
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from engine.safety.base import Finding
from engine.safety.injection_patterns import INJECTION_LABELS
from engine.safety.pii import redact as _redact_spans
from engine.safety.toxicity import (
    DETECTOR_KIND_BY_NAME,
    DETECTOR_KINDS,
    DETECTOR_LABELS,
    DETOXIFY_LABELS,
    FALLBACK_LABEL,
)

logger = logging.getLogger(__name__)

DEFAULT_POLICY_PATH = Path(__file__).with_name("default_policy.toml")

Direction = Literal["prompt", "output"]
Action = Literal["allow", "flag", "redact", "block"]
OutputMode = Literal["stream_then_scan", "hold_until_scanned"]

DIRECTIONS: tuple[str, ...] = ("prompt", "output")
ACTIONS: tuple[str, ...] = ("allow", "flag", "redact", "block")
OUTPUT_MODES: tuple[str, ...] = ("stream_then_scan", "hold_until_scanned")
# Which LOCATION findings (place names outside a street address) are cut from stored text. Street addresses
# (ADDRESS, with the city and postcode inside them) are always cut. "personal": also places said about a person
# ("I live in Leeds", "I'm from Lyon"); "addresses_only": no bare place name; "all": every place name, so "What is
# the capital of France?" is stored as "What is the capital of <LOCATION>?".
PLACE_MODES: tuple[str, ...] = ("addresses_only", "personal", "all")
DEFAULT_PLACE_MODE = "personal"
PLACE_LABEL = "LOCATION"
# Higher wins when several rules trigger.
_PRECEDENCE = {"allow": 0, "flag": 1, "redact": 2, "block": 3}
DEFAULT_RULE = "default"
# Labels judged on the text as a whole: there is no span to redact.
_WHOLE_TEXT_LABELS = DETOXIFY_LABELS | {FALLBACK_LABEL}

_TOP_KEYS = {"version", "description", "output_mode", "keep_raw_text", "redact_places", "rules", "toxicity",
             "feedback"}
_RULE_KEYS = {"threshold", "action", "monitor_only", "block_threshold"}


class PolicyError(ValueError):
    """The policy file is invalid; the message starts with the dotted key at fault."""


@dataclass(frozen=True)
class Rule:
    """What to do when a finding with this label scores at least ``threshold``.

    ``block_threshold`` (rules whose action is flag, optional): from this score on, block instead of flag.
    """

    label: str
    threshold: float
    action: Action
    monitor_only: bool = False
    block_threshold: float | None = None


@dataclass(frozen=True)
class RuleHit:
    """A rule that matched a finding. ``action`` is what the rule asks for, enforced or (monitor-only) not."""

    direction: Direction
    rule: str  # the label the rule is keyed on, or "default"
    action: Action
    threshold: float
    monitor_only: bool
    finding: Finding


@dataclass(frozen=True)
class Decision:
    """The policy's verdict on one text.

    ``action`` is the enforced action (block > redact > flag > allow). ``triggered`` are the enforced hits,
    ``monitored`` the hits of monitor-only rules (their would-be action, not enforced). Hits whose action is
    ``allow`` are not listed.
    """

    direction: Direction
    action: Action
    triggered: tuple[RuleHit, ...]
    monitored: tuple[RuleHit, ...]
    policy_version: str

    @property
    def needs_review(self) -> bool:
        """Flagged and blocked texts go to the review queue."""
        return self.action in ("flag", "block")

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    @property
    def redactions(self) -> tuple[Finding, ...]:
        """The findings to cut out of the text when ``action`` is redact (enforced redact hits with a span)."""
        return tuple(h.finding for h in self.triggered if h.action == "redact" and h.finding.has_span)

    def apply(self, text: str) -> str:
        """The text to pass on: redacted where redact rules triggered, unchanged otherwise (block is the caller's)."""
        return redact(text, self.redactions)


def redact(text: str, findings: Iterable[Finding]) -> str:
    """Replace each span finding with ``<LABEL>`` (presidio-anonymizer); findings without a span are ignored."""
    return _redact_spans(text, findings)


def _err(key: str, message: str) -> PolicyError:
    return PolicyError(f"{key}: {message}")


def _parse_rule(key: str, label: str, raw: Any) -> Rule:
    if not isinstance(raw, Mapping):
        raise _err(key, "must be a table with threshold, action and monitor_only")
    unknown = sorted(set(raw) - _RULE_KEYS)
    if unknown:
        raise _err(f"{key}.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(_RULE_KEYS))})")
    if "action" not in raw:
        raise _err(f"{key}.action", "is required")
    action = raw["action"]
    if action not in ACTIONS:
        raise _err(f"{key}.action", f"must be one of {', '.join(ACTIONS)}, got {action!r}")
    threshold = raw.get("threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise _err(f"{key}.threshold", f"must be a number, got {threshold!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise _err(f"{key}.threshold", "must be between 0 and 1")
    monitor_only = raw.get("monitor_only", False)
    if not isinstance(monitor_only, bool):
        raise _err(f"{key}.monitor_only", f"must be true or false, got {monitor_only!r}")
    if action == "redact" and label in INJECTION_LABELS:
        raise _err(f"{key}.action", f"redact is not meaningful for {label}: use allow, flag or block")
    if action == "redact" and label in _WHOLE_TEXT_LABELS:
        raise _err(f"{key}.action", f"{label} is judged on the whole text and has no span to redact; use flag or block")
    block_threshold = raw.get("block_threshold")
    if block_threshold is not None:
        block_threshold = _parse_threshold(f"{key}.block_threshold", block_threshold)
        if action != "flag":
            raise _err(f"{key}.block_threshold", f"needs action = \"flag\" (flag from threshold, block from "
                                                 f"block_threshold), got action {action!r}")
        if block_threshold < float(threshold):
            raise _err(f"{key}.block_threshold", f"must be at least the threshold ({float(threshold):g})")
    return Rule(label=label, threshold=float(threshold), action=action, monitor_only=monitor_only,
                block_threshold=block_threshold)


def _parse_threshold(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _err(key, f"must be a number, got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise _err(key, "must be between 0 and 1")
    return float(value)


def _parse_detector_thresholds(raw: Any) -> Mapping[str, Mapping[str, Mapping[str, float]]]:
    """``[toxicity]`` -> {detector kind: {direction: {label: threshold}}} (direction tables override the shared one)."""
    if not isinstance(raw, Mapping):
        raise _err("toxicity", "must be a table with [toxicity.thresholds.<detector>] tables")
    unknown = sorted(set(raw) - {"thresholds"})
    if unknown:
        raise _err(f"toxicity.{unknown[0]}", "unknown key (allowed: thresholds)")
    tables = raw.get("thresholds", {})
    if not isinstance(tables, Mapping):
        raise _err("toxicity.thresholds", "must be a table of detectors")
    out: dict[str, Mapping[str, Mapping[str, float]]] = {}
    for kind, table in tables.items():
        key = f"toxicity.thresholds.{kind}"
        if kind not in DETECTOR_KINDS:
            raise _err(key, f"unknown detector (allowed: {', '.join(DETECTOR_KINDS)})")
        if not isinstance(table, Mapping):
            raise _err(key, "must be a table of label = threshold")
        labels = DETECTOR_LABELS[kind]
        shared: dict[str, float] = {}
        per_direction: dict[str, dict[str, float]] = {d: {} for d in DIRECTIONS}
        for name, value in table.items():
            if name in DIRECTIONS:
                if not isinstance(value, Mapping):
                    raise _err(f"{key}.{name}", "must be a table of label = threshold")
                for label, threshold in value.items():
                    if label not in labels:
                        raise _err(f"{key}.{name}.{label}",
                                   f"not a label of the {kind} detector (allowed: {', '.join(sorted(labels))})")
                    per_direction[name][label] = _parse_threshold(f"{key}.{name}.{label}", threshold)
            elif name in labels:
                shared[name] = _parse_threshold(f"{key}.{name}", value)
            else:
                raise _err(f"{key}.{name}", f"not a label of the {kind} detector "
                                            f"(allowed: {', '.join(sorted(labels))}, or a prompt/output table)")
        out[kind] = MappingProxyType({d: MappingProxyType({**shared, **per_direction[d]}) for d in DIRECTIONS})
    return MappingProxyType(out)


def _parse_feedback(raw: Any) -> bool:
    """``[feedback]`` -> whether a thumbs-down with a reason goes to review (default true)."""
    if not isinstance(raw, Mapping):
        raise _err("feedback", "must be a table with thumbs_down_to_review = true or false")
    unknown = sorted(set(raw) - {"thumbs_down_to_review"})
    if unknown:
        raise _err(f"feedback.{unknown[0]}", "unknown key (allowed: thumbs_down_to_review)")
    value = raw.get("thumbs_down_to_review", True)
    if not isinstance(value, bool):
        raise _err("feedback.thumbs_down_to_review", f"must be true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class Policy:
    """A validated moderation policy. Build it with ``from_toml`` or ``load``."""

    version: str
    description: str
    output_mode: OutputMode
    keep_raw_text: bool
    # rules[direction][label]; each direction always has a "default" rule.
    rules: Mapping[str, Mapping[str, Rule]]
    source_text: str
    sha256: str
    redact_places: str = DEFAULT_PLACE_MODE
    # detector_thresholds[kind][direction][label]: a toxicity detector's own threshold (see the module docs).
    detector_thresholds: Mapping[str, Mapping[str, Mapping[str, float]]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    # [feedback] thumbs_down_to_review: a user's thumbs-down with a reason opens a review item (reason "feedback").
    feedback_to_review: bool = True

    @classmethod
    def from_toml(cls, text: str) -> Policy:
        """Parse and validate a policy; raise PolicyError naming the bad key."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"(file): not valid TOML: {exc}") from exc
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise _err(unknown[0], f"unknown key (allowed: {', '.join(sorted(_TOP_KEYS))})")
        version = data.get("version")
        if not isinstance(version, str) or not version.strip():
            raise _err("version", "is required and must be a non-empty string")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise _err("description", "must be a string")
        output_mode = data.get("output_mode", "stream_then_scan")
        if output_mode not in OUTPUT_MODES:
            raise _err("output_mode", f"must be one of {', '.join(OUTPUT_MODES)}, got {output_mode!r}")
        keep_raw_text = data.get("keep_raw_text", False)
        if not isinstance(keep_raw_text, bool):
            raise _err("keep_raw_text", f"must be true or false, got {keep_raw_text!r}")
        redact_places = data.get("redact_places", DEFAULT_PLACE_MODE)
        if redact_places not in PLACE_MODES:
            raise _err("redact_places", f"must be one of {', '.join(PLACE_MODES)}, got {redact_places!r}")
        raw_rules = data.get("rules", {})
        if not isinstance(raw_rules, Mapping):
            raise _err("rules", "must be a table with [rules.prompt] and [rules.output]")
        unknown = sorted(set(raw_rules) - set(DIRECTIONS))
        if unknown:
            raise _err(f"rules.{unknown[0]}", f"unknown direction (allowed: {', '.join(DIRECTIONS)})")
        rules: dict[str, Mapping[str, Rule]] = {}
        for direction in DIRECTIONS:
            section = raw_rules.get(direction, {})
            if not isinstance(section, Mapping):
                raise _err(f"rules.{direction}", "must be a table of rules keyed by label")
            parsed = {
                label: _parse_rule(f"rules.{direction}.{label}", label, raw) for label, raw in section.items()
            }
            parsed.setdefault(DEFAULT_RULE, Rule(DEFAULT_RULE, 0.0, "allow"))
            rules[direction] = MappingProxyType(parsed)
        detector_thresholds = _parse_detector_thresholds(data.get("toxicity", {}))
        feedback_to_review = _parse_feedback(data.get("feedback", {}))
        return cls(
            version=version.strip(),
            description=description,
            output_mode=output_mode,
            keep_raw_text=keep_raw_text,
            rules=MappingProxyType(rules),
            source_text=text,
            sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            redact_places=redact_places,
            detector_thresholds=detector_thresholds,
            feedback_to_review=feedback_to_review,
        )

    @classmethod
    def load(cls, path: Path | str = DEFAULT_POLICY_PATH) -> Policy:
        """Read and validate the policy file at ``path``; errors are prefixed with the file name."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(f"(file): cannot read policy file {path}: {exc}") from exc
        try:
            return cls.from_toml(text)
        except PolicyError as exc:
            raise PolicyError(f"{path.name}: {exc}") from None

    @property
    def hold_output(self) -> bool:
        """True in hold_until_scanned mode: show nothing of the answer until its scan has passed."""
        return self.output_mode == "hold_until_scanned"

    def stored_redactions(self, text: str, findings: Iterable[Finding]) -> tuple[Finding, ...]:
        """The PII findings cut from ``text`` before it is stored: all of them, except the place names that
        ``redact_places`` leaves (see PLACE_MODES). ``findings`` are the PII scanner's findings for ``text``."""
        spans = [f for f in findings if f.has_span]
        if self.redact_places == "all" or self._redacts_places_by_rule():
            return tuple(spans)
        places = [f for f in spans if f.label == PLACE_LABEL]
        keep: set[int] = set()
        if places and self.redact_places == "personal":
            from engine.safety.recognizers import personal_place_spans

            personal = personal_place_spans(text, [(f.start or 0, f.end or 0) for f in places])
            keep = {id(f) for f, is_personal in zip(places, personal, strict=True) if is_personal}
        return tuple(f for f in spans if f.label != PLACE_LABEL or id(f) in keep)

    def _redacts_places_by_rule(self) -> bool:
        """An enforced redact or block rule for LOCATION says places are personal data: store none of them."""
        return any(
            (rule := self.rules[d].get(PLACE_LABEL)) is not None and rule.action in ("redact", "block")
            and not rule.monitor_only
            for d in DIRECTIONS
        )

    def rule_for(self, direction: Direction, label: str) -> tuple[str, Rule]:
        """The rule that applies to ``label`` in ``direction`` and its key (the label itself or "default")."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        rules = self.rules[direction]
        if label in rules and label != DEFAULT_RULE:
            return label, rules[label]
        return DEFAULT_RULE, rules[DEFAULT_RULE]

    def ruled_labels(self, direction: Direction) -> frozenset[str]:
        """The labels with a rule of their own in ``direction`` that does something (not allow), enforced or
        monitored: what a scanner that runs in that direction only on request is asked for (ScannerRunner)."""
        return frozenset(label for label, rule in self.rules[direction].items()
                         if label != DEFAULT_RULE and rule.action != "allow")

    def threshold_for(self, direction: Direction, finding: Finding, rule: Rule) -> float:
        """The threshold ``rule`` applies to ``finding``: its detector's own when the policy sets one, else the rule's."""
        kind = DETECTOR_KIND_BY_NAME.get(finding.detector)
        table = self.detector_thresholds.get(kind) if kind is not None else None
        if table is None:
            return rule.threshold
        return table[direction].get(finding.label, rule.threshold)

    def decide(self, direction: Direction, findings: Iterable[Finding]) -> Decision:
        """Turn findings into the enforced action and the list of rules that triggered or were monitored."""
        triggered: list[RuleHit] = []
        monitored: list[RuleHit] = []
        for finding in findings:
            key, rule = self.rule_for(direction, finding.label)
            if rule.action == "allow":
                continue
            threshold = self.threshold_for(direction, finding, rule)
            if finding.score < threshold:
                continue
            action = rule.action
            if action == "redact" and finding.label in INJECTION_LABELS:
                action = "flag"  # a default rule's redact: an injection has nothing to cut, a reviewer should look
            if rule.block_threshold is not None and finding.score >= rule.block_threshold:
                action, threshold = "block", rule.block_threshold
            hit = RuleHit(direction, key, action, threshold, rule.monitor_only, finding)
            (monitored if rule.monitor_only else triggered).append(hit)
        verdict: Action = max((h.action for h in triggered), key=_PRECEDENCE.__getitem__, default="allow")
        if triggered or monitored:
            logger.debug(
                "policy %s %s: action=%s triggered=%s monitored=%s",
                self.version,
                direction,
                verdict,
                len(triggered),
                len(monitored),
            )
        return Decision(direction, verdict, tuple(triggered), tuple(monitored), self.version)
