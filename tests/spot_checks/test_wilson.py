"""The miss rate's interval: Wilson score intervals against published values, and its edges."""

from __future__ import annotations

import pytest

from console.services.review_stats import MissRate, wilson_interval

# 95 % Wilson score intervals (z = 1.96), as tabulated by Newcombe (1998), "Two-sided confidence intervals for the
# single proportion", Statistics in Medicine 17:857-872, table I (method 3), and recomputed by hand:
# x/n -> (low, high).
REFERENCE = [
    (0, 10, 0.0, 0.2775),
    (1, 10, 0.0179, 0.4042),
    (5, 10, 0.2366, 0.7634),
    (9, 10, 0.5958, 0.9821),
    (10, 10, 0.7225, 1.0),
    (81, 263, 0.2553, 0.3662),  # Newcombe's example: 81/263
    (15, 148, 0.0624, 0.1605),  # Newcombe's example: 15/148
    (0, 20, 0.0, 0.1611),  # Newcombe's example: 0/20
    (1, 29, 0.0061, 0.1718),  # Newcombe's example: 1/29
]


@pytest.mark.parametrize(("k", "n", "low", "high"), REFERENCE)
def test_wilson_matches_the_reference_table(k, n, low, high):
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=6e-5)


def test_the_interval_holds_the_estimate_and_narrows_with_more_items():
    for n in (1, 7, 50, 400):
        for k in range(0, n + 1, max(1, n // 7)):
            low, high = wilson_interval(k, n)
            assert 0.0 <= low <= k / n <= high <= 1.0
    assert wilson_interval(10, 100)[1] - wilson_interval(10, 100)[0] > \
        wilson_interval(100, 1000)[1] - wilson_interval(100, 1000)[0]


def test_no_trials_means_nothing_is_known_and_impossible_counts_are_refused():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for k, n in [(-1, 5), (6, 5), (0, -1)]:
        with pytest.raises(ValueError, match="successes"):
            wilson_interval(k, n)


def test_missed_per_day_scales_the_rate_and_its_interval_by_the_volume():
    miss = MissRate("pii", checked=10, missed=1, unflagged_per_day=200.0, enough=False)
    est, low, high = miss.missed_per_day
    assert miss.rate == 0.1 and est == pytest.approx(20.0)
    assert (low, high) == pytest.approx((200 * 0.0179, 200 * 0.4042), abs=0.02)
