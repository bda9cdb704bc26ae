"""The latency gate compares like with like: paired timings from one run, a seeded bootstrap interval, a minimum
sample. Synthetic samples only (no timing is ever measured here), so every figure is exact and repeatable."""

from __future__ import annotations

import dataclasses
import random

import pytest

from console.services import promotion
from console.services.access import Principal
from engine.evals.latency import BASELINE, CANDIDATE, PairedTiming, abba_first, bootstrap_ci, compare_paired
from engine.evals.runner import latency_prompts
from engine.evals.suite import SuiteRecord

KEYS = {"baseline_version", "n", "candidate_ttft_p95_ms", "baseline_ttft_p95_ms", "diff_ms", "ci_low_ms",
        "ci_high_ms", "method"}


def _pairs(n: int, *, slower: float = 1.0, extra_ms: float = 0.0, seed: int = 1, drift: bool = False
           ) -> list[PairedTiming]:
    """Baseline ~ 30 ms with noise; the candidate the same prompt's time (times ``slower``, plus ``extra_ms``)
    with its own noise. ``drift``: the machine's load multiplies both timings of a pair by up to 10."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        load = rng.uniform(1.0, 10.0) if drift else 1.0
        prompt = rng.uniform(25.0, 35.0)
        base = prompt * load * rng.uniform(0.95, 1.05)
        cand = (prompt * slower + extra_ms) * load * rng.uniform(0.95, 1.05)
        out.append(PairedTiming(f"p{i}", cand, base, abba_first(i)))
    return out


def _gate(pairs: list[PairedTiming], settings, **changes) -> promotion.Gate:  # noqa: ANN001
    report = {"version": "v2", "latency": {"ttft_p95_ms": 1.0},
              "latency_comparison": compare_paired(pairs, candidate_version="v2", baseline_version="v1")}
    return promotion.ttft_gate(dataclasses.replace(settings, **changes), report, None, baseline_version="v1")


def test_the_summary_has_the_documented_keys_and_the_interval_holds_the_estimate() -> None:
    summary = compare_paired(_pairs(40), candidate_version="v2", baseline_version="v1")
    assert KEYS <= set(summary) and summary["n"] == 40 and summary["errors"] == 0
    assert summary["ci_low_ms"] <= summary["diff_ms"] <= summary["ci_high_ms"]
    assert summary["diff_ms"] == pytest.approx(summary["candidate_ttft_p95_ms"] - summary["baseline_ttft_p95_ms"],
                                               abs=0.02)
    assert [p["first"] for p in summary["pairs"][:4]] == [CANDIDATE, BASELINE, CANDIDATE, BASELINE]
    assert summary["same_run"] is True and "ABBA" in summary["method"]


def test_abba_order_alternates_which_version_goes_first() -> None:
    assert [abba_first(i) for i in range(4)] == [CANDIDATE, BASELINE, CANDIDATE, BASELINE]


def test_the_bootstrap_is_seeded_so_the_same_pairs_give_the_same_interval() -> None:
    pairs = _pairs(40)
    first = compare_paired(pairs, candidate_version="a", baseline_version="b", seed=7)
    again = compare_paired(pairs, candidate_version="a", baseline_version="b", seed=7)
    other = compare_paired(pairs, candidate_version="a", baseline_version="b", seed=8)
    assert (first["ci_low_ms"], first["ci_high_ms"]) == (again["ci_low_ms"], again["ci_high_ms"])
    assert (first["ci_low_ms"], first["ci_high_ms"]) != (other["ci_low_ms"], other["ci_high_ms"])


def test_pairing_cancels_load_that_both_versions_shared() -> None:
    # The machine's load swings tenfold between prompts, but within a pair both versions see the same load.
    pairs = _pairs(40, drift=True)
    low, high = bootstrap_ci([p.candidate_ms or 0 for p in pairs], [p.baseline_ms or 0 for p in pairs], q=50)
    base = sorted(p.baseline_ms or 0 for p in pairs)
    assert high - low < (base[-1] - base[0]) / 5  # far narrower than the spread of the timings themselves


def test_failed_requests_leave_their_pair_out_and_are_counted() -> None:
    pairs = [*_pairs(30), PairedTiming("x", None, 30.0, CANDIDATE), PairedTiming("y", 30.0, None, BASELINE)]
    summary = compare_paired(pairs, candidate_version="a", baseline_version="b")
    assert (summary["n"], summary["errors"], len(summary["pairs"])) == (30, 2, 32)


@pytest.mark.parametrize(
    ("pairs", "passed", "words"),
    [
        pytest.param(_pairs(40), True, "not shown slower", id="same-version-passes"),
        pytest.param(_pairs(40, slower=1.1), True, "not shown slower", id="ten-percent-slower-within-margin"),
        pytest.param(_pairs(40, slower=2.0), False, "slower beyond the margin", id="twice-as-slow-fails"),
        pytest.param(_pairs(40, extra_ms=20.0, drift=True), False, "slower beyond the margin",
                     id="slower-under-drifting-load-fails"),
        pytest.param(_pairs(10, slower=2.0), False, "not enough data", id="ten-pairs-is-not-enough-data"),
        pytest.param(_pairs(1), False, "not enough data", id="one-pair-has-no-interval"),
    ],
)
def test_the_gate_on_synthetic_pairs(ctx, pairs, passed, words) -> None:  # noqa: ANN001
    gate = _gate(pairs, ctx.settings, promotion_ttft_margin=0.25, promotion_ttft_min_pairs=20)
    assert gate.passed is passed and words in (gate.note or "")
    assert f"{len(pairs)} paired prompt" in (gate.note or "")


def test_the_gate_note_says_estimate_interval_and_sample_in_words(ctx) -> None:  # noqa: ANN001
    settings = dataclasses.replace(ctx.settings, promotion_ttft_margin=0.25, promotion_ttft_min_pairs=20)
    report = {"latency_comparison": {"baseline_version": "v1", "n": 40, "candidate_ttft_p95_ms": 44.0,
                                     "baseline_ttft_p95_ms": 40.0, "diff_ms": 4.0, "ci_low_ms": -3.0,
                                     "ci_high_ms": 12.0, "confidence": 0.95, "method": "paired"}}
    gate = promotion.ttft_gate(settings, report, None, baseline_version="v1")
    assert gate.passed and (gate.value, gate.limit) == (-3.0, 10.0)
    assert gate.note == ("p95 TTFT +4.0 ms vs v1 (95% CI -3.0..+12 ms, 40 paired prompts, same run): not shown "
                         "slower than the margin of +10 ms (25% of v1's 40 ms)")
    shown = promotion.ttft_gate(settings, {"latency_comparison": {**report["latency_comparison"], "ci_low_ms": 11.0}},
                                None, baseline_version="v1")
    assert not shown.passed and "slower beyond the margin of +10 ms" in (shown.note or "")


def test_an_old_report_without_paired_timings_shows_its_numbers_but_cannot_pass(ctx) -> None:  # noqa: ANN001
    old = {"version": "v2", "latency": {"ttft_p95_ms": 185.8}}
    gate = promotion.ttft_gate(ctx.settings, old, {"version": "v1", "latency": {"ttft_p95_ms": 31.7}},
                               baseline_version="v1")
    assert not gate.passed and gate.value == 185.8
    assert "cannot compare like with like" in (gate.note or "") and "p95 186 ms against v1's 32 ms" in (gate.note or "")
    assert "Re-run the evaluation" in (gate.note or "") and "override" in (gate.note or "")


def test_a_comparison_with_another_version_or_a_failed_one_cannot_pass(ctx) -> None:  # noqa: ANN001
    summary = compare_paired(_pairs(40), candidate_version="v3", baseline_version="v1")
    elsewhere = promotion.ttft_gate(ctx.settings, {"latency_comparison": summary}, None, baseline_version="v2")
    assert not elsewhere.passed and "against v1, not against v2" in (elsewhere.note or "")
    failed = compare_paired([], candidate_version="v3", baseline_version="v2", error="v2 could not load")
    gate = promotion.ttft_gate(ctx.settings, {"latency_comparison": failed}, None, baseline_version="v2")
    assert not gate.passed and "could not run (v2 could not load)" in (gate.note or "")


def test_same_version_against_itself_rarely_fails(ctx) -> None:  # noqa: ANN001
    # 100 synthetic runs of one version against itself (independent noise per request): false fails stay rare.
    settings = dataclasses.replace(ctx.settings, promotion_ttft_margin=0.25, promotion_ttft_min_pairs=20)
    fails = 0
    for seed in range(100):
        rng = random.Random(seed)
        pairs = [PairedTiming(str(i), rng.lognormvariate(3.4, 0.3), rng.lognormvariate(3.4, 0.3), abba_first(i))
                 for i in range(40)]
        report = {"latency_comparison": compare_paired(pairs, candidate_version="v2", baseline_version="v1",
                                                       resamples=300, seed=seed)}
        fails += not promotion.ttft_gate(settings, report, None, baseline_version="v1").passed
    assert fails <= 5


def test_latency_prompts_spread_over_the_suite_or_repeat_it() -> None:
    records = [SuiteRecord(f"r{i}", f"prompt {i}", "in_domain", "refunds") for i in range(100)]
    spread = latency_prompts(records, 4)
    assert [r.id for r in spread] == ["r0", "r25", "r50", "r75"]
    assert [r.id for r in latency_prompts(records[:3], 5)] == ["r0", "r1", "r2", "r0", "r1"]
    assert latency_prompts([], 5) == []


# --- which baseline an evaluation times against (service level, no engine) -----------------------------------------


def test_an_evaluation_times_against_the_production_holder_unless_told_otherwise(ctx, tmp_path) -> None:  # noqa: ANN001
    import threading

    from console.services import evaluation as evaluation_svc
    from console.services import serving
    from db import model_versions as versions_q
    from engine.evals.runner import ChildConfig
    from engine.evals.suite import Suite

    with ctx.db.session() as s:
        for name in ("v1", "v2", "v3"):
            versions_q.register_model_version(s, name=name, source=f"/models/{name}", actor="test")
    assert evaluation_svc._baseline(ctx, "v2", None, True) == (None, None, None)  # nobody holds production
    serving.serve(ctx, Principal.shell(ctx), "v1", "first")
    spec, name, error = evaluation_svc._baseline(ctx, "v2", None, True)
    assert (spec.name if spec else None, name, error) == ("v1", "v1", None)
    assert evaluation_svc._baseline(ctx, "v1", None, True) == (None, None, None)  # production itself: no pair
    assert evaluation_svc._baseline(ctx, "v2", None, False) == (None, None, None)
    assert evaluation_svc._baseline(ctx, "v2", "v3", True)[1] == "v3"  # named explicitly

    # The holder's files changed: the evaluation still runs and its report says why nothing was compared.
    with ctx.db.session() as s:
        holder = versions_q.get_model_version_by_name(s, "v1")
        holder.fingerprint, holder.fingerprint_files = "0" * 64, [{"path": "model.safetensors", "size": 1,
                                                                   "sha256": "0" * 64}]
    spec, name, error = evaluation_svc._baseline(ctx, "v2", None, True)
    assert spec is None and name == "v1" and "changed since it was registered" in (error or "")
    job = evaluation_svc._Job(ctx, 1, evaluation_svc.loadable_spec(ctx, "v2"), Suite("s", ()), ChildConfig(),
                              threading.Event(), baseline=None, baseline_name=name, baseline_error=error)
    summary = evaluation_svc._compare_latency(job, lambda *a: None)
    assert (summary["baseline_version"], summary["n"]) == ("v1", 0) and "changed" in summary["error"]
    gate = promotion.ttft_gate(ctx.settings, {"latency_comparison": summary}, None, baseline_version="v1")
    assert not gate.passed and "could not run" in (gate.note or "")
