"""How well the loaded toxicity detector ranks toxic text: ROC AUC per label on a labelled set shipped with us.

``llm-console eval safety`` prints :func:`toxicity_report` beside the PII report. The set,
``engine/safety/data/toxicity_eval.jsonl``, was written by hand for this project (no public labelled set that a
package ships offline fits): 422 English texts, 342 hand-written and 80 from ten templates (five hateful, five
neutral, each filled with eight of fifteen identity groups). The toxic ones contain NO swear words and no slurs:
threats (80), identity attacks (110), insults (60), some of them severe (15); the benign ones are support-chat
texts and hard negatives (identity groups named neutrally, violent words in harmless senses, rude-but-fair
complaints). Each line: ``{"text", "labels": [Detoxify labels that apply], "kind", "source", "split"}``; the
split (``tune``/``test``, by a hash of the text, by template for templated lines) keeps the texts the default
thresholds were chosen on apart from those they are reported on.

Numbers on it are weaker evidence than a public set: one author wrote the texts and the labels, and the cases are
clear ones. They are meant to catch regressions and to compare detectors, not to promise a recall in the field.
There are no obscene positives (no swear words), so ``obscene`` has no AUC here.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.safety.base import Finding
from engine.safety.toxicity import (
    DETECTOR_FALLBACK,
    FALLBACK_LABEL,
    ToxicityConfig,
    ToxicityScanner,
    load_toxicity,
)

EVAL_SET_PATH = Path(__file__).with_name("data") / "toxicity_eval.jsonl"
# Detoxify's labels of the "original" model: the ones the set is labelled with.
EVAL_LABELS: tuple[str, ...] = ("toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack")
SPLITS: tuple[str, ...] = ("tune", "test")
# How default thresholds are chosen on the tune split (see choose_thresholds).
FLAG_MAX_BENIGN_FPR = 0.05
FLAG_MAX_ADDED_BENIGN_FPR = 0.01
# Ordinary support-chat sentences (not in the set): "in_context" puts each text between three of them before and
# two after, as a toxic sentence would stand in a real message.
_CONTEXT_SENTENCES = (
    "Hello, I am writing about order 4471 from last week.",
    "The parcel arrived on Tuesday but the box was damaged.",
    "I have attached two photos of the packaging.",
    "My account number should be on the invoice.",
    "I already tried restarting the router twice.",
    "The tracking page has not changed since Monday.",
    "Please let me know what information you need from me.",
    "Thanks in advance for looking into this.",
    "I can be reached in the afternoons this week.",
    "Kind regards and have a good day.",
)
_LATENCY_TEXT = (
    "Hello, my order arrived late and the box was damaged, so I would like a refund or a replacement please. "
    "My account also shows an invoice I do not recognise; can you explain the charge and tell me how to cancel "
    "the subscription before the next payment? Thank you for your help, the support team answered quickly last "
    "time and solved the problem with my login. I have attached a photo of the parcel and the delivery note, "
    "and I am at home every afternoon this week if the courier needs to collect it."
)


@dataclass(frozen=True)
class LabelledText:
    """One line of the evaluation set."""

    text: str
    labels: frozenset[str]
    kind: str
    source: str
    split: str


def load_eval_set(path: Path | str = EVAL_SET_PATH) -> list[LabelledText]:
    """Read the labelled set; raise ValueError naming the line when one is malformed."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            labels = frozenset(raw["labels"])
            row = LabelledText(raw["text"], labels, raw["kind"], raw["source"], raw["split"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a labelled text: {exc}") from exc
        if not labels <= set(EVAL_LABELS) or row.split not in SPLITS or not row.text.strip():
            raise ValueError(f"{path}:{number}: unknown label or split, or empty text")
        rows.append(row)
    return rows


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve (Mann-Whitney; ties count half); None without positives or negatives."""
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    if not pos or not neg:
        return None
    ranked = sorted(scores)
    # Average rank (1-based) of each distinct score.
    rank_of: dict[float, float] = {}
    i = 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j] == ranked[i]:
            j += 1
        rank_of[ranked[i]] = (i + 1 + j) / 2
        i = j
    rank_sum = sum(rank_of[s] for s in pos)
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def in_context(text: str, index: int) -> str:
    """``text`` between three ordinary support sentences before and two after (chosen by ``index``)."""
    n = len(_CONTEXT_SENTENCES)
    before = [_CONTEXT_SENTENCES[(index + k) % n] for k in range(3)]
    after = [_CONTEXT_SENTENCES[(index + 3 + k) % n] for k in range(2)]
    return " ".join([*before, text, *after])


def label_scores(scanner: ToxicityScanner, texts: Iterable[str]) -> list[dict[str, float]]:
    """Each text's score per evaluation label. The profanity fallback has one score: it stands for every label."""
    return [scores_of(scanner, scanner.scan(text)) for text in texts]


def scores_of(scanner: ToxicityScanner, findings: Iterable[Finding]) -> dict[str, float]:
    """A scan's score per evaluation label (the profanity fallback's one score stands for every label)."""
    found = {f.label: f.score for f in findings}
    if scanner.kind == DETECTOR_FALLBACK:
        return dict.fromkeys(EVAL_LABELS, found.get(FALLBACK_LABEL, 0.0))
    return {label: found[label] for label in EVAL_LABELS if label in found}


def _auc_table(rows: Sequence[LabelledText], scores: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    table: dict[str, Any] = {"texts": len(rows), "roc_auc": {}, "positives": {}}
    for label in EVAL_LABELS:
        positive = [label in r.labels for r in rows]
        table["positives"][label] = sum(positive)
        if any(label not in s for s in scores):
            table["roc_auc"][label] = None
            continue
        auc = roc_auc([s[label] for s in scores], positive)
        table["roc_auc"][label] = None if auc is None else round(auc, 3)
    return table


def choose_thresholds(rows: Sequence[LabelledText], scores: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """Thresholds for a detector from labelled texts (the tune split), in 0.01 steps; None where a label has no
    positive text. The rules' actions decide which budget applies:

    - flag, ``toxicity`` (the catch-all): the lowest threshold that flags at most 5% of the benign texts;
    - flag, every other label: the lowest threshold that adds at most 1% of the benign texts to those
      ``toxicity`` already flags (so the labels together stay near the 5%);
    - block (threat and severe toxicity, in prompts): the lowest threshold that no text without that label
      reaches: a blocked prompt never reaches the model, so a block must be sure.
    """
    grid = [step / 100 for step in range(1, 100)]
    benign = [not r.labels for r in rows]
    n_benign = max(1, sum(benign))
    have = [label for label in EVAL_LABELS if all(label in s for s in scores)]
    flag: dict[str, float | None] = {}
    block: dict[str, float | None] = {}
    if "toxicity" not in have:
        return {"flag": flag, "block": block}
    tox_threshold = next((t for t in grid
                          if sum(s["toxicity"] >= t for s, b in zip(scores, benign, strict=True) if b) / n_benign
                          <= FLAG_MAX_BENIGN_FPR), 0.99)
    flag["toxicity"] = tox_threshold
    for label in have:
        positive = [label in r.labels for r in rows]
        if not any(positive):
            flag.setdefault(label, None)
            block[label] = None
            continue
        if label != "toxicity":
            flag[label] = next((t for t in grid if sum(
                s[label] >= t and s["toxicity"] < tox_threshold for s, b in zip(scores, benign, strict=True) if b
            ) / n_benign <= FLAG_MAX_ADDED_BENIGN_FPR), 0.99)
        top_negative = max((s[label] for s, p in zip(scores, positive, strict=True) if not p), default=0.0)
        block[label] = next((t for t in grid if t > top_negative), 0.99)
    return {"flag": flag, "block": block}


def _at_thresholds(
    rows: Sequence[LabelledText], scores: Sequence[Mapping[str, float]], thresholds: Mapping[str, float]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    benign = [not r.labels for r in rows]
    for label, threshold in sorted(thresholds.items()):
        if label not in EVAL_LABELS or any(label not in s for s in scores):
            continue
        hit = [s[label] >= threshold for s in scores]
        positives = sum(label in r.labels for r in rows)
        found = sum(h for h, r in zip(hit, rows, strict=True) if label in r.labels)
        out[label] = {
            "threshold": threshold,
            "recall": round(found / positives, 3) if positives else None,
            "benign_flagged": round(sum(h for h, b in zip(hit, benign, strict=True) if b) / max(1, sum(benign)), 3),
        }
    return out


def _policy_thresholds(kind: str) -> dict[str, float]:
    """The thresholds the shipped default policy applies to this detector's prompt findings, by label."""
    from engine.safety.policy import DEFAULT_POLICY_PATH, Policy

    policy = Policy.load(DEFAULT_POLICY_PATH)
    out = {}
    for label, rule in policy.rules["prompt"].items():
        if label in EVAL_LABELS or label == FALLBACK_LABEL:
            table = policy.detector_thresholds.get(kind, {}).get("prompt", {})
            out[label] = table.get(label, rule.threshold)
    return out


def _ms_per_100_words(scanner: ToxicityScanner, runs: int) -> float:
    words = _LATENCY_TEXT.split()
    text = " ".join((words * 2)[:100])
    scanner.scan(text)  # warm-up
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        scanner.scan(text)
        times.append((time.perf_counter() - began) * 1000.0)
    return round(statistics.median(times), 2)


def toxicity_report(
    scanner: ToxicityScanner | None = None,
    *,
    config: ToxicityConfig | None = None,
    path: Path | str = EVAL_SET_PATH,
    latency_runs: int = 20,
) -> dict[str, Any]:
    """ROC AUC per label of the toxicity detector on the offline labelled set, with the detector's name and version.

    ``scanner`` None loads the detector as the console would, without downloads (Detoxify if its weights are
    there, else the offline model, else the profanity fallback). The report (JSON-ready) has the AUC on the
    whole set, on each split and with each text inside an ordinary message (``in_context``), default thresholds
    chosen on the tune split, recall and benign false-positive rate on the test split at the thresholds the
    default policy applies to this detector, what the default policy does with the test split's texts as
    prompts, and the median milliseconds to scan a 100-word text.
    """
    notice = None
    if scanner is None:
        load = load_toxicity(config or ToxicityConfig(allow_download=False))
        scanner, notice = load.scanner, load.notice
    from engine.safety.policy import DEFAULT_POLICY_PATH, Policy

    policy = Policy.load(DEFAULT_POLICY_PATH)
    rows = load_eval_set(path)
    findings = [scanner.scan(r.text) for r in rows]
    scores = [scores_of(scanner, f) for f in findings]
    context_scores = label_scores(scanner, (in_context(r.text, i) for i, r in enumerate(rows)))
    by_split = {
        split: [i for i, r in enumerate(rows) if r.split == split] for split in SPLITS
    }
    tune = by_split["tune"]
    chosen = choose_thresholds([rows[i] for i in tune], [scores[i] for i in tune])
    test = by_split["test"]
    actions = [policy.decide("prompt", findings[i]).action for i in test]
    toxic_test = [rows[i].labels != frozenset() for i in test]
    policy_thresholds = _policy_thresholds(scanner.kind)
    if scanner.kind == DETECTOR_FALLBACK:
        policy_thresholds = dict.fromkeys(EVAL_LABELS, policy_thresholds.get(FALLBACK_LABEL, 0.8))
    return {
        "detector": scanner.kind,
        "scanner": scanner.name,
        "version": scanner.version,
        "display_name": scanner.display_name,
        "notice": notice,
        "dataset": {
            "path": str(path),
            "texts": len(rows),
            "hand_written": sum(r.source == "hand" for r in rows),
            "templated": sum(r.source == "template" for r in rows),
            "toxic": sum(bool(r.labels) for r in rows),
            "description": "written by hand for this project: clear cases without swear words or slurs; "
            "weaker evidence than a public labelled set",
        },
        "all": _auc_table(rows, scores),
        "in_context": _auc_table(rows, context_scores),
        "splits": {
            split: _auc_table([rows[i] for i in idx], [scores[i] for i in idx]) for split, idx in by_split.items()
        },
        "thresholds_chosen_on_tune": chosen,
        "default_policy_on_test": _at_thresholds(
            [rows[i] for i in test], [scores[i] for i in test], policy_thresholds
        ),
        "default_policy_prompts_on_test": {
            "toxic_flagged_or_blocked": round(
                sum(a != "allow" for a, t in zip(actions, toxic_test, strict=True) if t) / max(1, sum(toxic_test)), 3
            ),
            "toxic_blocked": round(
                sum(a == "block" for a, t in zip(actions, toxic_test, strict=True) if t) / max(1, sum(toxic_test)), 3
            ),
            "benign_flagged_or_blocked": round(
                sum(a != "allow" for a, t in zip(actions, toxic_test, strict=True) if not t)
                / max(1, len(toxic_test) - sum(toxic_test)),
                3,
            ),
            "benign_blocked": round(
                sum(a == "block" for a, t in zip(actions, toxic_test, strict=True) if not t)
                / max(1, len(toxic_test) - sum(toxic_test)),
                3,
            ),
        },
        "ms_per_100_words": _ms_per_100_words(scanner, latency_runs),
        "note": (
            "the profanity fallback has one score; it is ranked against every label"
            if scanner.kind == DETECTOR_FALLBACK
            else None
        ),
    }


if __name__ == "__main__":
    print(json.dumps(toxicity_report(), indent=2))
