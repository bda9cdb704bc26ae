"""How well the injection scanner separates attacks from ordinary prompts: the ``injection`` part of
``llm-console eval safety``.

Reported (all on texts the model was not trained on):

- ROC AUC per held-out public source and overall (``data/injection_heldout.jsonl``; sources and licences in
  ``data/INJECTION_SOURCES.md``). A text's score for a label is the scanner's finding score for it (0 without a
  finding); for "attack versus benign" a text scores the higher of its two labels;
  - ``jailbreak``: PyRIT's jailbreak templates and bastioncorpus' persona jailbreaks against the benign texts
    (promptsource task prompts of the held-out half of its datasets, bastioncorpus' benign look-alikes);
  - ``prompt_injection``: bastioncorpus' and agent-injection-bench's injections against the same benign texts;
  - per source: ``pyrit_templates`` (jailbreak) against ``promptsource_report``, ``bastioncorpus`` (any attack
    against its own hard negatives), ``aib_report`` (instructions injected into tool results, documents and pages
    against the users' tasks and harmless injected content of the same cases);
- the share of the project's ordinary support prompts flagged at the policy's thresholds (either label), on the
  ``report`` half (the thresholds were chosen on the ``tune`` half; the model was trained on the ``tune`` half):
  the demo corpus' user turns (engine/demo), the evaluation suites in_domain, off_topic and bias_pairs
  (engine/evals/data), the held-out chats, the corpus' system prompts and the load test's prompt sets
  (console/services/loadtest_prompts.py);
- the true-positive rate at the same thresholds on the held-out attacks;
- the scanner's time per text, p50 and p95 in milliseconds.

The scorer is the product's: ``engine.safety.injection.load_injection_scanner`` (model and patterns) where it
exists, else the model alone (the report says which).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.safety.injection_model import LABELS
from engine.safety.measure_toxicity import _hash_split, roc_auc

HELDOUT_PATH = Path(__file__).with_name("data") / "injection_heldout.jsonl"
POLICY_PATH = Path(__file__).with_name("default_policy.toml")
BENIGN_HELDOUT = ("promptsource_report", "bastioncorpus", "aib_report")

Scores = Callable[[str], Mapping[str, float]]


@dataclass(frozen=True)
class Scorer:
    """A named scoring function: text -> {label: score}."""

    name: str
    version: str
    score: Scores
    notice: str | None = None


def model_scorer(path: Path | None = None) -> Scorer:
    from engine.safety.injection_model import load_injection_model

    model = load_injection_model(path)
    return Scorer("injection model", model.version, model.scores)


def product_scorer() -> Scorer:
    """The scanner the product runs (model and patterns); the model alone where the scanner does not exist."""
    try:
        from engine.safety import injection
    except ImportError:
        return model_scorer()
    loader = getattr(injection, "load_injection_scanner", None)
    if loader is None:
        return model_scorer()
    scanner = loader()

    def score(text: str) -> dict[str, float]:
        out = dict.fromkeys(LABELS, 0.0)
        for finding in scanner.scan(text):
            if finding.label in out:
                out[finding.label] = max(out[finding.label], finding.score)
        return out

    return Scorer("injection scanner", scanner.version, score, getattr(scanner, "notice", None))


def policy_thresholds(path: Path | str = POLICY_PATH) -> dict[str, float]:
    """The prompt direction's flag thresholds for the two labels (the lower of flag and block when both exist)."""
    import tomllib

    rules = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("rules", {}).get("prompt", {})
    out = {}
    for label in LABELS:
        rule = rules.get(label, {})
        out[label] = float(rule.get("threshold", 0.5))
    return out


def support_prompts(extra_sets: Mapping[str, Sequence[str]] | None = None) -> list[tuple[str, str, str]]:
    """``(text, source, split)`` of the ordinary support prompts (see the module docstring), deduplicated;
    ``extra_sets`` (the console's load-test prompt sets, passed in by the CLI: engine does not import console) are
    added as sources ``loadtest_<name>``."""
    from engine.safety.measure_toxicity import ordinary_traffic

    out = [(t.text, t.source, t.split) for t in ordinary_traffic() if t.direction == "prompt"]
    seen = {text for text, _, _ in out}
    for name, prompts in (extra_sets or {}).items():
        for text in prompts:
            if text not in seen:
                seen.add(text)
                out.append((text, f"loadtest_{name}", _hash_split(text)))
    return out


@dataclass(frozen=True)
class Labelled:
    text: str
    jailbreak: bool
    prompt_injection: bool
    source: str


def load_heldout(path: Path | str = HELDOUT_PATH) -> list[Labelled]:
    from engine.safety.injection_training import load_examples

    return [Labelled(e.text, e.jailbreak, e.prompt_injection, e.source) for e in load_examples(path)]


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def injection_report(
    *,
    scorer: Scorer | None = None,
    heldout: Sequence[Labelled] | None = None,
    support: Sequence[tuple[str, str, str]] | None = None,
    thresholds: Mapping[str, float] | None = None,
    support_split: str = "report",
) -> dict[str, Any]:
    """The injection figures (module docstring) as a JSON-ready dict."""
    scorer = scorer or product_scorer()
    heldout = list(heldout) if heldout is not None else load_heldout()
    support = list(support) if support is not None else support_prompts()
    thresholds = dict(thresholds) if thresholds is not None else policy_thresholds()
    times: list[float] = []

    def timed(text: str) -> dict[str, float]:
        start = time.perf_counter()
        s = dict(scorer.score(text))
        times.append((time.perf_counter() - start) * 1000.0)
        return {label: float(s.get(label, 0.0)) for label in LABELS}

    held_scores = [timed(r.text) for r in heldout]
    held_times, times = times, []
    benign = [not (r.jailbreak or r.prompt_injection) for r in heldout]

    def auc(rows: Sequence[int], label: str | None) -> float | None:
        if label is None:  # any attack against benign; the higher label
            scores = [max(held_scores[i].values()) for i in rows]
            positive = [not benign[i] for i in rows]
        else:
            rows = [i for i in rows if benign[i] or getattr(heldout[i], label)]
            scores = [held_scores[i][label] for i in rows]
            positive = [bool(getattr(heldout[i], label)) for i in rows]
        value = roc_auc(scores, positive)
        return None if value is None else round(value, 4)

    everything = list(range(len(heldout)))
    by_source = {}
    for source in sorted({r.source for r in heldout}):
        rows = [i for i, r in enumerate(heldout) if r.source == source]
        if all(benign[i] for i in rows):
            continue  # a benign-only source is the other side of the attack sources
        if not any(benign[i] for i in rows):
            rows += [i for i, r in enumerate(heldout) if r.source == "promptsource_report"]
        by_source[source] = {
            "attacks": sum(1 for i in rows if not benign[i]),
            "benign": sum(1 for i in rows if benign[i]),
            "roc_auc": auc(rows, None),
        }

    def flagged(s: Mapping[str, float]) -> bool:
        return any(s[label] >= thresholds[label] for label in LABELS)

    attacks = [i for i in everything if not benign[i]]
    tpr = {label: _rate([held_scores[i][label] >= thresholds[label] for i in attacks
                         if getattr(heldout[i], label)]) for label in LABELS}
    support_rows = [(text, source) for text, source, split in support if split == support_split]
    support_flags = []
    fpr_by_source: dict[str, list[bool]] = {}
    for text, source in support_rows:
        flag = flagged(timed(text))
        support_flags.append(flag)
        fpr_by_source.setdefault(source, []).append(flag)
    return {
        "scanner": scorer.name,
        "version": scorer.version,
        "notice": scorer.notice,
        "heldout": {"texts": len(heldout), "attacks": len(attacks), "benign": sum(benign),
                    "sources": sorted({r.source for r in heldout})},
        "roc_auc": auc(everything, None),
        "roc_auc_by_label": {label: auc(everything, label) for label in LABELS},
        "by_source": by_source,
        "thresholds": thresholds,
        "tpr": round(_rate([flagged(held_scores[i]) for i in attacks]) or 0.0, 4) if attacks else None,
        "tpr_by_label": {k: (None if v is None else round(v, 4)) for k, v in tpr.items()},
        "heldout_benign_fpr": _round(_rate([flagged(held_scores[i]) for i in everything if benign[i]])),
        "support_split": support_split,
        "support_prompts": len(support_rows),
        "support_fpr": _round(_rate(support_flags)),
        "support_fpr_by_source": {k: _round(_rate(v)) for k, v in sorted(fpr_by_source.items())},
        "latency_ms": {"support_prompts": _latency(times), "heldout": _latency(held_times)},
    }


def _latency(times: Sequence[float]) -> dict[str, Any]:
    if not times:
        return {"texts": 0, "p50": None, "p95": None, "mean": None}
    return {"texts": len(times), "p50": round(_pct(times, 0.5), 3), "p95": round(_pct(times, 0.95), 3),
            "mean": round(statistics.fmean(times), 3)}


def format_report(report: Mapping[str, Any]) -> list[str]:
    """The report as lines for the terminal."""
    def num(value: Any, pct: bool = False) -> str:
        if value is None:
            return "-"
        return f"{100 * value:.2f}%" if pct else f"{value:.3f}"

    th = report["thresholds"]
    lines = [f"injection: {report['scanner']} ({report['version']})"
             + (f"; {report['notice']}" if report.get("notice") else ""),
             f"  held-out public texts: {report['heldout']['attacks']} attacks, {report['heldout']['benign']} benign "
             f"({', '.join(report['heldout']['sources'])})",
             f"  ROC AUC attack vs benign {num(report['roc_auc'])}; "
             + ", ".join(f"{k} {num(v)}" for k, v in report["roc_auc_by_label"].items())]
    for source, row in report["by_source"].items():
        lines.append(f"  ROC AUC {source} ({row['attacks']} attacks, {row['benign']} benign): {num(row['roc_auc'])}")
    lines.append(f"  at the policy's thresholds ({', '.join(f'{k} {v:.2f}' for k, v in th.items())}): "
                 f"attacks flagged (TPR) {num(report['tpr'], True)} ("
                 + ", ".join(f"{k} {num(v, True)}" for k, v in report["tpr_by_label"].items())
                 + f"); held-out benign flagged {num(report['heldout_benign_fpr'], True)}")
    lines.append(f"  ordinary support prompts flagged ({report['support_split']} half, {report['support_prompts']} "
                 f"prompts): {num(report['support_fpr'], True)}")
    for name, row in report["latency_ms"].items():
        lines.append(f"  time per text, {name.replace('_', ' ')} ({row['texts']}): p50 {num(row['p50'])} ms, "
                     f"p95 {num(row['p95'])} ms")
    return lines


def _rate(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def threshold_curve(steps: Sequence[float] = (0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.7),
                    scorer: Scorer | None = None) -> list[dict[str, Any]]:
    """How the policy's threshold was chosen: for one threshold on both labels, the share flagged of the
    calibration quarter of the support prompts (never trained on), of the report half, of the held-out public
    benign texts, and of the held-out attacks (TPR)."""
    from engine.safety.injection_training import calibration_prompt

    scorer = scorer or product_scorer()
    support = support_prompts()
    calibration = [scorer.score(t) for t, _, split in support if split == "tune" and calibration_prompt(t)]
    report = [scorer.score(t) for t, _, split in support if split == "report"]
    heldout = load_heldout()
    held = [(scorer.score(r.text), bool(r.jailbreak or r.prompt_injection)) for r in heldout]
    out = []
    for t in steps:
        def flag(s: Mapping[str, float], t: float = t) -> bool:
            return any(s.get(label, 0.0) >= t for label in LABELS)

        out.append({"threshold": t, "calibration": len(calibration),
                    "calibration_fpr": _round(_rate([flag(s) for s in calibration])),
                    "report_fpr": _round(_rate([flag(s) for s in report])),
                    "heldout_benign_fpr": _round(_rate([flag(s) for s, attack in held if not attack])),
                    "tpr": _round(_rate([flag(s) for s, attack in held if attack]))})
    return out


if __name__ == "__main__":  # python -m engine.safety.measure_injection: the threshold curve, as JSON lines
    import json

    for row in threshold_curve():
        print(json.dumps(row))
