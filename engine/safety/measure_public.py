"""The scanners measured on labelled data nobody here wrote: what the chat service would store, span by span.

``llm-console eval safety --dataset KIND FILE`` prints these reports. Kinds:

``presidio-synth``
    microsoft/presidio-research's ``synth_dataset_v2.json`` format: a JSON list of ``{"full_text", "spans":
    [{"entity_type", "entity_value", "start_position", "end_position"}]}``.
``pii-jsonl``
    anyone's own PII data, one JSON object a line: ``{"text", "spans": [{"label", "start", "end"}]}`` (the
    presidio-research names ``entity_type``/``start_position``/``end_position`` are accepted too).
``davidson``
    t-davidson/hate-speech-and-offensive-language's ``labeled_data.csv``: ``class`` 0 hate speech, 1 offensive,
    2 neither; ``tweet``.
``toxicity-jsonl``
    one JSON object a line: ``{"text", "label": 0 or 1}`` (1 toxic), or ``{"text", "labels": [...]}`` with the
    scanner's label names (an empty list is a benign text).

**PII: the stored-text measure.** Each text goes through the path the chat service stores: the PII scanner, the
default policy's stored redactions (``Policy.stored_redactions``) and ``redact``. A gold value is *found* when a
stored cut overlaps it, and *leaked* when any letter or digit of it is left in the stored text (a value cut in part
is found and leaked). The headline kinds are the personal values of :data:`PERSONAL_KINDS`; GPE (bare place names,
which ``redact_places = "personal"`` keeps by design) and the other labelled kinds of the file are reported apart.
A stored cut *hits no personal value* when it overlaps no gold span of a personal kind, GPE or ZIP code; the share
of such cuts is the precision figure.

**Toxicity.** Every text's score per label of the loaded toxicity scanner (as the chat path loads it), and the ROC
AUC of each label on each task: for Davidson, hate vs neither, offensive vs neither, hate-or-offensive vs neither
and hate vs the rest; for JSONL, toxic vs benign per label given.

**Splits.** Every text belongs to the ``tune`` or the ``report`` half by a hash of its text (:func:`split_of`).
Thresholds and recognizers are tuned on ``tune`` and the ``report`` half is only reported on; ``all`` (the
default) is what a new data set is measured on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.safety.base import Finding

if TYPE_CHECKING:
    from engine.safety.pii import PresidioScanner
    from engine.safety.policy import Policy
    from engine.safety.toxicity import ToxicityScanner

_SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
PRESIDIO_SYNTH_DEV_PATH = _SHARED_DATA / "pii_dev_presidio_synth.json"
DAVIDSON_DEV_PATH = _SHARED_DATA / "toxicity_dev_davidson.csv"

PII_KINDS: tuple[str, ...] = ("presidio-synth", "pii-jsonl")
TOXICITY_KINDS: tuple[str, ...] = ("davidson", "toxicity-jsonl")
DATASET_KINDS: tuple[str, ...] = (*PII_KINDS, *TOXICITY_KINDS)
SPLITS: tuple[str, ...] = ("tune", "report", "all")

# The personal values the headline figures count (presidio-research's names).
PERSONAL_KINDS: tuple[str, ...] = (
    "PERSON", "STREET_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "EMAIL_ADDRESS", "IBAN_CODE", "US_SSN", "IP_ADDRESS",
)
# Place parts of an address: a cut on them is on a personal value, but they are not counted in the headline.
PLACE_KINDS: tuple[str, ...] = ("GPE", "ZIP_CODE")
# Our scanner's labels -> presidio-research's, so JSONL files may use either.
_ALIASES = {"ADDRESS": "STREET_ADDRESS", "LOCATION": "GPE", "PHONE": "PHONE_NUMBER", "EMAIL": "EMAIL_ADDRESS",
            "IBAN": "IBAN_CODE", "SSN": "US_SSN", "IP": "IP_ADDRESS", "CARD": "CREDIT_CARD"}


class DatasetError(ValueError):
    """A data file that cannot be read as the kind it was given as; the message names the file and the place."""


def split_of(text: str) -> str:
    """``tune`` or ``report``: the half a text belongs to, by the first byte of its SHA-256."""
    return "tune" if hashlib.sha256(text.encode("utf-8")).digest()[0] % 2 == 0 else "report"


def _in_split(text: str, split: str) -> bool:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    return split == "all" or split_of(text) == split


# --- PII data ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoldSpan:
    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class PiiSample:
    text: str
    spans: tuple[GoldSpan, ...]


def _span(where: str, text: str, raw: Any) -> GoldSpan:
    if not isinstance(raw, Mapping):
        raise DatasetError(f"{where}: a span must be an object, not {type(raw).__name__}")
    kind = raw.get("label", raw.get("entity_type"))
    start = raw.get("start", raw.get("start_position"))
    end = raw.get("end", raw.get("end_position"))
    if not isinstance(kind, str) or not kind.strip():
        raise DatasetError(f"{where}: a span needs a label (or entity_type)")
    if not isinstance(start, int) or not isinstance(end, int) or isinstance(start, bool) or isinstance(end, bool):
        raise DatasetError(f"{where}: a span needs whole-number start and end (or start_position/end_position)")
    if not 0 <= start < end <= len(text):
        raise DatasetError(f"{where}: span {start}..{end} is outside the text (length {len(text)})")
    label = kind.strip().upper()
    return GoldSpan(_ALIASES.get(label, label), start, end)


def _sample(where: str, raw: Any, text_key: str) -> PiiSample:
    if not isinstance(raw, Mapping):
        raise DatasetError(f"{where}: each item must be an object, not {type(raw).__name__}")
    text = raw.get(text_key)
    if not isinstance(text, str):
        raise DatasetError(f"{where}: {text_key!r} (the text) is missing or not a string")
    spans = raw.get("spans", [])
    if not isinstance(spans, list):
        raise DatasetError(f"{where}: 'spans' must be a list")
    return PiiSample(text, tuple(_span(f"{where} span {k + 1}", text, s) for k, s in enumerate(spans)))


def _read_text(path: Path | str, newline: str | None = None) -> str:
    try:
        with Path(path).open(encoding="utf-8", newline=newline) as f:
            return f.read()
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot be read as UTF-8 text: {exc}") from None


def load_presidio_synth(path: Path | str) -> list[PiiSample]:
    """presidio-research's synthetic set (a JSON list of ``full_text`` + ``spans``)."""
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of texts, found {type(data).__name__}")
    return [_sample(f"{path}: item {i + 1}", raw, "full_text") for i, raw in enumerate(data)]


def _jsonl(path: Path | str) -> Iterable[tuple[str, Any]]:
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not JSON ({exc.msg})") from None


def load_pii_jsonl(path: Path | str) -> list[PiiSample]:
    """One ``{"text", "spans": [{"label", "start", "end"}]}`` a line."""
    return [_sample(where, raw, "text") for where, raw in _jsonl(path)]


def load_pii(kind: str, path: Path | str) -> list[PiiSample]:
    if kind == "presidio-synth":
        samples = load_presidio_synth(path)
    elif kind == "pii-jsonl":
        samples = load_pii_jsonl(path)
    else:
        raise ValueError(f"not a PII data kind: {kind!r} (one of {', '.join(PII_KINDS)})")
    if not samples:
        raise DatasetError(f"{path}: no texts")
    return samples


# --- PII scoring ---------------------------------------------------------------------------------------------


@dataclass
class KindCounts:
    gold: int = 0
    found: int = 0
    leaked: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"gold": self.gold, "found": self.found, "leaked": self.leaked,
                "recall": round(self.found / self.gold, 4) if self.gold else None,
                "leak_rate": round(self.leaked / self.gold, 4) if self.gold else None}


@dataclass
class PiiPublicScore:
    per_kind: dict[str, KindCounts] = field(default_factory=dict)
    cuts: int = 0
    cuts_on_personal: int = 0
    cuts_on_other_labelled: int = 0
    cuts_by_label: dict[str, list[int]] = field(default_factory=dict)  # label -> [cuts, on no personal value]
    misses: list[dict[str, Any]] = field(default_factory=list)
    false_cuts: list[dict[str, Any]] = field(default_factory=list)

    def overall(self) -> KindCounts:
        total = KindCounts()
        for kind in PERSONAL_KINDS:
            c = self.per_kind.get(kind)
            if c is not None:
                total.gold += c.gold
                total.found += c.found
                total.leaked += c.leaked
        return total


def _covered(text: str, cuts: Sequence[Finding]) -> list[bool]:
    mask = [False] * len(text)
    for f in cuts:
        assert f.start is not None and f.end is not None
        for i in range(max(f.start, 0), min(f.end, len(text))):
            mask[i] = True
    return mask


def score_sample(score: PiiPublicScore, sample: PiiSample, cuts: Sequence[Finding], stored: str, *,
                 keep_examples: int = 0) -> None:
    """Add one text's stored cuts to ``score``."""
    text = sample.text
    mask = _covered(text, cuts)
    for g in sample.spans:
        c = score.per_kind.setdefault(g.kind, KindCounts())
        c.gold += 1
        found = any(mask[g.start:g.end])
        leaked = any(ch.isalnum() and not mask[i] for i, ch in enumerate(text[g.start:g.end], start=g.start))
        c.found += found
        c.leaked += leaked
        if leaked and g.kind in PERSONAL_KINDS and len(score.misses) < keep_examples:
            score.misses.append({"kind": g.kind, "value": text[g.start:g.end], "found": found, "text": text,
                                 "stored": stored})
    personal = [g for g in sample.spans if g.kind in PERSONAL_KINDS or g.kind in PLACE_KINDS]
    for f in cuts:
        assert f.start is not None and f.end is not None
        score.cuts += 1
        row = score.cuts_by_label.setdefault(f.label, [0, 0])
        row[0] += 1
        if any(g.start < f.end and f.start < g.end for g in personal):
            score.cuts_on_personal += 1
            continue
        row[1] += 1
        if any(g.start < f.end and f.start < g.end for g in sample.spans):
            score.cuts_on_other_labelled += 1
        if len(score.false_cuts) < keep_examples:
            score.false_cuts.append({"label": f.label, "cut": text[f.start:f.end], "text": text})


def _percentiles(ms: Sequence[float]) -> dict[str, float | None]:
    if not ms:
        return {"p50": None, "p95": None}
    ordered = sorted(ms)
    return {"p50": round(ordered[len(ordered) // 2], 2), "p95": round(ordered[min(len(ordered) - 1,
                                                                                  int(len(ordered) * 0.95))], 2)}


def pii_public_report(
    samples: Sequence[PiiSample],
    *,
    scanner: PresidioScanner | None = None,
    policy: Policy | None = None,
    split: str = "all",
    examples: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Scan and store ``samples`` (those of ``split``) as the chat service would, and score the stored text."""
    from engine.safety.measure_pii import stored_text, versions
    from engine.safety.pii import PresidioScanner
    from engine.safety.policy import DEFAULT_POLICY_PATH, Policy

    chosen = [s for s in samples if _in_split(s.text, split)]
    if not chosen:
        raise DatasetError(f"no texts in the {split!r} split")
    began = time.perf_counter()
    scanner = scanner or PresidioScanner()
    policy = policy or Policy.load(DEFAULT_POLICY_PATH)
    score = PiiPublicScore()
    scan_ms: list[float] = []
    for i, sample in enumerate(chosen):
        t0 = time.perf_counter()
        findings = scanner.scan(sample.text)
        scan_ms.append((time.perf_counter() - t0) * 1000.0)
        stored, cuts = stored_text(policy, sample.text, findings)
        score_sample(score, sample, cuts, stored, keep_examples=examples)
        if progress is not None and (i + 1) % 100 == 0:
            progress(i + 1, len(chosen))
    overall = score.overall()
    report: dict[str, Any] = {
        "split": split,
        "texts": len(chosen),
        "policy": {"version": policy.version, "redact_places": policy.redact_places},
        "versions": versions(scanner),
        "overall": overall.as_dict(),
        "per_kind": {k: score.per_kind[k].as_dict() for k in PERSONAL_KINDS if k in score.per_kind},
        "apart": {k: score.per_kind[k].as_dict() for k in sorted(score.per_kind) if k not in PERSONAL_KINDS},
        "cuts": {
            "total": score.cuts,
            "on_personal_value": score.cuts_on_personal,
            "on_no_personal_value": score.cuts - score.cuts_on_personal,
            "on_other_labelled_value": score.cuts_on_other_labelled,
            "share_on_no_personal_value": round((score.cuts - score.cuts_on_personal) / score.cuts, 4)
            if score.cuts else None,
            "by_label": {label: {"cuts": v[0], "on_no_personal_value": v[1]}
                         for label, v in sorted(score.cuts_by_label.items())},
        },
        "scan_ms": _percentiles(scan_ms),
        "seconds": round(time.perf_counter() - began, 1),
    }
    if examples:
        report["misses"] = score.misses
        report["false_cuts"] = score.false_cuts
    return report


# --- toxicity data -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToxicitySample:
    text: str
    # Davidson: "hate" / "offensive" / "neither". JSONL: the labels that apply ("toxic" for label 1).
    classes: frozenset[str]


DAVIDSON_CLASSES = {"0": "hate", "1": "offensive", "2": "neither"}


def load_davidson_classes(path: Path | str) -> list[ToxicitySample]:
    """Davidson et al.'s tweets with their class (``hate``, ``offensive`` or ``neither``)."""
    rows: list[ToxicitySample] = []
    # newline="" keeps the line breaks inside quoted tweets (the text, and so its half, as written).
    reader = csv.DictReader(io.StringIO(_read_text(path, newline=""), newline=""))
    if reader.fieldnames is None or not {"class", "tweet"} <= set(reader.fieldnames):
        raise DatasetError(f"{path}: expected a CSV with the columns 'class' and 'tweet' (Davidson et al.'s "
                           f"labeled_data.csv), found {reader.fieldnames}")
    for number, row in enumerate(reader, start=2):
        cls = DAVIDSON_CLASSES.get((row.get("class") or "").strip())
        tweet = row.get("tweet")
        if cls is None or not tweet:
            raise DatasetError(f"{path}: row {number}: class must be 0, 1 or 2 and the tweet not empty")
        rows.append(ToxicitySample(tweet, frozenset({cls})))
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return rows


def load_toxicity_jsonl(path: Path | str) -> list[ToxicitySample]:
    """One ``{"text", "label": 0|1}`` or ``{"text", "labels": [...]}`` a line."""
    rows: list[ToxicitySample] = []
    for where, raw in _jsonl(path):
        if not isinstance(raw, Mapping) or not isinstance(raw.get("text"), str) or not raw["text"].strip():
            raise DatasetError(f"{where}: each line needs a non-empty 'text'")
        if "labels" in raw:
            labels = raw["labels"]
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                raise DatasetError(f"{where}: 'labels' must be a list of label names")
            rows.append(ToxicitySample(raw["text"], frozenset(labels)))
        elif raw.get("label") in (0, 1) and not isinstance(raw.get("label"), bool):
            rows.append(ToxicitySample(raw["text"], frozenset({"toxic"}) if raw["label"] == 1 else frozenset()))
        else:
            raise DatasetError(f"{where}: needs 'label' (0 or 1) or 'labels' (a list)")
    if not rows:
        raise DatasetError(f"{path}: no texts")
    return rows


def load_toxicity(kind: str, path: Path | str) -> list[ToxicitySample]:
    if kind == "davidson":
        return load_davidson_classes(path)
    if kind == "toxicity-jsonl":
        return load_toxicity_jsonl(path)
    raise ValueError(f"not a toxicity data kind: {kind!r} (one of {', '.join(TOXICITY_KINDS)})")


def _tasks(kind: str, rows: Sequence[ToxicitySample]) -> dict[str, list[bool | None]]:
    """Each task's positives (True), negatives (False) and texts left out of it (None)."""
    if kind == "davidson":
        def task(pos: set[str], neg: set[str]) -> list[bool | None]:
            return [True if r.classes & pos else False if r.classes & neg else None for r in rows]

        return {
            "hate_or_offensive_vs_neither": task({"hate", "offensive"}, {"neither"}),
            "hate_vs_neither": task({"hate"}, {"neither"}),
            "offensive_vs_neither": task({"offensive"}, {"neither"}),
            "hate_vs_rest": task({"hate"}, {"offensive", "neither"}),
        }
    given = sorted({label for r in rows for label in r.classes})
    tasks: dict[str, list[bool | None]] = {"any_vs_none": [bool(r.classes) for r in rows]}
    for label in given:
        if label != "toxic":
            tasks[f"{label}_vs_none"] = [True if label in r.classes else False if not r.classes else None for r in rows]
    return tasks


def toxicity_public_report(
    kind: str,
    rows: Sequence[ToxicitySample],
    *,
    scanner: ToxicityScanner | None = None,
    split: str = "all",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """ROC AUC of each label of the toxicity scanner (and of their maximum) on each task of ``rows``."""
    from engine.safety.measure_toxicity import roc_auc
    from engine.safety.toxicity import ToxicityConfig
    from engine.safety.toxicity import load_toxicity as load_scanner

    chosen = [r for r in rows if _in_split(r.text, split)]
    if not chosen:
        raise DatasetError(f"no texts in the {split!r} split")
    began = time.perf_counter()
    notice = None
    if scanner is None:
        load = load_scanner(ToxicityConfig(allow_download=False))
        scanner, notice = load.scanner, load.notice
    scores: list[dict[str, float]] = []
    for i, r in enumerate(chosen):
        scores.append({f.label: f.score for f in scanner.scan(r.text)})
        if progress is not None and (i + 1) % 1000 == 0:
            progress(i + 1, len(chosen))
    labels = sorted({label for s in scores for label in s})
    table: dict[str, Any] = {}
    for task, truth in _tasks(kind, chosen).items():
        kept = [i for i, t in enumerate(truth) if t is not None]
        positive = [bool(truth[i]) for i in kept]
        row: dict[str, Any] = {"positives": sum(positive), "negatives": len(positive) - sum(positive), "roc_auc": {}}
        for label in [*labels, "max"]:
            values = [max(scores[i].values(), default=0.0) if label == "max" else scores[i].get(label, 0.0)
                      for i in kept]
            auc = roc_auc(values, positive)
            row["roc_auc"][label] = None if auc is None else round(auc, 4)
        table[task] = row
    return {
        "split": split,
        "texts": len(chosen),
        "detector": getattr(scanner, "kind", None),
        "detector_version": getattr(scanner, "version", None),
        "notice": notice,
        "tasks": table,
        "seconds": round(time.perf_counter() - began, 1),
    }


def public_report(kind: str, path: Path | str, *, split: str = "all", examples: int = 0,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Load ``path`` as ``kind`` and measure the matching scanner on it (see the module's docstring)."""
    if kind in PII_KINDS:
        report = pii_public_report(load_pii(kind, path), split=split, examples=examples, progress=progress)
    elif kind in TOXICITY_KINDS:
        report = toxicity_public_report(kind, load_toxicity(kind, path), split=split, progress=progress)
    else:
        raise ValueError(f"unknown data kind {kind!r}: one of {', '.join(DATASET_KINDS)}")
    return {"dataset": {"kind": kind, "path": str(path)}, **report}
