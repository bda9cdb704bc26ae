"""The evaluation report as a reviewer reads it: headline figures rounded with their units, the bias gap per
identity attribute as chart data, the worst counterfactual pairs with their answers side by side, and two reports
compared metric by metric in words (better / worse / same).

Pure functions from stored report dicts (:meth:`engine.evals.report.EvalReport.as_dict`) to view-models; nothing
here imports Streamlit, the pages only lay the results out. Reports stored before a key existed still summarise:
a missing figure reads :data:`NOT_MEASURED`. Texts are returned as written (model output included): pages escape
them before handing them to markdown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.evals.report import ANSWERS_DIFFER_ABOVE, ComparisonRow, compare_reports, lookup

NOT_MEASURED = "not measured"

# How a metric's number reads: a share 0..1 shown in %, milliseconds, tokens per second, a 0..1 score, a count.
PCT, MS, RATE, SCORE, COUNT = "pct", "ms", "rate", "score", "count"
TOXICITY_DIFFERS_FROM = 0.1  # a worst pair whose answers hardly differ is shown when toxicity differs this much
_DIFFER_WORDS = f"more than {ANSWERS_DIFFER_ABOVE:.0%} of the words differ"


# --- numbers with units -----------------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _trim(text: str) -> str:
    return text[:-2] if text.endswith(".0") else text


def _plain(value: float) -> str:
    """A magnitude to read: one decimal under 10, whole numbers (with thousands separators) above."""
    return _trim(f"{value:.1f}") if abs(value) < 10 else f"{value:,.0f}"


def fmt_pct(value: Any) -> str:
    """A share 0..1 in percent: whole percents, one decimal near 0 % and 100 % (never a rounded 0 % or 100 %)."""
    v = _num(value)
    if v is None:
        return NOT_MEASURED
    pct = v * 100
    if 0 < pct < 0.05:
        return "<0.1%"
    if 99.95 < pct < 100:
        return ">99.9%"
    return (_trim(f"{pct:.1f}") if pct < 10 or pct > 90 else f"{pct:.0f}") + "%"


def fmt_ms(value: Any) -> str:
    v = _num(value)
    return NOT_MEASURED if v is None else f"{_plain(v)} ms"


def fmt_rate(value: Any) -> str:
    v = _num(value)
    return NOT_MEASURED if v is None else f"{_plain(v)} tokens/s"


def fmt_score(value: Any) -> str:
    v = _num(value)
    return NOT_MEASURED if v is None else f"{v:.2f}"


def fmt_count(value: Any) -> str:
    v = _num(value)
    return NOT_MEASURED if v is None else f"{v:,.0f}"


def _signed(text: str) -> str:
    return text if text.startswith("-") else "+" + text


def fmt_change(kind: str, difference: float) -> str:
    """A difference b - a in the metric's unit: percentage points for shares, signed everywhere."""
    if kind == PCT:
        return _signed(_plain(difference * 100)) + " pp"
    if kind == MS:
        return _signed(_plain(difference)) + " ms"
    if kind == RATE:
        return _signed(_plain(difference)) + " tokens/s"
    if kind == SCORE:
        return _signed(f"{difference:.2f}")
    return _signed(f"{difference:,.0f}")


def _shown_as_zero(kind: str, difference: float) -> bool:
    """Whether :func:`fmt_change` would show ``difference`` as zero (no change at the precision shown)."""
    shown = abs(difference * 100 if kind == PCT else difference)
    return shown < {SCORE: 0.005, COUNT: 0.5}.get(kind, 0.05)


FORMATS = {PCT: fmt_pct, MS: fmt_ms, RATE: fmt_rate, SCORE: fmt_score, COUNT: fmt_count}


def _get(report: Mapping[str, Any], *path: str) -> Any:
    return lookup(report, path)


def _of(part: Any, whole: Any, noun: str) -> str:
    n = _num(whole)
    if n is None or _num(part) is None:
        return ""
    return f"{part:,.0f} of {n:,.0f} {noun}"


# --- one report -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One headline number: what it is, its value with the unit, what it is a share of, how it is defined."""

    label: str
    value: str
    detail: str = ""
    help: str = ""


@dataclass(frozen=True)
class PairSide:
    """One member of a counterfactual pair: its group, its answer (as stored: redacted where scanned), and marks
    such as "declined", "flagged", "toxicity 0.80"."""

    group: str
    answer: str
    marks: str


@dataclass(frozen=True)
class WorstPair:
    """A counterfactual pair whose answers differ most, with what differs in words."""

    pair_id: str
    attribute: str
    prompt: str
    words_differ: str  # this pair's own answer gap, in %
    differences: str
    sides: tuple[PairSide, ...]


@dataclass(frozen=True)
class BiasSummary:
    """The bias gap: one sentence, figures, one chart row per (attribute, what differs), the worst pairs."""

    pairs: int
    sentence: str
    figures: tuple[Figure, ...]
    chart: tuple[dict[str, Any], ...]  # attribute, difference, share (%), pairs (e.g. "1 of 5 pairs")
    worst_pairs: tuple[WorstPair, ...]
    minor_pairs: str = ""  # the listed pairs left out because they hardly differ, in one sentence


@dataclass(frozen=True)
class ReportSummary:
    """Everything the report page shows above the raw rows."""

    title: str
    headlines: tuple[Figure, ...]
    latency: tuple[Figure, ...]
    latency_comparison: str | None
    bias: BiasSummary
    notes: tuple[str, ...]
    answers: tuple[Mapping[str, Any], ...]  # the raw rows, as stored


def latency_comparison_sentence(comparison: Any) -> str | None:
    """The paired same-run latency comparison of candidate and baseline, in one line
    ("p95 TTFT +4 ms vs v1 (95% CI -3..+12 ms, 40 paired prompts)"); None when the report has none."""
    if not isinstance(comparison, Mapping):
        return None
    baseline = comparison.get("baseline_version") or "the baseline"
    diff, n = _num(comparison.get("diff_ms")), _num(comparison.get("n"))
    if diff is None:
        why = comparison.get("error") or (f"{n:,.0f} paired prompt(s), too few" if n is not None else "")
        return f"p95 TTFT vs {baseline}: {NOT_MEASURED}" + (f" ({why})" if why else "")
    text = f"p95 TTFT {_signed(_plain(diff))} ms vs {baseline}"
    low, high = _num(comparison.get("ci_low_ms")), _num(comparison.get("ci_high_ms"))
    confidence = _num(comparison.get("confidence")) or 0.95
    details = []
    if low is not None and high is not None:
        details.append(f"{fmt_pct(confidence)} CI {_signed(_plain(low))}..{_signed(_plain(high))} ms")
    if n is not None:
        details.append(f"{n:,.0f} paired prompts")
    return f"{text} ({', '.join(details)})" if details else text


def _latency(report: Mapping[str, Any]) -> tuple[Figure, ...]:
    lat = _get(report, "latency") or {}
    comparison = report.get("latency_comparison")
    same_run = ""
    if isinstance(comparison, Mapping):
        same_run = (f"Measured in the same run, interleaved: this version {fmt_ms(comparison.get('candidate_ttft_p95_ms'))}, "
                    f"{comparison.get('baseline_version') or 'the baseline'} "
                    f"{fmt_ms(comparison.get('baseline_ttft_p95_ms'))} ({comparison.get('method') or 'paired'}).")
    return (
        Figure("Time to first token, p50", fmt_ms(_get(lat, "ttft_p50_ms")), help="Half the answers started sooner."),
        Figure("Time to first token, p95", fmt_ms(_get(lat, "ttft_p95_ms")),
               help=f"95% of the answers started sooner. {same_run}".strip()),
        Figure("Whole answer, p50", fmt_ms(_get(lat, "e2e_p50_ms"))),
        Figure("Whole answer, p95", fmt_ms(_get(lat, "e2e_p95_ms"))),
        Figure("Between tokens, p50", fmt_ms(_get(lat, "itl_p50_ms"))),
        Figure("Output speed per answer", fmt_rate(report.get("tokens_per_s")),
               help="Mean over answers of output tokens per second of generation."),
    )


def _pair_count(share: Any, pairs: Any) -> str:
    s, n = _num(share), _num(pairs)
    if s is None or n is None:
        return NOT_MEASURED
    return f"{round(s * n):,.0f} of {n:,.0f} pairs"


def _severity(pair: Mapping[str, Any]) -> float:
    """How bad a stored pair looks, as the report orders them: flagged differently, declined differently,
    toxicity difference, answer difference (the same weights as ``PairGap.score``)."""
    declined = pair.get("declined") or []
    return ((_num(pair.get("flag_gap")) or 0.0) + float(len(set(declined)) > 1)
            + (_num(pair.get("toxicity_gap")) or 0.0) + (_num(pair.get("answer_gap")) or 0.0))


def _material(pair: Mapping[str, Any]) -> bool:
    """Whether a listed pair differs in a way worth reading: its answers differ (as counted in the headline), one
    declined or was flagged and the other not, they are on different topics, or their toxicity differs by
    :data:`TOXICITY_DIFFERS_FROM` or more. Near-identical answers with a hair's difference in score are not."""
    return ((_num(pair.get("answer_gap")) or 0.0) > ANSWERS_DIFFER_ABOVE or (_num(pair.get("flag_gap")) or 0.0) > 0
            or len(set(pair.get("declined") or [])) > 1 or len(set(pair.get("topics") or [])) > 1
            or (_num(pair.get("toxicity_gap")) or 0.0) >= TOXICITY_DIFFERS_FROM)


def _only(flags: Sequence[Any], groups: Sequence[str], what: str) -> str | None:
    if len(set(flags)) <= 1 or any(f is None for f in flags):
        return None
    chosen = [g for g, f in zip(groups, flags, strict=False) if f]
    return f"only {' and '.join(chosen)} {what}"


def _worst_pair(pair: Mapping[str, Any]) -> WorstPair:
    groups = [str(g) for g in pair.get("groups") or []]
    answers = [str(a) for a in pair.get("answers") or []]
    declined = list(pair.get("declined") or [None] * len(groups))
    flagged = list(pair.get("flagged") or [None] * len(groups))
    toxicity = list(pair.get("toxicity") or [None] * len(groups))
    topics = list(pair.get("topics") or [None] * len(groups))
    words = fmt_pct(pair.get("answer_gap"))
    differences = [f"{words} of the words differ"]
    for part in (_only(declined, groups, "declined"), _only(flagged, groups, "flagged")):
        if part:
            differences.append(part)
    if len({t for t in topics}) > 1:
        differences.append("different topics")
    tox_gap = _num(pair.get("toxicity_gap"))
    if tox_gap:
        differences.append(f"toxicity differs by {fmt_score(tox_gap)}")
    sides = []
    for i, group in enumerate(groups):
        marks = [m for m, on in (("declined", _at(declined, i)), ("flagged", _at(flagged, i))) if on]
        if _num(_at(toxicity, i)) is not None:
            marks.append(f"toxicity {fmt_score(_at(toxicity, i))}")
        if _at(topics, i):
            marks.append(f"topic: {str(_at(topics, i)).replace('_', ' ')}")
        sides.append(PairSide(group, _at(answers, i) or "", " · ".join(marks)))
    prompts = pair.get("prompts") or []
    return WorstPair(str(pair.get("pair_id") or "?"), str(pair.get("attribute") or "unspecified"),
                     str(prompts[0]) if prompts else "", words, "; ".join(differences), tuple(sides))


def _at(items: Sequence[Any], i: int) -> Any:
    return items[i] if i < len(items) else None


# (what differs, key in bias_gap / by_attribute): every one a share of pairs.
_CHART_MEASURES = (
    (f"answers differ ({_DIFFER_WORDS})", "answers_differ_rate"),
    ("one flagged, the other not", "flag_gap"),
    ("one declined, the other not", "decline_gap"),
    ("answers on different topics", "topic_gap"),
)


def _bias(report: Mapping[str, Any]) -> BiasSummary:
    bias = _get(report, "bias_gap") or {}
    pairs = int(_num(bias.get("pairs")) or 0)
    listed = [p for p in bias.get("worst_pairs") or [] if isinstance(p, Mapping)]
    # Stored in order already; sorted again so that an older or hand-made report reads the same way.
    ordered = sorted(enumerate(listed), key=lambda ip: (-_severity(ip[1]), ip[0]))
    shown = [p for _, p in ordered if _material(p)]
    minor = [p for _, p in ordered if not _material(p)]
    worst = tuple(_worst_pair(p) for p in shown)
    largest = bias.get("answer_gap_max")
    listed_largest = max((g for g in (_num(p.get("answer_gap")) for p in listed) if g is not None), default=None)
    largest_text = (f"the most different pair differs in {fmt_pct(largest)} of its words" if _num(largest) is not None
                    else f"the most different listed pair differs in {fmt_pct(listed_largest)} of its words"
                    if listed_largest is not None else "")
    minor_text = ""
    if minor:
        tox = max((_num(p.get("toxicity_gap")) or 0.0 for p in minor), default=0.0)
        words = max(_num(p.get("answer_gap")) or 0.0 for p in minor)
        minor_text = (f"{len(minor)} more listed pair(s) hardly differ ("
                      + (f"at most {fmt_pct(words)} of the words" if words else "identical answers")
                      + (f", toxicity by at most {fmt_score(tox)}" if tox else "") + "): not shown.")
    if not pairs:
        sentence = ("No counterfactual pairs in this suite: the bias gap was not measured." if "pairs" in bias
                    else f"Bias gap: {NOT_MEASURED}.")
    else:
        differ = _of(bias.get("answers_differ"), pairs, "pairs") or f"{NOT_MEASURED} (an older report)"
        sentence = (f"Answers differ ({_DIFFER_WORDS}) in {differ}"
                    + (f"; {largest_text}" if largest_text else "")
                    + f"; averaged over all {pairs} pairs, {fmt_pct(bias.get('answer_gap'))} of the words differ.")
    figures = (
        Figure("Pairs flagged differently", _pair_count(bias.get("flag_gap"), pairs) if pairs else NOT_MEASURED,
               help="One answer of the pair was flagged by the output policy and the other not."),
        Figure("Pairs declined differently", _pair_count(bias.get("decline_gap"), pairs) if pairs else NOT_MEASURED,
               help="One answer of the pair declined and the other answered."),
        Figure("Toxicity difference", fmt_score(bias.get("toxicity_gap")),
               f"largest {fmt_score(bias.get('toxicity_gap_max'))}" if _num(bias.get("toxicity_gap_max")) is not None
               else "",
               "Mean over pairs of the difference of the two answers' toxicity scores (0..1); the promotion gate "
               "reads this mean."),
    )
    chart = []
    for attribute, stats in sorted((bias.get("by_attribute") or {}).items()):
        if not isinstance(stats, Mapping):
            continue
        for what, key in _CHART_MEASURES:
            share = _num(stats.get(key))
            if share is None:
                continue  # not measured (an older report, or no scanners): no bar rather than a bar at 0
            chart.append({"attribute": str(attribute), "difference": what, "share of pairs (%)": round(share * 100, 1),
                          "pairs": _pair_count(share, stats.get("pairs"))})
    return BiasSummary(pairs, sentence, figures, tuple(chart), worst, minor_text)


def summarize_report(report: Mapping[str, Any]) -> ReportSummary:
    """The ten-second summary of one stored report (any age: missing figures read "not measured")."""
    raw_counts = report.get("counts")
    counts: Mapping[str, Any] = raw_counts if isinstance(raw_counts, Mapping) else {}
    scanned = report.get("scanned")
    flag_help = ("Answers whose output scan made the policy flag, redact or block them."
                 if scanned is not False else "No safety scanners ran for this report.")
    headlines = (
        Figure("Topic accuracy", fmt_pct(report.get("topic_accuracy")),
               f"of {counts['in_domain']} support questions" if counts.get("in_domain") else "",
               "Support questions answered (not declined) on the expected topic."),
        Figure("Declined off-topic", fmt_pct(report.get("decline_rate")),
               f"of {counts['off_topic']} off-topic prompts" if counts.get("off_topic") else "",
               "Off-topic prompts the model declined, as it should. False refusals (support questions declined): "
               f"{fmt_pct(_get(report, 'decline_rate_by_kind', 'in_domain'))}."),
        Figure("Answers flagged", fmt_pct(report.get("flag_rate_any")), "any label", flag_help),
        Figure("Bias: pairs answered differently", fmt_pct(_get(report, "bias_gap", "answers_differ_rate")),
               _of(_get(report, "bias_gap", "answers_differ"), _get(report, "bias_gap", "pairs"), "pairs"),
               f"Counterfactual pairs whose two answers differ ({_DIFFER_WORDS})."),
        Figure("First token, p95", fmt_ms(_get(report, "latency", "ttft_p95_ms")), "time to first token",
               "95% of the answers started sooner."),
        Figure("Output speed", fmt_rate(report.get("tokens_per_s")), "per answer",
               "Mean over answers of output tokens per second of generation."),
    )
    notes = [str(n) for n in report.get("notes") or []]
    n, suite, version = report.get("n"), report.get("suite") or "?", report.get("version") or "?"
    title = f"{version} on {suite}" + (f": {fmt_count(n)} prompts" if _num(n) is not None else "")
    answers = tuple(a for a in report.get("answers") or [] if isinstance(a, Mapping))
    return ReportSummary(title, headlines, _latency(report), latency_comparison_sentence(
        report.get("latency_comparison")), _bias(report), tuple(notes), answers)


def list_row(summary: Mapping[str, Any] | None) -> dict[str, str]:
    """The headline figures of an evaluation in the list of a version's evaluations (empty until it is done)."""
    if not summary:
        return {"topic accuracy": "", "declined off-topic": "", "flagged": "", "first token p95": "",
                "output speed": ""}
    return {"topic accuracy": fmt_pct(summary.get("topic_accuracy")),
            "declined off-topic": fmt_pct(summary.get("decline_rate")),
            "flagged": fmt_pct(summary.get("flag_rate_any")), "first token p95": fmt_ms(summary.get("ttft_p95_ms")),
            "output speed": fmt_rate(summary.get("tokens_per_s"))}


# --- two reports ------------------------------------------------------------------------------------------------

BETTER, WORSE, SAME = "better", "worse", "same"
# Markers that carry the verdict without colour (a reader who cannot tell red from green reads them the same).
SYMBOLS = {BETTER: "✔", WORSE: "✘", SAME: "="}
MARKERS = {BETTER: "✔ better", WORSE: "✘ worse", SAME: "= same", None: ""}

# (label, path into the report, kind, True when higher is better / False when lower is / None: no direction).
COMPARED: tuple[tuple[str, tuple[str, ...], str, bool | None], ...] = (
    ("Topic accuracy", ("topic_accuracy",), PCT, True),
    ("Declined off-topic", ("decline_rate",), PCT, True),
    ("False refusals (support questions declined)", ("decline_rate_by_kind", "in_domain"), PCT, False),
    ("Declined adversarial", ("decline_rate_by_kind", "adversarial"), PCT, True),
    ("Answers flagged", ("flag_rate_any",), PCT, False),
    ("Adversarial answers flagged", ("flag_rate_by_kind", "adversarial"), PCT, False),
    ("Toxicity, mean", ("toxicity_mean",), SCORE, False),
    ("Toxicity, max", ("toxicity_max",), SCORE, False),
    ("Bias: pairs answered differently", ("bias_gap", "answers_differ_rate"), PCT, False),
    ("Bias: words that differ, mean over pairs", ("bias_gap", "answer_gap"), PCT, False),
    ("Bias: pairs flagged differently", ("bias_gap", "flag_gap"), PCT, False),
    ("Bias: pairs declined differently", ("bias_gap", "decline_gap"), PCT, False),
    ("Bias: toxicity difference, mean", ("bias_gap", "toxicity_gap"), SCORE, False),
    ("First token, p50", ("latency", "ttft_p50_ms"), MS, False),
    ("First token, p95", ("latency", "ttft_p95_ms"), MS, False),
    ("Whole answer, p50", ("latency", "e2e_p50_ms"), MS, False),
    ("Whole answer, p95", ("latency", "e2e_p95_ms"), MS, False),
    ("Output speed per answer", ("tokens_per_s",), RATE, True),
    ("Prompts without an answer", ("errors",), COUNT, False),
    ("Prompts", ("n",), COUNT, None),
)


@dataclass(frozen=True)
class MetricChange:
    """One metric of reports A and B: both values and the change with its unit, and whether B is better."""

    metric: str
    a: str
    b: str
    change: str
    verdict: str | None  # better, worse, same; None when either is not measured or the metric has no direction

    @property
    def marker(self) -> str:
        return MARKERS[self.verdict]


@dataclass(frozen=True)
class ComparisonSummary:
    """B against A: one sentence, what got better and worse in words, every metric, warnings, the raw rows."""

    sentence: str
    better: tuple[str, ...]
    worse: tuple[str, ...]
    warnings: tuple[str, ...]
    rows: tuple[MetricChange, ...]
    raw: tuple[ComparisonRow, ...]


def _flag_labels(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, tuple[str, ...], str, bool | None]]:
    labels = sorted(set(_get(a, "flag_rate") or {}) | set(_get(b, "flag_rate") or {}))
    return [(f"Answers flagged for {label}", ("flag_rate", label), PCT, False) for label in labels]


def _change(label: str, path: Sequence[str], kind: str, higher_better: bool | None, a: Mapping[str, Any],
            b: Mapping[str, Any]) -> MetricChange:
    va, vb = _num(_get(a, *path)), _num(_get(b, *path))
    if path[0] == "flag_rate":  # a label a scanned report never flagged has rate 0 there
        va = 0.0 if va is None and a.get("scanned") else va
        vb = 0.0 if vb is None and b.get("scanned") else vb
    fmt = FORMATS[kind]
    if va is None or vb is None:
        return MetricChange(label, fmt(va), fmt(vb), "", None)
    if _shown_as_zero(kind, vb - va):
        return MetricChange(label, fmt(va), fmt(vb), "no change", None if higher_better is None else SAME)
    if higher_better is None:
        return MetricChange(label, fmt(va), fmt(vb), fmt_change(kind, vb - va), None)
    verdict = BETTER if (vb > va) == higher_better else WORSE
    return MetricChange(label, fmt(va), fmt(vb), fmt_change(kind, vb - va), verdict)


def summarize_comparison(a: Mapping[str, Any], b: Mapping[str, Any]) -> ComparisonSummary:
    """Report B against report A, metric by metric: the change (B - A) in its unit and whether B is better."""
    metrics = list(COMPARED)
    metrics[6:6] = _flag_labels(a, b)
    rows = tuple(_change(*m, a, b) for m in metrics)
    better = tuple(f"{r.metric}: {r.a} → {r.b} ({r.change})" for r in rows if r.verdict == BETTER)
    worse = tuple(f"{r.metric}: {r.a} → {r.b} ({r.change})" for r in rows if r.verdict == WORSE)
    same = sum(r.verdict == SAME for r in rows)
    name_a, name_b = a.get("version") or "A", b.get("version") or "B"
    sentence = (f"B ({name_b}) against A ({name_a}): better on {len(better)} metric(s), worse on {len(worse)}, "
                f"unchanged on {same}.")
    warnings = []
    if a.get("suite_sha256") != b.get("suite_sha256") or a.get("suite") != b.get("suite"):
        warnings.append(f"The reports are of different suites ({a.get('suite') or '?'} and {b.get('suite') or '?'}): "
                        "their figures are of different prompts.")
    if any(r.verdict in (BETTER, WORSE) for r in rows if r.metric.startswith(("First token", "Whole answer"))):
        warnings.append("Latency of two runs at different times differs by noise as well; a paired comparison "
                        "measured in one run says how sure a difference is.")
    for side, report in (("A", a), ("B", b)):
        line = latency_comparison_sentence(report.get("latency_comparison"))
        if line:
            warnings.append(f"{side}, measured in its own run: {line}.")
    return ComparisonSummary(sentence, better, worse, tuple(warnings), rows, tuple(compare_reports(a, b)))


def feedback_sentence(up: int, down: int, answers: int, days: int) -> str:
    """Users' ratings of a version's live answers in one sentence, shares of the rated answers in %."""
    rated = up + down
    if not rated:
        return (f"Users' feedback, last {days} days: none of its {answers:,} answers was rated (thumbs up or down) "
                "yet.")
    return (f"Users' feedback, last {days} days: {rated:,} of its {answers:,} answers rated; thumbs up "
            f"{fmt_pct(up / rated)}, thumbs down {fmt_pct(down / rated)} of the rated answers.")
