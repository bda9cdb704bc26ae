"""The prompt-injection and jailbreak scanner: the shipped statistical model plus patterns for the plain cases.

For one text it gathers evidence from several readings and reports, per label (``jailbreak``,
``prompt_injection``), the strongest one as a finding (one finding per label at most):

1. the text with invisible format characters stripped and compatibility forms folded (engine.safety.normalize:
   zero-width characters inside "ig\u200bnore" no longer hide the word), then look-alike Cyrillic/Greek letters and
   leetspeak folded to Latin letters, for the patterns (engine.safety.injection_patterns); letters spelt out one
   by one ("i g n o r e") are joined for a second pattern pass;
2. the model (:mod:`engine.safety.injection_model`) on the whole normalised text and, for a text longer than
   ``LONG_TEXT_CHARS``, on overlapping windows of it, so an instruction hidden after a long benign text is judged
   on its own and not diluted by the rest;
3. text smuggled inside the text (Unicode tag characters, base64 runs that decode to readable text): decoded and
   read again through 1 and 2. Tag characters spelling text are themselves a sign (``MEDIUM`` prompt_injection):
   no ordinary prompt carries invisible ASCII.

A pattern match or a window gives the finding a span in the original text (what the reviewer sees highlighted);
a whole-text model score gives none. Scores: a pattern's own (``STRONG`` 0.97 for the plain cases, ``MEDIUM`` 0.85
for signs) or the model's probability. The policy's rules turn them into actions (default_policy.toml).

Without the model (its weights missing or corrupt) the scanner runs on patterns alone and says so in ``notice`` and
in its ``version``; the policy still applies.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from engine.safety import deadline
from engine.safety.base import Finding, ScannerLoadError
from engine.safety.chunking import chunk_by_chars
from engine.safety.injection_patterns import (
    INJECTION_LABELS,
    LABEL_DESCRIPTIONS,
    MEDIUM,
    PROMPT_INJECTION,
    fold_leet,
    fold_lookalikes,
    join_spaced_letters,
    match_patterns,
    smuggled_text,
)
from engine.safety.normalize import normalize

logger = logging.getLogger(__name__)

DETECTOR = "injection"
# Bumped with every change to the patterns or to how evidence is combined (stored with every finding).
PATTERNS_VERSION = "patterns-2026-12-07.2"
# Windows for the model on long texts: about a paragraph, overlapping so an instruction cut by one boundary is
# whole in the next window.
WINDOW_CHARS = 600
WINDOW_OVERLAP = 150
LONG_TEXT_CHARS = 800
# Nested smuggling is read this many levels deep (base64 in base64, base64 spelt in tag characters).
MAX_DEPTH = 2

__all__ = ["DETECTOR", "INJECTION_LABELS", "LABEL_DESCRIPTIONS", "InjectionScanner", "load_injection_scanner"]


class InjectionModelLike(Protocol):
    """What the scanner needs from the model (engine.safety.injection_model.InjectionModel)."""

    version: str

    def scores(self, text: str) -> Mapping[str, float]:
        """Probabilities (0..1) for "jailbreak" and "prompt_injection"."""
        ...


@dataclass(frozen=True)
class Evidence:
    """One reason for a label's score: ``why`` in words, span in the original text or None (whole text)."""

    label: str
    score: float
    start: int | None
    end: int | None
    why: str


class InjectionScanner:
    """Scanner protocol (engine.safety.base): detector ``injection``, labels ``jailbreak`` and ``prompt_injection``.

    Runs on prompts and system prompts; on answers only when the policy has a rule for one of its labels in the
    output direction (``directions``; see ScannerRunner.for_direction). Stateless apart from the read-only model,
    so safe to share across threads.
    """

    name = DETECTOR
    kind = DETECTOR
    labels: tuple[str, ...] = INJECTION_LABELS
    directions: tuple[str, ...] = ("prompt",)
    one_finding_per_label = True  # the strongest evidence per label (see engine.safety.incremental)

    def __init__(self, model: InjectionModelLike | None = None, *, notice: str | None = None) -> None:
        self.model = model
        self.notice = notice
        model_version = model.version if model is not None else "no-model"
        self.version = f"{PATTERNS_VERSION}+{model_version}"
        self.display_name = (f"injection model {model_version} and patterns" if model is not None
                             else "injection patterns only (model missing)")

    def scan(self, text: str) -> tuple[Finding, ...]:
        """At most one finding per label: its strongest evidence (score, and span when it has one)."""
        best: dict[str, Evidence] = {}
        for ev in self.evidence(text):
            current = best.get(ev.label)
            if current is None or ev.score > current.score or (ev.score == current.score and current.start is None
                                                                and ev.start is not None):
                best[ev.label] = ev
        return tuple(Finding(DETECTOR, label, round(min(max(best[label].score, 0.0), 1.0), 6), best[label].start,
                             best[label].end, self.version) for label in INJECTION_LABELS if label in best)

    def explain(self, text: str) -> list[str]:
        """Why the text scored as it did, strongest first: which pattern, window or smuggled text."""
        found = sorted(self.evidence(text), key=lambda e: -e.score)
        return [f"{e.label} {e.score:.2f}: {e.why}" for e in found if e.score >= 0.05]

    def evidence(self, text: str, _depth: int = 0) -> list[Evidence]:
        """Every piece of evidence for ``text`` (spans in ``text``)."""
        if not text or not text.strip():
            return []
        norm = normalize(text)
        plain = norm.text
        folded = fold_leet(fold_lookalikes(plain))  # same length as plain: spans map through norm
        out: list[Evidence] = []
        for hit in match_patterns(folded):
            start, end = norm.to_original(hit.start, hit.end)
            out.append(Evidence(hit.pattern.label, hit.pattern.score, start, end, f"pattern {hit.pattern.name}"))
        joined = join_spaced_letters(folded)
        if joined != folded:
            seen = {e.why for e in out}
            for hit in match_patterns(joined):
                why = f"pattern {hit.pattern.name} (letters spelt out)"
                if f"pattern {hit.pattern.name}" not in seen:
                    out.append(Evidence(hit.pattern.label, hit.pattern.score, None, None, why))
        if self.model is not None:
            out.extend(self._model_evidence(plain, norm.to_original))
        if _depth < MAX_DEPTH:
            out.extend(self._smuggled_evidence(text, plain, norm.to_original, _depth))
        return out

    def _model_evidence(self, plain: str, to_original: _SpanMap) -> list[Evidence]:
        assert self.model is not None
        scores = self.model.scores(plain)
        out = [Evidence(label, float(scores.get(label, 0.0)), None, None, "model (whole text)")
               for label in INJECTION_LABELS]
        if len(plain) > LONG_TEXT_CHARS:
            for i, chunk in enumerate(chunk_by_chars(plain, max_chars=WINDOW_CHARS, overlap=WINDOW_OVERLAP)):
                if i % 8 == 0:
                    deadline.check(f"{DETECTOR} windows {i}-")
                window = self.model.scores(chunk.text)
                start, end = to_original(chunk.start, chunk.end)
                for label in INJECTION_LABELS:
                    out.append(Evidence(label, float(window.get(label, 0.0)), start, end,
                                        f"model (characters {start}-{end})"))
        return out

    def _smuggled_evidence(self, original: str, plain: str, to_original: _SpanMap, depth: int) -> list[Evidence]:
        out: list[Evidence] = []
        # Tag characters are stripped by normalize(): look for them in the original. Base64 is ASCII: look in the
        # normalised text, so zero-width characters inside a run do not break it.
        hidden = [(s, s.start, s.end) for s in smuggled_text(original, depth=1) if s.how == "tag_characters"]
        hidden += [(s, *to_original(s.start, s.end)) for s in smuggled_text(plain, depth=1) if s.how == "base64"]
        for smuggled, start, end in hidden:
            if smuggled.how == "tag_characters":
                out.append(Evidence(PROMPT_INJECTION, MEDIUM, start, end, "invisible tag characters spell out text"))
            for inner in self.evidence(smuggled.text, depth + 1):
                out.append(Evidence(inner.label, inner.score, start, end,
                                    f"{inner.why}, in text hidden as {smuggled.how.replace('_', ' ')}"))
        return out


class _SpanMap(Protocol):
    def __call__(self, start: int, end: int) -> tuple[int, int]: ...


def load_injection_scanner() -> InjectionScanner:
    """The scanner with the shipped model, or on patterns alone (with a ``notice``) when the model cannot load."""
    try:
        from engine.safety.injection_model import load_injection_model
    except ImportError as exc:  # the model's module is not part of this build
        notice = f"Injection scanner: patterns only (no model: {exc})."
        logger.warning("%s", notice)
        return InjectionScanner(None, notice=notice)
    try:
        model = load_injection_model()
    except ScannerLoadError as exc:
        notice = f"Injection scanner: patterns only (the model did not load: {exc})."
        logger.warning("%s", notice)
        return InjectionScanner(None, notice=notice)
    return InjectionScanner(model)


def describe(labels: set[str] | frozenset[str] | list[str] | tuple[str, ...]) -> str | None:
    """The injection labels among ``labels`` in words ("a prompt-injection attempt (...)"), or None."""
    words = [LABEL_DESCRIPTIONS[label] for label in INJECTION_LABELS if label in labels]
    return " and ".join(words) if words else None

