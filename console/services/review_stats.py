"""The review quality loop as pure functions: agreement between reviewers, precision over time, threshold hints.

No database and no Streamlit here: the review service feeds these plain records, and tests check them
against worked examples computed by hand.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """One finding on an item whose decision in force is a confirmed violation or a false positive."""

    item_id: int
    decided_at: datetime
    detector: str
    label: str
    score: float
    confirmed: bool


@dataclass(frozen=True)
class PrecisionPoint:
    """Confirmed violations / decided items for one detector and label in one week (weeks start on Monday)."""

    week: date
    detector: str
    label: str
    confirmed: int
    decided: int

    @property
    def precision(self) -> float:
        return self.confirmed / self.decided if self.decided else 0.0


@dataclass(frozen=True)
class ThresholdSuggestion:
    """Raising ``label``'s threshold to ``threshold`` would have avoided ``avoided`` of ``false_positives``
    while still flagging ``kept`` of ``violations``."""

    detector: str
    label: str
    threshold: float
    false_positives: int
    avoided: int
    violations: int
    kept: int

    @property
    def avoided_share(self) -> float:
        return self.avoided / self.false_positives if self.false_positives else 0.0

    @property
    def kept_share(self) -> float:
        return self.kept / self.violations if self.violations else 1.0


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa for two raters' labels on the same items; None without pairs.

    kappa = (p_o - p_e) / (1 - p_e), p_o the observed agreement, p_e the agreement expected by chance from
    each rater's own label frequencies. When chance agreement is already total (both raters always gave the
    same single label) the formula is 0/0; we report 1.0, since the raters did agree on every item.
    """
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(1 for a, b in pairs if a == b) / n
    first = Counter(a for a, _ in pairs)
    second = Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in first.keys() | second.keys()) / (n * n)
    if math.isclose(expected, 1.0):
        return 1.0
    return (observed - expected) / (1.0 - expected)


def week_of(moment: datetime) -> date:
    """The Monday of the ISO week that ``moment`` falls in."""
    day = moment.date()
    return day - timedelta(days=day.weekday())


def _per_item(outcomes: Iterable[Outcome]) -> dict[tuple[str, str], dict[int, Outcome]]:
    # An item with two findings of one label counts once, with its highest score (the one that triggered).
    groups: dict[tuple[str, str], dict[int, Outcome]] = defaultdict(dict)
    for o in outcomes:
        items = groups[(o.detector, o.label)]
        if o.item_id not in items or o.score > items[o.item_id].score:
            items[o.item_id] = o
    return groups


def precision_by_week(outcomes: Iterable[Outcome]) -> list[PrecisionPoint]:
    """Each detector's and label's precision per week, sorted by week, detector, label."""
    counts: dict[tuple[date, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for (detector, label), items in _per_item(outcomes).items():
        for o in items.values():
            c = counts[(week_of(o.decided_at), detector, label)]
            c[0] += int(o.confirmed)
            c[1] += 1
    return [PrecisionPoint(week, det, lab, c[0], c[1]) for (week, det, lab), c in sorted(counts.items())]


def precision_overall(outcomes: Iterable[Outcome]) -> list[PrecisionPoint]:
    """Each detector's and label's precision over the whole period (``week`` is the first week seen)."""
    points = []
    for (detector, label), items in sorted(_per_item(outcomes).items()):
        confirmed = sum(1 for o in items.values() if o.confirmed)
        first = min(week_of(o.decided_at) for o in items.values())
        points.append(PrecisionPoint(first, detector, label, confirmed, len(items)))
    return points


def suggest_thresholds(
    outcomes: Iterable[Outcome],
    *,
    keep_share: float = 0.95,
    min_false_positives: int = 5,
    min_fp_share: float = 0.3,
    min_avoided_share: float = 0.5,
) -> list[ThresholdSuggestion]:
    """For labels with frequent false positives, the highest threshold that keeps ``keep_share`` of violations.

    A finding scoring below the threshold would not have been flagged. The threshold is the score of the
    lowest confirmed violation still kept once the allowed ``1 - keep_share`` lowest ones are given up; with
    no confirmed violations it sits just above the highest false positive. Labels are skipped when false
    positives are rare (fewer than ``min_false_positives`` or under ``min_fp_share`` of decided items) or
    when the threshold would avoid under ``min_avoided_share`` of them: then there is nothing useful to say.
    """
    suggestions = []
    for (detector, label), items in sorted(_per_item(outcomes).items()):
        fps = sorted(o.score for o in items.values() if not o.confirmed)
        tps = sorted(o.score for o in items.values() if o.confirmed)
        if len(fps) < min_false_positives or len(fps) / len(items) < min_fp_share:
            continue
        if tps:
            # A small epsilon keeps e.g. (1 - 0.95) * 20 from flooring to 0 through float error.
            may_drop = int(math.floor((1.0 - keep_share) * len(tps) + 1e-9))
            threshold = tps[min(may_drop, len(tps) - 1)]
        else:
            threshold = min(1.0, round(fps[-1] + 0.01, 2))
        avoided = sum(1 for s in fps if s < threshold)
        kept = sum(1 for s in tps if s >= threshold)
        if avoided / len(fps) < min_avoided_share:
            continue
        suggestions.append(ThresholdSuggestion(detector, label, threshold, len(fps), avoided, len(tps), kept))
    logger.debug("threshold suggestions: %s", len(suggestions))
    return suggestions


# --- spot checks: how much the scanners miss ------------------------------------------------------------------

Z_95 = 1.959963984540054  # the standard normal's 97.5th percentile: a two-sided 95 % interval


def wilson_interval(successes: int, trials: int, *, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion ``successes / trials`` (95 % by default).

    Chosen over the plain normal (Wald) interval because it stays inside [0, 1] and is not empty at 0 or n
    successes, which is where a miss rate usually sits; it is close to Clopper-Pearson while a little narrower.
    (0, 1) without trials: nothing is known yet.
    """
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    # At 0 and n successes the bound is exactly 0 or 1; float rounding would leave e.g. 1e-17.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class MissRate:
    """Of ``checked`` spot-checked (unflagged) exchanges the reviewers decided for a label family, ``missed``
    were judged a violation of that family: the share the scanners let through, with its 95 % Wilson interval,
    and the missed exchanges per day that share implies at ``unflagged_per_day`` unflagged exchanges a day."""

    family: str
    checked: int
    missed: int
    unflagged_per_day: float
    enough: bool  # at least the minimum number of spot checks the page asks for before it shows a rate

    @property
    def rate(self) -> float:
        return self.missed / self.checked if self.checked else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.missed, self.checked)

    @property
    def missed_per_day(self) -> tuple[float, float, float]:
        """(estimate, low, high) of the missed exchanges per day."""
        low, high = self.interval
        return (self.rate * self.unflagged_per_day, low * self.unflagged_per_day, high * self.unflagged_per_day)
