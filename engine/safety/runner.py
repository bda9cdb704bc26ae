"""Run several scanners over one text and time each of them."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from engine.safety import deadline
from engine.safety.base import Finding, Scanner

if TYPE_CHECKING:
    from engine.safety.pii import PiiConfig
    from engine.safety.toxicity import ToxicityConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanReport:
    """All findings for one text and how long each scanner took (milliseconds, by scanner name)."""

    findings: tuple[Finding, ...]
    timings_ms: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def total_ms(self) -> float:
        return sum(self.timings_ms.values())

    def by_detector(self, detector: str) -> tuple[Finding, ...]:
        """The findings of one detector."""
        return tuple(f for f in self.findings if f.detector == detector)

    @property
    def labels(self) -> frozenset[str]:
        return frozenset(f.label for f in self.findings)


class ScannerRunner:
    """Runs its scanners one after another on a text; safe to share across threads (the scanners are).

    With ``timeout_seconds``, a scan that takes longer raises :class:`~engine.safety.deadline.ScanTimeout` at its next
    step (between scanners, and inside the scanners that check: see engine.safety.deadline); None: no limit.
    """

    def __init__(self, scanners: Iterable[Scanner], timeout_seconds: float | None = None) -> None:
        if timeout_seconds is not None and timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive (or None for no limit)")
        self.scanners: Sequence[Scanner] = tuple(scanners)
        self.timeout_seconds = timeout_seconds
        names = [s.name for s in self.scanners]
        if len(set(names)) != len(names):
            raise ValueError(f"scanner names must be unique, got {names}")

    @property
    def versions(self) -> Mapping[str, str]:
        """Scanner name -> detector version, for the record of what judged an exchange."""
        return MappingProxyType({s.name: s.version for s in self.scanners})

    def for_direction(self, direction: str | None, asked: Collection[str] = ()) -> tuple[Scanner, ...]:
        """The scanners that run on a text of ``direction`` ("prompt" or "output"; None: all of them).

        A scanner with a ``directions`` attribute (the injection scanner: prompts only) runs in another direction
        only when one of its labels is in ``asked`` (the labels the policy has rules for there:
        Policy.ruled_labels); scanners without one run everywhere.
        """
        if direction is None:
            return tuple(self.scanners)
        wanted = set(asked)
        return tuple(s for s in self.scanners
                     if direction in getattr(s, "directions", (direction,)) or wanted.intersection(s.labels))

    def scan(self, text: str, *, direction: str | None = None, asked: Collection[str] = ()) -> ScanReport:
        """Scan ``text`` with the scanners for ``direction`` (see :meth:`for_direction`; None: every scanner);
        spans in the findings refer to ``text``.

        Raises :class:`~engine.safety.deadline.ScanTimeout` when the scan takes longer than ``timeout_seconds``.
        """
        findings: list[Finding] = []
        timings: dict[str, float] = {}
        with deadline.scope(self.timeout_seconds):
            for scanner in self.for_direction(direction, asked):
                deadline.check(scanner.name)
                began = time.perf_counter()
                findings.extend(scanner.scan(text))
                timings[scanner.name] = (time.perf_counter() - began) * 1000.0
        logger.debug("scanned %s chars: %s findings in %s", len(text), len(findings), timings)
        return ScanReport(tuple(findings), MappingProxyType(timings))


def build_runner(
    pii_config: PiiConfig | None = None, toxicity_config: ToxicityConfig | None = None,
    timeout_seconds: float | None = None,
) -> tuple[ScannerRunner, str | None]:
    """Build the standard runner (Presidio, then Detoxify or its fallback, then the injection scanner) and the
    notice of any scanner on its fallback (toxicity, injection), if any.

    Call once per process (the console caches it): loading spaCy and a toxicity model takes seconds.
    A config left as None means that scanner's defaults; ``timeout_seconds`` limits each scan (see ScannerRunner).
    The injection scanner runs on prompts only unless the policy has output rules for its labels (see
    ScannerRunner.for_direction); without its model it runs on its patterns (its ``notice`` says so, logged).
    """
    from engine.safety.injection import load_injection_scanner
    from engine.safety.pii import PresidioScanner
    from engine.safety.toxicity import load_toxicity_scanner

    toxicity, notice = load_toxicity_scanner(toxicity_config)
    injection = load_injection_scanner()
    # Either fallback is the stack's notice (the sidebar, the scanner_fallback alert); both when both fell back.
    notice = " ".join(n for n in (notice, injection.notice) if n) or None
    return ScannerRunner([PresidioScanner(pii_config), toxicity, injection], timeout_seconds), notice
