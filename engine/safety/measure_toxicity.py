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

``llm-console eval thresholds`` prints :func:`ordinary_report`: how often the thresholds flag ordinary support
traffic (:func:`ordinary_traffic`: the demo corpus' user turns, the evaluation suites, the held-out chats, the system
prompts; the corpus answers as outputs), the recall on the toxic texts of this set and of Davidson et al.'s public
tweets where they are at hand, and the thresholds :func:`choose_ordinary_thresholds` picks for a budget of flagged
ordinary prompts (:data:`ORDINARY_MAX_FLAGGED`). The default policy's offline thresholds are that command's choice.
"""

from __future__ import annotations

import csv
import hashlib
import json
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.safety.base import Finding
from engine.safety.toxicity import (
    DETECTOR_FALLBACK,
    DETECTOR_LABELS,
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


# --- thresholds for ordinary support traffic -------------------------------------------------------------------
# A flag sends a text to a reviewer. The budget: at most 1% of ordinary support prompts flagged, so that at a
# toxic share of a few percent most of the queue is worth a reviewer's time, and a reviewer sees about one false
# alarm per hundred chats instead of one in twenty.
ORDINARY_MAX_FLAGGED = 0.01
# Dialogues of the demo corpus whose user turns stand for ordinary prompts (about 9,000 distinct texts).
ORDINARY_DIALOGUES = 8000
ORDINARY_SPLICES = 2000
_REPO_ROOT = Path(__file__).resolve().parents[2]
EVAL_SUITE_FILES = tuple(_REPO_ROOT / "engine" / "evals" / "data" / f"{name}.jsonl"
                         for name in ("in_domain", "off_topic", "bias_pairs"))
HELD_OUT_CHATS_PATH = _REPO_ROOT / "engine" / "demo" / "heldout.jsonl"
# Public tweets labelled hate speech / offensive / neither (t-davidson/hate-speech-and-offensive-language, MIT):
# read from the shared data folder beside the repository when it is there, never shipped.
DAVIDSON_PATH = _REPO_ROOT.parent / "shared" / "data" / "toxicity_dev_davidson.csv"
# Candidate thresholds: fine steps where the offline model's scores crowd (near 0), coarser above.
_ORDINARY_GRID: tuple[float, ...] = tuple(
    [k / 1000 for k in range(5, 100, 5)] + [k / 100 for k in range(10, 100)]
)


@dataclass(frozen=True)
class OrdinaryText:
    """A text of ordinary support traffic: a prompt or an answer, where it comes from, and its split.

    Prompts are split by a hash of the text: ``tune`` (thresholds are chosen on these) or ``report`` (the numbers
    are reported on these). Outputs (the corpus answers and splices of two of their sentences, how a small model
    garbles) are only reported. ``group``: ``corpus`` (templated) or ``hand-written`` (the evaluation suites, the
    held-out chats, the system prompts): the budget holds for each.
    """

    text: str
    direction: str
    source: str
    split: str

    @property
    def group(self) -> str:
        return "corpus" if self.source == "corpus" else "hand-written"


def _hash_split(text: str) -> str:
    return "tune" if hashlib.sha256(text.encode("utf-8")).digest()[0] % 2 == 0 else "report"


def ordinary_traffic(dialogues: int = ORDINARY_DIALOGUES, *, seed: int = 0,
                     splices: int = ORDINARY_SPLICES) -> list[OrdinaryText]:
    """Ordinary support traffic, deduplicated: the corpus' user turns (``dialogues`` dialogues of ``seed``), the
    evaluation suites in_domain, off_topic and bias_pairs, the held-out chats' user turns and the corpus' system
    prompts as prompts; the corpus answers and ``splices`` splices of two answer sentences as outputs."""
    import random

    from engine.demo.corpus import INTENTS, REFUSAL, SYSTEM_PROMPTS, build_corpus
    from engine.safety.chunking import sentence_spans

    out: list[OrdinaryText] = []
    seen: set[tuple[str, str]] = set()

    def add(text: str, direction: str, source: str, split: str) -> None:
        if text.strip() and (direction, text) not in seen:
            seen.add((direction, text))
            out.append(OrdinaryText(text, direction, source, split))

    for dialogue in build_corpus(dialogues, seed=seed):
        for role, content in dialogue.messages:
            if role == "user":
                add(content, "prompt", "corpus", _hash_split(content))
    for path in EVAL_SUITE_FILES:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                prompt = json.loads(line)["prompt"]
                add(prompt, "prompt", path.stem, _hash_split(prompt))
    for line in HELD_OUT_CHATS_PATH.read_text(encoding="utf-8").splitlines():
        if line.strip():
            for message in json.loads(line)["messages"]:
                if message["role"] == "user":
                    add(message["content"], "prompt", "heldout", _hash_split(message["content"]))
    for text in SYSTEM_PROMPTS:
        add(text, "prompt", "system_prompts", _hash_split(text))
    answers = list(dict.fromkeys([intent.answer for intent in INTENTS] + [REFUSAL]))
    for text in answers:
        add(text, "output", "corpus_answers", "report")
    sentences = [a[start:end].strip() for a in answers for start, end in sentence_spans(a)]
    rng = random.Random(seed)
    for _ in range(splices):
        first, second = (s.split() for s in rng.sample(sentences, 2))
        text = " ".join(first[: rng.randint(1, len(first))] + second[rng.randrange(len(second)):])
        add(text, "output", "answer_splices", "report")
    return out


def load_davidson(path: Path | str = DAVIDSON_PATH) -> list[tuple[str, bool]]:
    """Davidson et al.'s tweets as ``(text, toxic)``: class 0 (hate speech) and 1 (offensive) are toxic, 2 not."""
    with Path(path).open(encoding="utf-8", newline="") as f:
        return [(row["tweet"], row["class"] in ("0", "1")) for row in csv.DictReader(f)]


def acting_thresholds(policy: Any, kind: str, direction: str) -> dict[str, tuple[float, str]]:
    """``{label: (threshold, action)}`` of the toxicity labels the policy flags or blocks for detector ``kind``."""
    out = {}
    for label in DETECTOR_LABELS[kind]:
        _, rule = policy.rule_for(direction, label)
        if rule.action in ("flag", "block") and not rule.monitor_only:
            table = policy.detector_thresholds.get(kind, {}).get(direction, {})
            out[label] = (table.get(label, rule.threshold), rule.action)
    return out


def _acted(scores: Sequence[Mapping[str, float]], thresholds: Mapping[str, float]) -> list[bool]:
    return [any(s.get(label, 0.0) >= t for label, t in thresholds.items()) for s in scores]


def _rate(hits: Sequence[bool]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None


def choose_ordinary_thresholds(
    ordinary: Mapping[str, Sequence[Mapping[str, float]]],
    toxic: Sequence[Mapping[str, float]],
    start: Mapping[str, float],
    *,
    fixed: Mapping[str, float] | None = None,
    max_flagged: float = ORDINARY_MAX_FLAGGED,
    others: Sequence[Mapping[str, float]] | None = None,
) -> dict[str, float]:
    """Flag thresholds (moved from ``start``) that flag at most ``max_flagged`` of each group of ``ordinary`` texts
    and as many ``toxic`` texts as they can; a text counts once, whichever label caught it.

    ``fixed`` thresholds (blocks) are not moved but count among the flags. Greedy, on a grid: while a group is over
    budget, raise the label whose next step loses the fewest toxic texts per label hit it removes from the ordinary
    texts of the groups over budget; then, while
    every group stays within budget, lower the label whose step gains the most toxic texts per ordinary text added
    (the groups' shares averaged). Each group must hold: a small hand-written group may not hide behind a large
    templated one. With ``others`` (labelled texts that are not toxic, such as Davidson's "neither" tweets), a step
    down is taken only when it catches more ``toxic`` texts than it flags ``others``: below that point the flags
    are more often wrong than right, whatever the budget of ordinary prompts still allows.
    """
    thresholds = dict(start)
    fixed = dict(fixed or {})
    labels = list(thresholds)
    names = list(dict.fromkeys([*labels, *fixed]))
    moving = np.array([name in thresholds for name in names])

    def matrix(texts: Sequence[Mapping[str, float]]) -> npt.NDArray[np.float64]:
        return np.array([[s.get(name, 0.0) for name in names] for s in texts], dtype=np.float64).reshape(-1, len(names))

    groups = [matrix(g) for g in ordinary.values() if g]
    toxic_m = matrix(toxic)
    others_m = matrix(others) if others is not None else None

    def vector(th: Mapping[str, float]) -> npt.NDArray[np.float64]:
        merged = {**fixed, **th}
        return np.array([merged[name] for name in names], dtype=np.float64)

    def count(m: npt.NDArray[np.float64], th: Mapping[str, float]) -> int:
        return int((m >= vector(th)).any(axis=1).sum())

    def rate(m: npt.NDArray[np.float64], th: Mapping[str, float]) -> float:
        return count(m, th) / max(1, len(m))

    def excess(th: Mapping[str, float]) -> float:
        return sum(max(0.0, rate(g, th) - max_flagged) for g in groups)

    def mean_rate(th: Mapping[str, float]) -> float:
        return sum(rate(g, th) for g in groups) / max(1, len(groups))

    def hits(th: Mapping[str, float], over: Sequence[npt.NDArray[np.float64]]) -> int:
        # Label hits on the ordinary texts of the groups over budget: a text flagged by two labels needs both
        # raised, and each raise counts as progress.
        v = vector(th)
        return sum(int((g[:, moving] >= v[moving]).sum()) for g in over)

    while excess(thresholds) > 0:
        recall = rate(toxic_m, thresholds)
        over = [g for g in groups if rate(g, thresholds) > max_flagged]
        now = hits(thresholds, over)
        best: tuple[float, float, dict[str, float]] | None = None
        for label in labels:
            for value in (v for v in _ORDINARY_GRID if v > thresholds[label]):
                candidate = {**thresholds, label: value}
                removed = now - hits(candidate, over)
                if removed > 0:
                    key = ((recall - rate(toxic_m, candidate)) / removed, -float(removed))
                    if best is None or key < best[:2]:
                        best = (*key, candidate)
                    break
        if best is None:
            break
        thresholds = best[2]
    while True:
        fp, caught = mean_rate(thresholds), count(toxic_m, thresholds)
        flagged_others = count(others_m, thresholds) if others_m is not None else 0
        gain_best: tuple[float, float, dict[str, float]] | None = None
        for label in labels:
            for value in (v for v in reversed(_ORDINARY_GRID) if v < thresholds[label]):
                candidate = {**thresholds, label: value}
                if excess(candidate) > 0:
                    break
                gained = count(toxic_m, candidate) - caught
                if gained > 0:
                    if others_m is not None and count(others_m, candidate) - flagged_others >= gained:
                        break
                    added = mean_rate(candidate) - fp
                    key = (gained / added if added > 0 else float("inf"), float(gained))
                    if gain_best is None or key > gain_best[:2]:
                        gain_best = (*key, candidate)
                    break
        if gain_best is None:
            return thresholds
        thresholds = gain_best[2]


def _found(findings: Iterable[Finding]) -> dict[str, float]:
    return {f.label: f.score for f in findings}


def _rates(
    prompt_th: Mapping[str, float],
    output_th: Mapping[str, float],
    traffic: Sequence[OrdinaryText],
    traffic_scores: Sequence[Mapping[str, float]],
    toxic_sets: Mapping[str, tuple[Sequence[Mapping[str, float]], Sequence[bool]]],
) -> dict[str, Any]:
    """Flagged-or-blocked shares at these thresholds: ordinary prompts per split and group (and per source on the
    report split), outputs per source, and for each labelled set the recall on its toxic texts and the share of its
    other texts flagged (all as prompts)."""
    def share(direction: str, *, split: str | None = None, group: str | None = None,
              source: str | None = None) -> float | None:
        th = prompt_th if direction == "prompt" else output_th
        picked = [s for t, s in zip(traffic, traffic_scores, strict=True) if t.direction == direction
                  and split in (None, t.split) and group in (None, t.group) and source in (None, t.source)]
        return _rate(_acted(picked, th))

    prompts = [t for t in traffic if t.direction == "prompt"]
    groups = list(dict.fromkeys(t.group for t in prompts))
    out: dict[str, Any] = {
        "ordinary_prompts": {
            split: {"all": share("prompt", split=split), **{g: share("prompt", split=split, group=g) for g in groups}}
            for split in SPLITS_ORDINARY
        },
        "ordinary_prompts_report_by_source": {
            src: share("prompt", split="report", source=src) for src in dict.fromkeys(t.source for t in prompts)
        },
        "ordinary_outputs_by_source": {
            src: share("output", source=src)
            for src in dict.fromkeys(t.source for t in traffic if t.direction == "output")
        },
    }
    for name, (scores, toxic) in toxic_sets.items():
        hits = _acted(scores, prompt_th)
        out[name] = {
            "recall": _rate([h for h, t in zip(hits, toxic, strict=True) if t]),
            "others_flagged": _rate([h for h, t in zip(hits, toxic, strict=True) if not t]),
        }
    return out


SPLITS_ORDINARY: tuple[str, ...] = ("tune", "report")


def ordinary_report(
    scanner: ToxicityScanner | None = None,
    *,
    policy_path: Path | str | None = None,
    max_flagged: float = ORDINARY_MAX_FLAGGED,
    dialogues: int = ORDINARY_DIALOGUES,
    davidson_path: Path | str | None = DAVIDSON_PATH,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """How often the toxicity detector's thresholds flag ordinary support traffic, and the thresholds to choose.

    Scans :func:`ordinary_traffic`, the labelled set (``toxicity_eval.jsonl``) and, when the file is there,
    Davidson's tweets; reports, at the policy's thresholds for this detector (``policy_path``, default the shipped
    policy) and at thresholds chosen by :func:`choose_ordinary_thresholds` (tuned on the ordinary prompts of the
    ``tune`` split, the labelled set's tune half and Davidson's tune half, prompt flag rules only; blocks stay), the
    share of ordinary prompts flagged or blocked per split and source, of ordinary outputs per source, and the recall
    on toxic texts (Davidson's: its report half).
    """
    from engine.safety.policy import DEFAULT_POLICY_PATH, Policy

    say = progress or (lambda message: None)
    if scanner is None:
        scanner = load_toxicity(ToxicityConfig(allow_download=False)).scanner
    policy = Policy.load(policy_path or DEFAULT_POLICY_PATH)
    traffic = ordinary_traffic(dialogues)
    say(f"scanning {len(traffic)} ordinary texts")
    traffic_scores = [_found(scanner.scan(t.text)) for t in traffic]
    rows = load_eval_set()
    say(f"scanning {len(rows)} labelled texts")
    eval_scores = [_found(scanner.scan(r.text)) for r in rows]
    toxic_sets: dict[str, tuple[Sequence[Mapping[str, float]], Sequence[bool]]] = {
        f"toxicity_eval_{split}": (
            [s for s, r in zip(eval_scores, rows, strict=True) if r.split == split],
            [bool(r.labels) for r in rows if r.split == split],
        )
        for split in SPLITS
    }
    davidson = None
    davidson_tune: list[tuple[Mapping[str, float], bool]] = []
    if davidson_path is not None and Path(davidson_path).is_file():
        tweets = load_davidson(davidson_path)
        say(f"scanning {len(tweets)} tweets of {Path(davidson_path).name}")
        scored = [(_found(scanner.scan(text)), toxic, _hash_split(text)) for text, toxic in tweets]
        # The tune half helps choose the thresholds; the report half is what the recall is reported on.
        davidson_tune = [(s, toxic) for s, toxic, split in scored if split == "tune"]
        report_half = [(s, toxic) for s, toxic, split in scored if split == "report"]
        toxic_sets["davidson"] = ([s for s, _ in report_half], [t for _, t in report_half])
        davidson = {"path": str(davidson_path), "texts": len(tweets), "toxic": sum(t for _, t in tweets),
                    "tune": len(davidson_tune), "report": len(report_half)}
    prompt = acting_thresholds(policy, scanner.kind, "prompt")
    output = acting_thresholds(policy, scanner.kind, "output")
    prompt_th = {label: t for label, (t, _) in prompt.items()}
    output_th = {label: t for label, (t, _) in output.items()}
    flags = {label: t for label, (t, action) in prompt.items() if action == "flag"}
    blocks = {label: t for label, (t, action) in prompt.items() if action == "block"}
    tune: dict[str, list[Mapping[str, float]]] = {}
    for t, s in zip(traffic, traffic_scores, strict=True):
        if t.direction == "prompt" and t.split == "tune":
            tune.setdefault(t.group, []).append(s)
    toxic_tune: list[Mapping[str, float]] = [
        s for s, r in zip(eval_scores, rows, strict=True) if r.split == "tune" and r.labels
    ]
    toxic_tune += [s for s, toxic in davidson_tune if toxic]
    others_tune = [s for s, toxic in davidson_tune if not toxic] if davidson_tune else None
    chosen = choose_ordinary_thresholds(tune, toxic_tune, flags, fixed=blocks, max_flagged=max_flagged,
                                        others=others_tune)
    return {
        "detector": scanner.kind,
        "version": scanner.version,
        "policy": policy.version,
        "max_flagged": max_flagged,
        "texts": {
            "prompts": {split: {g: sum(t.direction == "prompt" and t.split == split and t.group == g
                                       for t in traffic) for g in ("corpus", "hand-written")}
                        for split in SPLITS_ORDINARY},
            "outputs": sum(t.direction == "output" for t in traffic),
            "davidson": davidson,
        },
        "tuned_on": "ordinary prompts of the tune split (by a hash of the text; at most max_flagged of each group), "
                    "toxicity_eval.jsonl's tune half (recall) and Davidson's tune half (recall; a threshold goes "
                    "down only while it catches more hate/offensive tweets than it flags 'neither' ones)",
        "reported_on": "ordinary prompts of the report split, the outputs, toxicity_eval.jsonl's test half, "
                       "Davidson's report half",
        "policy_thresholds": {"prompt": prompt_th, "output": output_th, "prompt_blocks": sorted(blocks)},
        "at_policy": _rates(prompt_th, output_th, traffic, traffic_scores, toxic_sets),
        "chosen": {"prompt": {**chosen, **blocks}},
        "at_chosen": _rates({**chosen, **blocks}, output_th, traffic, traffic_scores, toxic_sets),
    }
