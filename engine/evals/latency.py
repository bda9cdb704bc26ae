"""Paired latency comparison of two model versions measured in the same run, with a bootstrap confidence interval.

Two p95s measured in different processes at different times differ by more than any model change does (a busy
machine, a cold cache). So the evaluation sends the same prompts to the candidate and the baseline alternately,
one request at a time, in ABBA order (candidate first for even prompts, baseline first for odd ones), and this
module summarises the pairs. Pure computation: no engine, no database.

The stored summary (``report["latency_comparison"]``) is a plain dict; :func:`compare_paired` documents its keys.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.evals.report import percentile

CONFIDENCE = 0.95
RESAMPLES = 2000
CANDIDATE, BASELINE = "candidate", "baseline"


@dataclass(frozen=True)
class PairedTiming:
    """One prompt answered by both versions back to back: time to first token of each (ms; None when that
    request failed) and which version went first."""

    id: str
    candidate_ms: float | None
    baseline_ms: float | None
    first: str  # CANDIDATE or BASELINE

    @property
    def complete(self) -> bool:
        return self.candidate_ms is not None and self.baseline_ms is not None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "candidate_ms": _ms(self.candidate_ms), "baseline_ms": _ms(self.baseline_ms),
                "first": self.first}


def abba_first(index: int) -> str:
    """Which version answers prompt ``index`` first: A B | B A | A B | B A ... (A = candidate)."""
    return CANDIDATE if index % 2 == 0 else BASELINE


def _ms(value: float | None) -> float | None:
    return None if value is None else round(float(value), 2)


def bootstrap_ci(candidate: Sequence[float], baseline: Sequence[float], *, q: float = 95.0,
                 confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
                 ) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``percentile(candidate, q) - percentile(baseline, q)`` over paired
    samples: each resample draws prompt indices with replacement and keeps both versions' timings of a prompt
    together, so what both versions shared (the prompt, the machine's load at that moment) cancels out."""
    n = len(candidate)
    if n != len(baseline) or n < 2:
        raise ValueError(f"need two equally long samples of at least 2, got {n} and {len(baseline)}")
    rng = random.Random(seed)
    diffs = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        a = percentile([candidate[i] for i in idx], q)
        b = percentile([baseline[i] for i in idx], q)
        assert a is not None and b is not None
        diffs.append(a - b)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = percentile(diffs, tail), percentile(diffs, 100.0 - tail)
    assert low is not None and high is not None
    return low, high


def compare_paired(pairs: Sequence[PairedTiming], *, candidate_version: str, baseline_version: str,
                   confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0,
                   max_tokens: int | None = None, error: str | None = None) -> dict[str, Any]:
    """The stored summary of a paired comparison (times in ms, rounded to 0.01):

    - ``baseline_version``, ``candidate_version``: the two versions compared;
    - ``n``: prompts with a time to first token from both (only these count); ``errors``: the other prompts;
    - ``candidate_ttft_p95_ms``, ``baseline_ttft_p95_ms`` (and ``_p50_ms``): each version's percentiles over
      the ``n`` complete pairs;
    - ``diff_ms``: candidate p95 - baseline p95 (positive: the candidate is slower);
    - ``ci_low_ms``, ``ci_high_ms``: the ``confidence`` (0.95) percentile-bootstrap interval of ``diff_ms``
      (``resamples`` resamples of the pairs, seeded with ``seed``: the same pairs give the same interval);
      None, like ``diff_ms``, below 2 pairs;
    - ``method``: how it was measured, in words; ``same_run``: True (both versions in this one run);
    - ``pairs``: every prompt's ``{id, candidate_ms, baseline_ms, first}`` in the order they ran;
    - ``error``: why the comparison could not run (then ``n`` is 0), else None.
    """
    complete = [p for p in pairs if p.complete]
    cand = [float(p.candidate_ms) for p in complete if p.candidate_ms is not None]
    base = [float(p.baseline_ms) for p in complete if p.baseline_ms is not None]
    n = len(complete)
    diff = low = high = None
    if n >= 2:
        c95, b95 = percentile(cand, 95), percentile(base, 95)
        assert c95 is not None and b95 is not None
        diff = c95 - b95
        low, high = bootstrap_ci(cand, base, confidence=confidence, resamples=resamples, seed=seed)
    return {
        "baseline_version": baseline_version,
        "candidate_version": candidate_version,
        "n": n,
        "errors": len(pairs) - n,
        "candidate_ttft_p95_ms": _ms(percentile(cand, 95)),
        "baseline_ttft_p95_ms": _ms(percentile(base, 95)),
        "candidate_ttft_p50_ms": _ms(percentile(cand, 50)),
        "baseline_ttft_p50_ms": _ms(percentile(base, 50)),
        "diff_ms": _ms(diff),
        "ci_low_ms": _ms(low),
        "ci_high_ms": _ms(high),
        "confidence": confidence,
        "method": (f"same prompts to both versions in this run, one request at a time, alternating ABBA; "
                   f"p95 difference with a {confidence:.0%} percentile-bootstrap interval over the pairs "
                   f"({resamples} resamples, seed {seed})"
                   + (f"; answers cut at {max_tokens} tokens" if max_tokens else "")),
        "same_run": True,
        "resamples": resamples,
        "seed": seed,
        "pairs": [p.as_dict() for p in pairs],
        "error": error,
    }


def failed_comparison(*, candidate_version: str, baseline_version: str, error: str) -> dict[str, Any]:
    """The stored summary when the comparison could not run at all (the baseline did not load...)."""
    return compare_paired([], candidate_version=candidate_version, baseline_version=baseline_version, error=error)
