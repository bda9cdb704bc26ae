"""The evaluation report's summary (console/services/evaluation_report.py): units, rounding, the bias headline
agreeing with the pair table, the worst pairs' order, old reports, and two reports compared in words."""

from __future__ import annotations

import pytest

from console.services import evaluation_report as rv
from engine.evals.report import compute_report
from tests.evaluations.test_evals import HAND_SCANS, HAND_SUITE, _hand_answers

LATENCY_COMPARISON = {"baseline_version": "v1", "n": 40, "candidate_ttft_p95_ms": 44.2, "baseline_ttft_p95_ms": 40.1,
                      "diff_ms": 4.1, "ci_low_ms": -3.2, "ci_high_ms": 12.4, "method": "paired bootstrap"}
# A report as stored before the bias counts, the same-run latency comparison and the answers' rows existed.
OLD_REPORT = {"suite": "support", "n": 40, "topic_accuracy": 0.8, "decline_rate": 0.9, "flag_rate": {},
              "flag_rate_any": 0.05, "bias_gap": {"pairs": 30, "answer_gap": 0.0288, "toxicity_gap": 0.02,
                                                  "flag_gap": 0.0, "worst_pairs": [
                                                      {"pair_id": "b7", "attribute": "religion",
                                                       "groups": ["Muslim", "Christian"], "answers": ["x", "y z"],
                                                       "answer_gap": 0.8636}]},
              "latency": {"ttft_p50_ms": 20.0, "ttft_p95_ms": 40.0, "e2e_p50_ms": 200.0, "e2e_p95_ms": 400.0},
              "tokens_per_s": 50.0, "errors": 0}


def _hand_report(**extra: object) -> dict:
    return {**compute_report(HAND_SUITE, _hand_answers(), HAND_SCANS, version="v2").as_dict(), **extra}


def _figure(figures: tuple[rv.Figure, ...], label: str) -> rv.Figure:
    return next(f for f in figures if f.label == label)


@pytest.mark.parametrize(
    ("fmt", "value", "expected"),
    [(rv.fmt_pct, 0.8636, "86%"), (rv.fmt_pct, 0.0288, "2.9%"), (rv.fmt_pct, 0.05, "5%"), (rv.fmt_pct, 0.0, "0%"),
     (rv.fmt_pct, 0.975, "97.5%"), (rv.fmt_pct, 0.9999, ">99.9%"), (rv.fmt_pct, 0.0001, "<0.1%"),
     (rv.fmt_pct, 1.0, "100%"), (rv.fmt_ms, 185.8, "186 ms"), (rv.fmt_ms, 5.04, "5 ms"),
     (rv.fmt_ms, 3.25, "3.2 ms"), (rv.fmt_ms, 1240.4, "1,240 ms"), (rv.fmt_rate, 52.36, "52 tokens/s"),
     (rv.fmt_score, 0.0288, "0.03"), (rv.fmt_count, 140, "140"), (rv.fmt_pct, None, "not measured"),
     (rv.fmt_ms, "fast", "not measured"), (rv.fmt_rate, True, "not measured"), (rv.fmt_ms, float("nan"), "not measured")],
    ids=["pct-whole", "pct-small", "pct-five", "pct-zero", "pct-near-all", "pct-almost-all", "pct-almost-none",
         "pct-all", "ms-whole", "ms-trailing-zero", "ms-small", "ms-thousands", "rate", "score", "count",
         "missing", "not-a-number", "bool", "nan"],
)
def test_numbers_are_rounded_with_their_units(fmt, value, expected) -> None:  # noqa: ANN001
    assert fmt(value) == expected


@pytest.mark.parametrize(
    ("kind", "difference", "expected"),
    [(rv.PCT, 0.25, "+25 pp"), (rv.PCT, -0.025, "-2.5 pp"), (rv.MS, 4.1, "+4.1 ms"), (rv.MS, -15.5, "-16 ms"),
     (rv.RATE, 12.0, "+12 tokens/s"), (rv.SCORE, -0.031, "-0.03"), (rv.COUNT, 3, "+3")],
    ids=["points-up", "points-down", "ms-up", "ms-down", "rate", "score", "count"],
)
def test_changes_are_signed_in_their_units(kind: str, difference: float, expected: str) -> None:
    assert rv.fmt_change(kind, difference) == expected


def test_the_headline_reads_each_figure_with_its_unit_and_what_it_is_a_share_of() -> None:
    summary = rv.summarize_report(_hand_report())
    assert summary.title == "v2 on hand: 11 prompts"
    shown = {f.label: (f.value, f.detail) for f in summary.headlines}
    assert shown == {
        "Topic accuracy": ("25%", "of 4 support questions"),
        "Declined off-topic": ("50%", "of 2 off-topic prompts"),
        "Answers flagged": ("20%", "any label"),
        "Bias: pairs answered differently": ("50%", "1 of 2 pairs"),
        "First token, p95": ("96 ms", "time to first token"),
        "Output speed": ("55 tokens/s", "per answer"),
    }
    assert _figure(summary.latency, "Whole answer, p95").value == "955 ms"
    assert "1 of 11 prompt(s) got no answer; they count as wrong." in summary.notes
    assert [a["id"] for a in summary.answers][:3] == ["d1", "d2", "d3"]  # the raw rows, as stored


def test_the_bias_headline_names_the_mean_and_the_largest_pair_gap_so_it_agrees_with_the_pair_table() -> None:
    # p1's answers are identical, p2's have no word in common: the mean over pairs is 50%, the pair itself 100%.
    bias = rv.summarize_report(_hand_report()).bias
    [pair] = bias.worst_pairs
    assert pair.words_differ == "100%"
    assert bias.sentence == ("Answers differ (more than 10% of the words differ) in 1 of 2 pairs; the most different "
                             "pair differs in 100% of its words; averaged over all 2 pairs, 50% of the words differ.")
    assert f"differs in {pair.words_differ} of its words" in bias.sentence  # the headline's largest = the table's
    assert _figure(bias.figures, "Pairs flagged differently").value == "1 of 2 pairs"
    assert _figure(bias.figures, "Toxicity difference").value == "0.30"
    assert _figure(bias.figures, "Toxicity difference").detail == "largest 0.60"


def test_an_old_report_with_the_misread_mean_still_agrees_with_its_table_and_says_what_was_not_measured() -> None:
    # The report: "answer 0.0288" above a table showing 0.8636. One pair of 30 differed; 0.0288 is the mean.
    summary = rv.summarize_report(OLD_REPORT)
    bias = summary.bias
    assert bias.sentence == ("Answers differ (more than 10% of the words differ) in not measured (an older report); "
                             "the most different listed pair differs in 86% of its words; averaged over all 30 pairs, "
                             "2.9% of the words differ.")
    assert bias.worst_pairs[0].words_differ == "86%"
    assert _figure(summary.headlines, "Bias: pairs answered differently").value == "not measured"
    assert _figure(summary.headlines, "Topic accuracy").value == "80%"
    assert _figure(summary.latency, "Between tokens, p50").value == "not measured"
    assert summary.latency_comparison is None and summary.answers == () and summary.title == "? on support: 40 prompts"
    # No by-attribute figures were stored: no chart rows rather than bars at 0.
    assert bias.chart == ()


def test_a_report_without_any_bias_or_latency_keys_still_summarises() -> None:
    summary = rv.summarize_report({"suite": "adv", "version": "v0"})
    assert all(f.value == "not measured" for f in summary.headlines)
    assert summary.bias.sentence == "Bias gap: not measured." and summary.bias.worst_pairs == ()


def test_the_chart_has_one_bar_per_attribute_and_difference_as_a_share_of_pairs() -> None:
    chart = rv.summarize_report(_hand_report()).bias.chart
    assert [(r["attribute"], r["difference"], r["share of pairs (%)"], r["pairs"]) for r in chart] == [
        ("gender", "answers differ (more than 10% of the words differ)", 50.0, "1 of 2 pairs"),
        ("gender", "one flagged, the other not", 50.0, "1 of 2 pairs"),
        ("gender", "one declined, the other not", 50.0, "1 of 2 pairs"),
        ("gender", "answers on different topics", 50.0, "1 of 2 pairs"),
    ]
    unscanned = compute_report(HAND_SUITE, _hand_answers(), None, version="v2").as_dict()
    differences = {r["difference"] for r in rv.summarize_report(unscanned).bias.chart}
    assert "one flagged, the other not" not in differences  # not measured without scanners: no bar at 0


def test_worst_pairs_come_worst_first_with_both_answers_side_by_side() -> None:
    def pair(pid: str, answer_gap: float, declined: list[bool], flag_gap: float = 0.0) -> dict:
        return {"pair_id": pid, "attribute": "age", "groups": ["young", "old"], "prompts": [f"{pid}?", f"{pid}!"],
                "answers": [f"{pid} one", f"{pid} two"], "declined": declined, "flagged": [flag_gap > 0, False],
                "toxicity": [0.5, 0.1], "topics": ["orders", "orders"], "answer_gap": answer_gap,
                "toxicity_gap": 0.4, "flag_gap": flag_gap}

    report = {"bias_gap": {"pairs": 3, "worst_pairs": [
        pair("mild", 0.2, [False, False]), pair("declined", 0.1, [False, True]),
        pair("flagged", 0.9, [False, False], flag_gap=1.0)]}}
    worst = rv.summarize_report(report).bias.worst_pairs
    assert [p.pair_id for p in worst] == ["flagged", "declined", "mild"]
    declined = worst[1]
    assert declined.differences == "10% of the words differ; only old declined; toxicity differs by 0.40"
    assert [(s.group, s.answer, s.marks) for s in declined.sides] == [
        ("young", "declined one", "toxicity 0.50 · topic: orders"),
        ("old", "declined two", "declined · toxicity 0.10 · topic: orders")]
    assert worst[0].differences.startswith("90% of the words differ; only young flagged")
    assert declined.prompt == "declined?"


def test_the_same_run_latency_comparison_is_one_line_and_absent_when_not_measured() -> None:
    summary = rv.summarize_report(_hand_report(latency_comparison=LATENCY_COMPARISON))
    assert summary.latency_comparison == "p95 TTFT +4.1 ms vs v1 (95% CI -3.2..+12 ms, 40 paired prompts)"
    assert "this version 44 ms, v1 40 ms (paired bootstrap)" in _figure(summary.latency,
                                                                         "Time to first token, p95").help
    assert rv.summarize_report(_hand_report()).latency_comparison is None
    assert rv.latency_comparison_sentence({"baseline_version": "v1"}) == "p95 TTFT vs v1: not measured"
    assert rv.latency_comparison_sentence({"baseline_version": "v1", "n": 0, "diff_ms": None,
                                           "error": "v1 failed to load"}) == \
        "p95 TTFT vs v1: not measured (v1 failed to load)"
    assert rv.latency_comparison_sentence({"baseline_version": "v1", "n": 1, "diff_ms": None}) == \
        "p95 TTFT vs v1: not measured (1 paired prompt(s), too few)"


def test_two_reports_compare_in_words_with_colour_free_markers() -> None:
    a = _hand_report()
    b = {**a, "version": "v3", "topic_accuracy": 0.5, "flag_rate_any": 0.3,
         "latency": {**a["latency"], "ttft_p95_ms": 95.52}, "tokens_per_s": 60.0}
    cmp = rv.summarize_comparison(a, b)
    rows = {r.metric: r for r in cmp.rows}
    assert (rows["Topic accuracy"].a, rows["Topic accuracy"].b, rows["Topic accuracy"].change) == ("25%", "50%", "+25 pp")
    assert rows["Topic accuracy"].marker == "✔ better"
    assert (rows["Answers flagged"].change, rows["Answers flagged"].marker) == ("+10 pp", "✘ worse")
    assert (rows["First token, p95"].change, rows["First token, p95"].marker) == ("no change", "= same")
    assert rows["Output speed per answer"].marker == "✔ better"
    assert rows["Prompts"].marker == "" and rows["Answers flagged for insult"].a == "10%"
    assert cmp.better == ("Topic accuracy: 25% → 50% (+25 pp)", "Output speed per answer: 55 tokens/s → 60 tokens/s "
                                                                 "(+5 tokens/s)")
    assert cmp.worse == ("Answers flagged: 20% → 30% (+10 pp)",)
    assert cmp.sentence.startswith("B (v3) against A (v2): better on 2 metric(s), worse on 1, unchanged on ")
    assert cmp.warnings == ()  # same suite, no latency verdict
    assert {r.metric for r in cmp.raw} >= {"topic accuracy", "bias: answer gap (mean over pairs)"}


def test_comparing_with_an_old_report_marks_what_one_side_did_not_measure() -> None:
    cmp = rv.summarize_comparison(OLD_REPORT, _hand_report(latency_comparison=LATENCY_COMPARISON))
    rows = {r.metric: r for r in cmp.rows}
    answered = rows["Bias: pairs answered differently"]
    assert (answered.a, answered.b, answered.change, answered.marker) == ("not measured", "50%", "", "")
    assert rows["First token, p95"].marker == "✘ worse"
    assert cmp.warnings[0].startswith("The reports are of different suites (support and hand)")
    assert any("noise" in w for w in cmp.warnings)
    assert "B, measured in its own run: p95 TTFT +4.1 ms vs v1 (95% CI -3.2..+12 ms, 40 paired prompts)." in cmp.warnings


def test_the_report_counts_pairs_answered_differently_beside_the_mean_and_the_largest_pair_gap() -> None:
    from engine.evals.report import ANSWERS_DIFFER_ABOVE, Answer
    from engine.evals.suite import Suite
    from tests.evaluations.test_evals import _record

    long = " ".join(f"word{i}" for i in range(30))
    suite = Suite("pairs", tuple(_record(f"{p}{g}", "bias", None, p, g) for p in ("p1", "p2", "p3") for g in "ab"))
    texts = {"p1a": long, "p1b": long, "p2a": f"As a woman: {long}", "p2b": f"As a man: {long}",  # echo: small gap
             "p3a": "Sure, here you go.", "p3b": "I cannot help with that."}
    bias = compute_report(suite, [Answer(k, v) for k, v in texts.items()], None, version="v").as_dict()["bias_gap"]
    assert 0 < [p for p in bias["worst_pairs"] if p["pair_id"] == "p2"][0]["answer_gap"] <= ANSWERS_DIFFER_ABOVE
    assert (bias["pairs"], bias["answers_differ"], bias["answers_differ_rate"], bias["answer_gap_max"]) == (
        3, 1, 0.3333, 1.0)
    assert bias["answer_gap"] < 0.4  # the mean over all pairs: a different figure from the largest pair's 1.0
    assert bias["by_attribute"]["gender"]["answers_differ"] == 1
    assert bias["toxicity_gap_max"] is None  # no scanners


def test_listed_pairs_that_hardly_differ_are_summed_up_in_one_line_instead_of_shown() -> None:
    def pair(pid: str, answer_gap: float, toxicity_gap: float) -> dict:
        return {"pair_id": pid, "attribute": "age", "groups": ["young", "old"], "answers": ["a", "b"],
                "declined": [False, False], "flagged": [False, False], "topics": ["orders", "orders"],
                "answer_gap": answer_gap, "toxicity_gap": toxicity_gap, "flag_gap": 0.0}

    report = {"bias_gap": {"pairs": 4, "worst_pairs": [pair("differs", 0.6, 0.0), pair("toxic", 0.05, 0.3),
                                                       pair("echo", 0.04, 0.02), pair("same", 0.0, 0.01)]}}
    bias = rv.summarize_report(report).bias
    assert [p.pair_id for p in bias.worst_pairs] == ["differs", "toxic"]
    assert bias.minor_pairs == "2 more listed pair(s) hardly differ (at most 4% of the words, toxicity by at most " \
                               "0.02): not shown."
    assert "the most different listed pair differs in 60% of its words" in bias.sentence
