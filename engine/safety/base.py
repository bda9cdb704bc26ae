"""The scanner protocol and the typed, immutable records every scanner returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Finding:
    """One thing a detector found in a text.

    ``start``/``end`` are a character span in the ORIGINAL text the caller passed in (``end`` exclusive), or
    ``None`` when the detector judges the text as a whole and gives no span.
    """

    detector: str
    label: str
    score: float
    start: int | None
    end: int | None
    detector_version: str

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score must be between 0 and 1, got {self.score!r}")
        if (self.start is None) != (self.end is None):
            raise ValueError("start and end must both be set or both be None")
        if self.start is not None and self.end is not None and not 0 <= self.start <= self.end:
            raise ValueError(f"bad span ({self.start}, {self.end})")

    @property
    def has_span(self) -> bool:
        """True when the finding points at a piece of the text (PII), False for whole-text judgements."""
        return self.start is not None


@runtime_checkable
class Scanner(Protocol):
    """What the runner needs from a scanner. Implementations load once and are safe to call from many threads."""

    name: str
    version: str
    labels: tuple[str, ...]

    def scan(self, text: str) -> tuple[Finding, ...]:
        """Return the findings for ``text``; spans refer to ``text`` as given."""
        ...


class ScannerLoadError(RuntimeError):
    """A scanner's model could not be loaded (missing weights, no network, bad checkpoint)."""
