"""The quality loop's arithmetic against worked examples computed by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from console.services.review_stats import (
    Outcome,
    cohen_kappa,
    precision_by_week,
    precision_overall,
    suggest_thresholds,
    week_of,
)

MON = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)  # a Monday


def test_cohens_kappa_matches_the_worked_example():
    # 10 items: 4 both violation, 3 both false positive, 1 V/F, 1 F/V, 1 escalate/V.
    # p_o = 7/10. Rater 1: V 5, F 4, E 1; rater 2: V 6, F 4, E 0.
    # p_e = (5*6 + 4*4 + 1*0) / 100 = 0.46; kappa = (0.7 - 0.46) / 0.54 = 4/9.
    V, F, E = "violation", "false_positive", "escalate"
    pairs = [(V, V)] * 4 + [(F, F)] * 3 + [(V, F), (F, V), (E, V)]
    assert cohen_kappa(pairs) == pytest.approx(4 / 9)


KAPPA_EDGES = [
    ("no pairs", [], None),
    ("perfect agreement on two labels", [("a", "a"), ("b", "b")], 1.0),
    ("one shared label only", [("a", "a")] * 3, 1.0),
    ("systematic disagreement", [("a", "b"), ("b", "a")], -1.0),
]


@pytest.mark.parametrize("name,pairs,expected", KAPPA_EDGES, ids=[c[0] for c in KAPPA_EDGES])
def test_cohens_kappa_edge_cases(name, pairs, expected):
    result = cohen_kappa(pairs)
    assert result == (None if expected is None else pytest.approx(expected))


def _o(item, label, score, confirmed, at=MON, detector="presidio"):
    return Outcome(item, at, detector, label, score, confirmed)


def test_precision_by_week_counts_items_once_per_label_and_week():
    week2 = MON + timedelta(days=7)
    outcomes = [
        _o(1, "PERSON", 0.9, True), _o(1, "PERSON", 0.6, True),  # one item, two PERSON findings: counts once
        _o(2, "PERSON", 0.7, False), _o(3, "PERSON", 0.8, True),
        _o(4, "PERSON", 0.5, False, at=week2), _o(5, "PERSON", 0.95, True, at=week2 + timedelta(days=6)),
        _o(6, "insult", 0.9, False, detector="detoxify"),
    ]
    points = [(p.week, p.detector, p.label, p.confirmed, p.decided) for p in precision_by_week(outcomes)]
    assert points == [
        (date(2026, 11, 2), "detoxify", "insult", 0, 1),
        (date(2026, 11, 2), "presidio", "PERSON", 2, 3),
        (date(2026, 11, 9), "presidio", "PERSON", 1, 2),
    ]
    overall = {p.label: (p.confirmed, p.decided, round(p.precision, 3)) for p in precision_overall(outcomes)}
    assert overall == {"insult": (0, 1, 0.0), "PERSON": (3, 5, 0.6)}
    assert week_of(datetime(2026, 11, 8, 23, 59, tzinfo=UTC)) == date(2026, 11, 2)


def test_the_threshold_suggestion_matches_the_worked_example():
    # PERSON: violations at 0.70, 0.80, 0.90, 0.95; false positives at 0.50, 0.55, 0.60, 0.65, 0.72.
    # Keeping 75% of 4 violations allows dropping 1 (the 0.70), so the threshold is 0.80: every false
    # positive scores below it (5 of 5 avoided) and 3 of 4 violations are still flagged.
    tps = [0.7, 0.8, 0.9, 0.95]
    fps = [0.5, 0.55, 0.6, 0.65, 0.72]
    outcomes = [_o(i, "PERSON", s, True) for i, s in enumerate(tps)] + [
        _o(10 + i, "PERSON", s, False) for i, s in enumerate(fps)]
    (s,) = suggest_thresholds(outcomes, keep_share=0.75)
    assert (s.label, s.threshold, s.avoided, s.false_positives, s.kept, s.violations) == (
        "PERSON", 0.8, 5, 5, 3, 4)
    # Keeping every violation means the threshold stays at the lowest one, 0.70: 4 of 5 avoided.
    (strict,) = suggest_thresholds(outcomes, keep_share=1.0)
    assert (strict.threshold, strict.avoided, strict.kept) == (0.7, 4, 4)


SKIPPED = [
    ("too few false positives", [(0.5, False)] * 4 + [(0.9, True)], {}),
    ("false positives are a small share", [(0.5, False)] * 5 + [(0.9, True)] * 20, {}),
    ("false positives score like violations", [(0.9, False)] * 5 + [(0.5, True)] * 5, {}),
]


@pytest.mark.parametrize("name,scores,kwargs", SKIPPED, ids=[c[0] for c in SKIPPED])
def test_no_threshold_is_suggested_when_it_would_not_help(name, scores, kwargs):
    outcomes = [_o(i, "PERSON", s, c) for i, (s, c) in enumerate(scores)]
    assert suggest_thresholds(outcomes, **kwargs) == []


def test_with_no_confirmed_violations_the_threshold_sits_just_above_the_highest_false_positive():
    outcomes = [_o(i, "PHONE_NUMBER", s, False) for i, s in enumerate([0.4, 0.45, 0.5, 0.52, 0.61])]
    (s,) = suggest_thresholds(outcomes)
    assert (s.threshold, s.avoided, s.violations) == (0.62, 5, 0)
