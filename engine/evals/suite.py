"""Prompt suites: the built-in ones (JSONL files shipped in ``engine/evals/data``) and uploaded ones (JSONL or CSV).

A suite row is one prompt and what it is for:

=================  ==========================================================================================
``id``             unique within the suite (letters, digits, ``.``, ``_``, ``-``, ``:``; up to 100 characters)
``prompt``         the user message sent to the model
``kind``           ``in_domain`` (a support question), ``off_topic`` (should be declined), ``adversarial`` (tries
                   to elicit toxic or PII-leaking output) or ``bias`` (one side of a counterfactual pair)
``expected_topic`` required for ``in_domain`` (one of :data:`TOPICS`); optional for ``bias``; else empty
``pair_id``        ``bias`` only: rows sharing it differ only in an identity term
``group``          ``bias`` only: the identity term this row uses (``woman``, ``Muslim``, ``78``...)
``attribute``      ``bias`` only, optional: what the term is about (``gender``, ``religion``, ``age``...)
=================  ==========================================================================================

Parsing never stops at the first bad row: every malformed row gives an error naming its line (up to
:data:`MAX_ERRORS`), and a suite with any error is refused whole (:class:`SuiteError`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Literal

from engine.demo.corpus import TOPICS as DEMO_TOPICS

Kind = Literal["in_domain", "off_topic", "adversarial", "bias"]
KINDS: tuple[str, ...] = ("in_domain", "off_topic", "adversarial", "bias")
# The topics an in-domain answer is classified into (the demo support models' topics, see engine.demo.corpus).
TOPICS: tuple[str, ...] = tuple(t for t in DEMO_TOPICS if t != "out_of_domain")
FIELDS: tuple[str, ...] = ("id", "prompt", "kind", "expected_topic", "pair_id", "group", "attribute")
REQUIRED_FIELDS: tuple[str, ...] = ("id", "prompt", "kind")

MAX_ERRORS = 50
MAX_ROWS = 2000
MAX_BYTES = 2_000_000
MAX_PROMPT_CHARS = 4000
MAX_FIELD_CHARS = 100

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
_SUITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

# Built-in suites: name -> data files; "standard" is all of them, the one a promotion request should carry.
BUILTIN_FILES: dict[str, tuple[str, ...]] = {
    "standard": ("in_domain.jsonl", "off_topic.jsonl", "adversarial.jsonl", "bias_pairs.jsonl"),
    "in-domain": ("in_domain.jsonl",),
    "off-topic": ("off_topic.jsonl",),
    "adversarial": ("adversarial.jsonl",),
    "bias-pairs": ("bias_pairs.jsonl",),
}
BUILTIN_DESCRIPTIONS: dict[str, str] = {
    "standard": "All built-in prompts: support questions, off-topic, adversarial and bias pairs.",
    "in-domain": "Support questions with the topic a right answer is about.",
    "off-topic": "Questions outside the support domain that the model should decline.",
    "adversarial": "Prompts that try to get toxic output or someone's personal data.",
    "bias-pairs": "Pairs of prompts that differ only in an identity term.",
}
DEFAULT_SUITE = "standard"


@dataclass(frozen=True)
class SuiteRecord:
    """One prompt of a suite (see the module docstring for the fields)."""

    id: str
    prompt: str
    kind: str
    expected_topic: str | None = None
    pair_id: str | None = None
    group: str | None = None
    attribute: str | None = None

    def as_dict(self) -> dict[str, str]:
        """The record as a JSON object without its empty fields (the JSONL shape)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Suite:
    """A validated suite: a name, its records in file order, and the SHA-256 of its canonical JSONL form."""

    name: str
    records: tuple[SuiteRecord, ...]
    builtin: bool = False

    @property
    def sha256(self) -> str:
        """Hash of the records (not of the uploaded bytes), so the same prompts give the same hash in any format."""
        return hashlib.sha256(self.to_jsonl().encode("utf-8")).hexdigest()

    def counts(self) -> dict[str, int]:
        """Number of records per kind (every kind present, zero if none)."""
        counts = dict.fromkeys(KINDS, 0)
        for r in self.records:
            counts[r.kind] += 1
        return counts

    def to_jsonl(self) -> str:
        """The records as JSONL (sorted keys), the form the hash covers."""
        return "".join(json.dumps(r.as_dict(), sort_keys=True, ensure_ascii=False) + "\n" for r in self.records)

    def __len__(self) -> int:
        return len(self.records)


class SuiteError(ValueError):
    """A suite could not be used; ``errors`` lists every problem found, each naming its line where it has one."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: tuple[str, ...] = tuple(errors)
        super().__init__("\n".join(self.errors))


class _Errors:
    """Collects line-numbered errors up to MAX_ERRORS and counts the rest."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.dropped = 0

    def add(self, line: int | None, message: str) -> None:
        if len(self.items) >= MAX_ERRORS:
            self.dropped += 1
            return
        self.items.append(f"line {line}: {message}" if line is not None else message)

    def __bool__(self) -> bool:
        return bool(self.items)

    def final(self) -> list[str]:
        extra = [f"... and {self.dropped} more error(s)"] if self.dropped else []
        return self.items + extra


def _text(value: Any) -> str | None:
    """A field's value as stripped text; None when absent or empty. Numbers are accepted as text (ids, ages)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError
    text = str(value).strip()
    return text or None


def _record(raw: Mapping[str, Any], line: int, errors: _Errors) -> SuiteRecord | None:
    """Check one row; report each problem with its line; the record if the row is good."""
    before = len(errors.items) + errors.dropped
    unknown = sorted(k for k in raw if k not in FIELDS)
    if unknown:
        errors.add(line, f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(FIELDS)}")
    values: dict[str, str | None] = {}
    mistyped: set[str] = set()
    for name in FIELDS:
        try:
            values[name] = _text(raw.get(name))
        except TypeError:
            errors.add(line, f"{name} must be text, got {type(raw.get(name)).__name__}")
            values[name] = None
            mistyped.add(name)
    for name in REQUIRED_FIELDS:
        if name not in raw:
            errors.add(line, f"{name} is missing")
        elif values[name] is None and name not in mistyped:
            errors.add(line, f"{name} is empty")
    rid, prompt, kind = values["id"], values["prompt"], values["kind"]
    if rid is not None and not _ID.match(rid):
        errors.add(line, f"id {rid[:40]!r} must be 1-100 letters, digits, '.', '_', ':' or '-'")
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        errors.add(line, f"prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    for name in ("expected_topic", "pair_id", "group", "attribute"):
        value = values[name]
        if value is not None and len(value) > MAX_FIELD_CHARS:
            errors.add(line, f"{name} has {len(value)} characters; the limit is {MAX_FIELD_CHARS}")
    if kind is not None and kind not in KINDS:
        errors.add(line, f"kind {kind[:40]!r} is not one of {', '.join(KINDS)}")
    topic = values["expected_topic"]
    if kind == "in_domain" and topic is None:
        errors.add(line, "expected_topic is required for in_domain rows")
    if topic is not None:
        if kind in ("off_topic", "adversarial"):
            errors.add(line, f"expected_topic is only for in_domain and bias rows, not {kind}")
        elif topic not in TOPICS:
            errors.add(line, f"expected_topic {topic[:40]!r} is not one of {', '.join(TOPICS)}")
    if kind == "bias":
        for name in ("pair_id", "group"):
            if values[name] is None:
                errors.add(line, f"{name} is required for bias rows")
    elif kind in KINDS:
        given = [n for n in ("pair_id", "group", "attribute") if values[n] is not None]
        if given:
            errors.add(line, f"{', '.join(given)} only belong to bias rows, not {kind}")
    if len(errors.items) + errors.dropped > before or rid is None or prompt is None or kind is None:
        return None
    return SuiteRecord(rid, prompt, kind, topic, values["pair_id"], values["group"], values["attribute"])


def _check_suite(rows: Iterable[tuple[int, SuiteRecord]], errors: _Errors) -> list[SuiteRecord]:
    """Checks across rows: unique ids, and bias pairs with at least two rows of different groups."""
    records: list[SuiteRecord] = []
    seen: dict[str, int] = {}
    pairs: dict[str, list[tuple[int, SuiteRecord]]] = {}
    for line, record in rows:
        if record.id in seen:
            errors.add(line, f"id {record.id!r} is already used on line {seen[record.id]}")
            continue
        seen[record.id] = line
        records.append(record)
        if record.kind == "bias" and record.pair_id is not None:
            pairs.setdefault(record.pair_id, []).append((line, record))
    for pair_id, members in pairs.items():
        first_line = members[0][0]
        if len(members) < 2:
            errors.add(first_line, f"bias pair {pair_id!r} has only one row; a pair needs two or more groups")
            continue
        groups: dict[str, int] = {}
        for line, record in members:
            assert record.group is not None  # checked per row
            if record.group in groups:
                errors.add(line, f"bias pair {pair_id!r} uses group {record.group!r} twice (also line {groups[record.group]})")
            groups.setdefault(record.group, line)
        attributes = {r.attribute for _, r in members}
        if len(attributes) > 1:
            errors.add(first_line, f"bias pair {pair_id!r} mixes attributes {sorted(a or '' for a in attributes)}")
    return records


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        if len(data.encode("utf-8")) > MAX_BYTES:
            raise SuiteError([f"The suite is larger than {MAX_BYTES // 1_000_000} MB."])
        return data
    if len(data) > MAX_BYTES:
        raise SuiteError([f"The suite is larger than {MAX_BYTES // 1_000_000} MB."])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SuiteError([f"line {line}: not UTF-8 text (byte {exc.start})"]) from None


def _jsonl_rows(text: str, errors: _Errors) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.add(line_no, f"not valid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(value, dict):
            errors.add(line_no, f"expected a JSON object, got {type(value).__name__}")
            continue
        yield line_no, value


def _csv_rows(text: str, errors: _Errors) -> Iterator[tuple[int, Mapping[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        errors.add(1, f"unreadable CSV header: {exc}")
        return
    columns = [h.strip().lstrip("\ufeff") for h in header]
    unknown = [c for c in columns if c not in FIELDS]
    missing = [c for c in REQUIRED_FIELDS if c not in columns]
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if unknown or missing or duplicated:
        if unknown:
            errors.add(1, f"unknown column(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(FIELDS)}")
        if missing:
            errors.add(1, f"missing column(s) {', '.join(missing)} in the header row")
        if duplicated:
            errors.add(1, f"column(s) {', '.join(duplicated)} appear more than once in the header row")
        return
    line_no = reader.line_num + 1  # the physical line the next record starts on
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            errors.add(line_no, f"unreadable CSV row: {exc}")
            return
        start, line_no = line_no, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            errors.add(start, f"has {len(row)} cells; the header has {len(columns)}")
            continue
        yield start, {c: v for c, v in zip(columns, row, strict=True) if v.strip() or c in REQUIRED_FIELDS}


def check_suite_name(name: str) -> str:
    """The name stripped, or SuiteError if it is not 1-100 letters, digits, '.', '_' or '-'."""
    name = (name or "").strip()
    if not _SUITE_NAME.match(name):
        raise SuiteError(["A suite name has 1-100 letters, digits, '.', '_' or '-' (e.g. refunds-2026-q4)."])
    return name


def parse_suite(name: str, data: bytes | str, fmt: Literal["jsonl", "csv"]) -> Suite:
    """Parse and validate an uploaded suite (``fmt`` ``jsonl`` or ``csv``); SuiteError lists every problem."""
    name = check_suite_name(name)
    if name in BUILTIN_FILES:
        raise SuiteError([f"{name!r} is the name of a built-in suite; choose another name."])
    if fmt not in ("jsonl", "csv"):
        raise SuiteError([f"Unknown suite format {fmt!r}: use jsonl or csv."])
    text = _decode(data)
    errors = _Errors()
    raw_rows = _jsonl_rows(text, errors) if fmt == "jsonl" else _csv_rows(text, errors)
    checked: list[tuple[int, SuiteRecord]] = []
    count = 0
    for line, raw in raw_rows:
        count += 1
        if count > MAX_ROWS:
            errors.add(line, f"the suite has more than {MAX_ROWS} prompts")
            break
        record = _record(raw, line, errors)
        if record is not None:
            checked.append((line, record))
    records = _check_suite(checked, errors)
    if errors:
        raise SuiteError(errors.final())
    if not records:
        raise SuiteError(["The suite has no prompts."])
    return Suite(name, tuple(records))


def format_of(filename: str) -> Literal["jsonl", "csv"]:
    """The suite format a file name says (``.jsonl``/``.json``/``.ndjson`` or ``.csv``); SuiteError otherwise."""
    lower = (filename or "").lower()
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lower.endswith(".csv"):
        return "csv"
    raise SuiteError([f"{filename!r}: upload a .jsonl or .csv file."])


def builtin_names() -> tuple[str, ...]:
    """The names of the built-in suites, ``standard`` (all of them) first."""
    return tuple(BUILTIN_FILES)


def load_builtin(name: str) -> Suite:
    """A built-in suite by name; KeyError for an unknown one. The shipped files are validated like uploads."""
    files = BUILTIN_FILES[name]
    text = "".join(resources.files("engine.evals").joinpath("data", f).read_text(encoding="utf-8") for f in files)
    errors = _Errors()
    checked = [(line, r) for line, raw in _jsonl_rows(text, errors) if (r := _record(raw, line, errors)) is not None]
    records = _check_suite(checked, errors)
    if errors:  # a packaging bug, not a user error
        raise ValueError(f"built-in suite {name} is invalid: {errors.final()}")
    return Suite(name, tuple(records), builtin=True)
