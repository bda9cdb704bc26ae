"""Streamed exports (events, exchanges, decisions as CSV, JSON Lines, Parquet), their manifests, the four-eyes
path for raw text, and `llm-console audit export`."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import insert, select, update

from console import cli
from console.services import audit as audit_svc
from console.services import export_approvals as approvals_svc
from console.services import exports as exports_svc
from console.services.access import Principal, os_user
from console.services.errors import (
    AccessDenied,
    InvalidInput,
    NotFound,
    SeparationOfDuties,
    StorageUnavailable,
)
from console.services.exports import ExportFilter, ExportSpec
from console.textsafe import csv_restore, csv_safe
from db import audit as audit_q
from db import exports as exports_q
from db.tables import (
    AuditEvent,
    AuditHead,
    Conversation,
    Exchange,
    ExportRequest,
    Finding,
    ModelVersion,
    RawText,
    ReviewDecision,
    ReviewItem,
)

FORMATS = ("csv", "jsonl", "parquet")
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

# Text that has broken exporters: unicode, line breaks of every kind, separators, quotes, formula starts, NULs.
TRICKY = [
    "héllo wörld ✓ 日本語 🙂 مرحبا",
    "line1\nline2\r\nline3\rend",
    "a,b,c;d\te",
    'say "hi", then ""bye""',
    "=HYPERLINK(\"https://evil.example\",\"x\")",
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)",
    "\tlead tab",
    "\rlead cr",
    "\nlead lf",
    "'=already quoted",
    "''=two quotes",
    "'plain quote",
    "'",
    "nul\x00inside",
    "\ufffd stored nul",
    "",
    " ",
    "\u2028line sep\u2029para sep\x85nel",
    "\\back\\slash \\n not a newline",
]


def exported(value: str | None) -> str | None:
    """What an export holds for a stored text: as stored, a NUL shown as U+FFFD (as the store keeps it)."""
    return None if value is None else value.replace("\x00", "\ufffd")


# --- readers ------------------------------------------------------------------------------------------------


def parse_csv(text: str) -> list[list[str | None]]:
    """RFC 4180 with the export's NULL rule: an unquoted empty field is None, a quoted one ''."""
    records: list[list[str | None]] = []
    record: list[str | None] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == '"':
            i += 1
            parts = []
            while True:
                j = text.index('"', i)
                parts.append(text[i:j])
                i = j + 1
                if i < n and text[i] == '"':
                    parts.append('"')
                    i += 1
                    continue
                break
            value: str | None = "".join(parts)
        else:
            j = i
            while j < n and text[j] not in ",\r\n":
                j += 1
            value = text[i:j] if j > i else None
            i = j
        record.append(value)
        if i < n and text[i] == ",":
            i += 1
            if i == n:
                record.append(None)
            continue
        assert text.startswith("\r\n", i), f"a record must end with CRLF at {i}"
        i += 2
        records.append(record)
        record = []
    return records


def _typed(value: str | None, kind: str) -> Any:
    if value is None:
        return None
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "bool":
        assert value in ("True", "False")
        return value == "True"
    return csv_restore(value)


def read_export(path: Path, fmt: str, what: str, *, include_raw: bool = False) -> list[dict[str, Any]]:
    cols = exports_q.columns(what, include_raw=include_raw)
    data = path.read_bytes()
    if fmt == "csv":
        text = data.decode("utf-8")
        header, *records = parse_csv(text)
        assert header == list(cols)
        # Any ordinary CSV reader sees the same records and fields.
        plain = list(csv.reader(io.StringIO(text, newline="")))
        assert len(plain) == len(records) + 1
        assert [[c or "" for c in r] for r in records] == plain[1:]
        for record in records:  # nothing a spreadsheet would run
            assert not any(c is not None and c.startswith(("=", "+", "-", "@", "\t", "\r", "\n"))
                           for c, kind in zip(record, cols.values(), strict=True) if kind == "str")
        return [{name: _typed(v, kind) for (name, kind), v in zip(cols.items(), r, strict=True)} for r in records]
    if fmt == "jsonl":
        assert data == b"" or data.endswith(b"\n")
        lines = data.split(b"\n")[:-1]
        for line in lines:  # no character any line splitter breaks at
            assert len(line.decode("utf-8").splitlines()) == 1
        rows = [json.loads(line) for line in lines]
        assert all(list(r) == list(cols) for r in rows)
        # JSON values are nested JSON, never text holding JSON; as text (canonical) they are what CSV holds.
        for row in rows:
            for name in exports_q.json_columns(what):
                assert isinstance(row[name], dict | list), (name, row[name])
                row[name] = audit_q.canonical_json(row[name])
        return rows
    table = pq.read_table(path)
    assert table.schema.names == list(cols)
    return table.to_pylist()


# --- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture
def people(ctx):
    """Principals for each role (SSO-only accounts: no password hashing, which is slow and not tested here)."""
    from db import users as users_q

    roles = {"ana": "analyst", "ada": "admin", "abe": "admin", "olga": "operator", "rita": "reviewer"}
    with ctx.db.session() as s:
        made = {name: users_q.create_user(s, name, None, [role]) for name, role in roles.items()}
        return {name: Principal(u.id, u.username, frozenset(u.roles)) for name, u in made.items()}


def _exchange(s, user_id: int, conversation_id: int, **values: Any) -> Exchange:
    fields: dict[str, Any] = {"model_version": "demo-v1", "prompt": "p", "response": "r", "status": "ok",
                              "created_at": T0}
    fields.update(values)
    exchange = Exchange(conversation_id=conversation_id, user_id=user_id, **fields)
    s.add(exchange)
    s.flush()
    return exchange


def _decide(s, exchange_id: int, reviewer_id: int, **values: Any) -> ReviewDecision:
    item = ReviewItem(exchange_id=exchange_id, reason="flagged", direction="prompt", status="decided",
                      created_at=T0)
    s.add(item)
    s.flush()
    fields: dict[str, Any] = {"decision": "violation", "category": "pii", "note": None, "created_at": T0}
    fields.update(values)
    decision = ReviewDecision(item_id=item.id, reviewer_id=reviewer_id, **fields)
    s.add(decision)
    s.flush()
    return decision


@pytest.fixture
def tricky_data(ctx, people):
    """Exchanges, findings, decisions and audit events holding every tricky text, NULLs and empty strings."""
    olga, rita = people["olga"], people["rita"]
    with ctx.db.session() as s:
        conv = Conversation(user_id=olga.user_id, title="t", created_at=T0, updated_at=T0)
        s.add(conv)
        s.flush()
        for i, text in enumerate(TRICKY):
            other = TRICKY[-1 - i]
            x = _exchange(
                s, olga.user_id, conv.id, prompt=text, response=other,
                request_id="" if i == 1 else (None if i % 2 else text), error=None if i % 3 else other,
                model_version=f"v-{text}"[:200], sampling={"temperature": 0.7, "stop": [text]},
                prompt_tokens=None if i % 2 else i, ttft_ms=None if i % 2 else 12.345678901234 + i,
                tokens_per_s=0.1 + i / 3, created_at=T0 + timedelta(minutes=i),
                finished_at=None if i % 4 else T0 + timedelta(minutes=i, seconds=3),
                prompt_action="flag", text_erased_at=T0 if i == 3 else None,
            )
            s.add(Finding(exchange_id=x.id, direction="prompt", detector="presidio", detector_version=text,
                          label=text or "EMPTY", score=0.5 + i / 100, start=None if i % 2 else 1,
                          end=None if i % 2 else 5, action="flag"))
            _decide(s, x.id, rita.user_id, note=None if i % 2 else text, category=None if i % 3 else text,
                    created_at=T0 + timedelta(minutes=i, seconds=30), second_review=bool(i % 2))
        for i, text in enumerate(TRICKY):
            audit_q.append_event(s, actor=text.replace("\x00", "") or "x", actor_id=i, action=f"tricky.{i}",
                                 object_type=text or None, object_id=text,
                                 details={"reason": text, "n": i, "f": 1 / 3, "none": None, "list": [text, ""]})
    return people


@pytest.fixture(autouse=True)
def quick_redaction(monkeypatch):
    """Reasons and notes go through the PII redaction; its Presidio start-up (many seconds) is replaced here."""
    calls: list[str] = []

    def redact(ctx, text: str) -> str:
        calls.append(text)
        return text.replace("+44 20 7946 0958", "<PHONE_NUMBER>")

    monkeypatch.setattr(approvals_svc, "_redact", redact)
    return calls


def _export(ctx, actor, tmp_path: Path, what: str, fmt: str, flt: ExportFilter | None = None,
            name: str | None = None) -> exports_svc.ExportResult:
    out = tmp_path / "out" / (name or f"{what}.{fmt}")
    out.parent.mkdir(exist_ok=True)
    return exports_svc.run_export(ctx, actor, ExportSpec(what, fmt, flt or ExportFilter()), out)


def _rows(ctx, what: str, flt: ExportFilter | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    with ctx.db.session(readonly=True) as s:
        return list(exports_q.iter_rows(s, what, flt or ExportFilter(), **kwargs))


# --- the rows as the store holds them -----------------------------------------------------------------------


def test_rows_hold_every_column_as_stored(ctx, tricky_data):
    with ctx.db.session(readonly=True) as s:
        stored = {x.id: x for x in s.scalars(select(Exchange))}
        events = {e.seq: e for e in s.scalars(select(AuditEvent).where(AuditEvent.action.like("tricky.%")))}
        decisions = {d.id: d for d in s.scalars(select(ReviewDecision))}
    rows = _rows(ctx, "exchanges")
    assert len(rows) == len(TRICKY) and [r["id"] for r in rows] == sorted(stored)
    for row in rows:
        x = stored[row["id"]]
        assert list(row) == list(exports_q.EXCHANGE_COLUMNS)
        assert row["prompt"] == exported(x.prompt) and row["response"] == exported(x.response)
        assert row["request_id"] == exported(x.request_id) and row["error"] == exported(x.error)
        assert row["username"] == "olga" and row["conversation_id"] == x.conversation_id
        assert row["created_at"] == x.created_at.isoformat() and row["ttft_ms"] == x.ttft_ms
        assert row["finished_at"] == (x.finished_at.isoformat() if x.finished_at else None)
        assert row["text_erased_at"] == (x.text_erased_at.isoformat() if x.text_erased_at else None)
        assert json.loads(row["sampling"]) == json.loads(exported(json.dumps(x.sampling)))
        (finding,) = json.loads(row["findings"])
        assert finding["detector_version"] == exported(TRICKY[stored_index(stored, x.id)])
        assert set(finding) == {"direction", "detector", "detector_version", "label", "score", "start", "end",
                                "action"}
        (decision,) = json.loads(row["decisions"])
        assert decision["reviewer"] == "rita" and decision["note"] == exported(decisions[decision["id"]].note)
        assert row["synthetic"] is False and "raw_prompt" not in row
    ev = [r for r in _rows(ctx, "events") if r["action"].startswith("tricky.")]
    assert len(ev) == len(TRICKY)
    for row in ev:
        e = events[row["seq"]]
        assert list(row) == list(exports_q.EVENT_COLUMNS)
        assert row["details"] == audit_q.canonical_json(e.details)  # the text its details_hash is taken of
        assert hashlib.sha256(row["details"].encode()).hexdigest() == e.details_hash == row["details_hash"]
        assert (row["hash"], row["prev_hash"], row["ts"]) == (e.hash, e.prev_hash, e.ts.isoformat())
        assert row["object_id"] == exported(e.object_id) and row["erased_at"] is None
    dec = _rows(ctx, "decisions")
    assert [r["id"] for r in dec] == sorted(decisions)
    assert all(r["reviewer"] == "rita" and r["note"] == exported(decisions[r["id"]].note) for r in dec)


def stored_index(stored: dict[int, Exchange], exchange_id: int) -> int:
    return sorted(stored).index(exchange_id)


# --- round trips --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["events", "exchanges", "decisions"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_field_round_trips_exactly(ctx, tricky_data, tmp_path, what, fmt):
    expected = _rows(ctx, what)
    result = _export(ctx, tricky_data["ana"], tmp_path, what, fmt)
    got = read_export(result.path, fmt, what)
    if what == "events":  # the export itself and the checkpoint's own events come after it started
        got = got[:len(expected)]
    assert got == expected
    assert result.rows == len(got)
    if fmt != "parquet":  # UTF-8 as written, not escaped
        assert "日本語".encode() in result.path.read_bytes()
    # NULL and empty text stay apart, in every format.
    if what == "exchanges":
        assert {r["request_id"] for r in got} >= {None, ""}
        assert any(r["prompt"] == "" for r in got) and any(r["prompt"] == "\ufffd stored nul" for r in got)
        assert any(r["prompt"] == "nul\ufffdinside" for r in got)


def test_csv_formula_cells_get_one_quote_that_csv_restore_takes_off(ctx, tricky_data, tmp_path):
    result = _export(ctx, tricky_data["ana"], tmp_path, "exchanges", "csv")
    header, *records = parse_csv(result.path.read_bytes().decode("utf-8"))
    prompts = [r[header.index("prompt")] for r in records]
    assert "'=HYPERLINK(\"https://evil.example\",\"x\")" in prompts
    assert "'\nlead lf" in prompts and "'\tlead tab" in prompts and "'\rlead cr" in prompts
    assert "''=already quoted" in prompts  # so that the one added quote can always be told apart
    assert "'plain quote" in prompts and "'" in prompts  # no formula: unchanged


@pytest.mark.parametrize("text", TRICKY + ["=", "'=", "''''-1", "@", "x=1"])
def test_csv_safe_is_undone_exactly_by_csv_restore(text):
    cell = csv_safe(text)
    assert csv_restore(cell) == text
    assert not cell.lstrip("'").startswith(("=", "+", "-", "@", "\t", "\r", "\n")) or cell.startswith("'")
    assert csv_safe(5) == 5 and csv_safe(None) is None


def test_a_nul_in_any_column_breaks_no_format(ctx, people, tmp_path):
    with ctx.db.session() as s:  # written around db.chat.storable, as an old row or another writer might have
        conv = Conversation(user_id=people["olga"].user_id, created_at=T0, updated_at=T0)
        s.add(conv)
        s.flush()
        _exchange(s, people["olga"].user_id, conv.id, prompt="\x00", response="a\x00\x00b", error="\x00=1",
                  request_id="\x00", model_version="m\x00")
    for fmt in FORMATS:
        result = _export(ctx, people["ana"], tmp_path, "exchanges", fmt, name=f"nul.{fmt}")
        assert b"\x00" not in result.path.read_bytes() or fmt == "parquet"
        (row,) = read_export(result.path, fmt, "exchanges")
        assert (row["prompt"], row["response"], row["error"], row["request_id"], row["model_version"]) == (
            "\ufffd", "a\ufffd\ufffdb", "\ufffd=1", "\ufffd", "m\ufffd")


def test_parquet_has_a_fixed_schema_and_one_row_group_per_chunk(ctx, people, tmp_path, monkeypatch):
    for i in range(5):
        with ctx.db.session() as s:
            audit_q.append_event(s, actor="x", action=f"chunked.{i}")
    real = exports_q.iter_chunks
    monkeypatch.setattr(exports_q, "iter_chunks", lambda *a, **k: real(*a, **{**k, "chunk_size": 2}))
    flt = ExportFilter(action_prefix="chunked.")
    result = _export(ctx, people["ana"], tmp_path, "events", "parquet", flt)
    meta = pq.ParquetFile(result.path)
    assert meta.num_row_groups == 3 and meta.metadata.num_rows == 5
    types = {f.name: str(f.type) for f in meta.schema_arrow}
    assert types["seq"] == "int64" and types["details"] == "string" and types["actor_id"] == "int64"
    # An export with no rows still has the schema.
    empty = _export(ctx, people["ana"], tmp_path, "decisions", "parquet")
    assert pq.read_table(empty.path).schema.names == list(exports_q.DECISION_COLUMNS) and empty.rows == 0


# --- filters ------------------------------------------------------------------------------------------------


@pytest.fixture
def timed_events(ctx, monkeypatch):
    """Audit events at known times (the chain's clock is moved, not the events)."""
    times = iter([T0 + timedelta(hours=h) for h in range(10)])
    monkeypatch.setattr(audit_q, "utcnow", lambda: next(times))
    with ctx.db.session() as s:
        for h, (actor, action) in enumerate([("ana", "alpha.one"), ("bob", "alpha.two"), ("ana", "beta.one"),
                                             ("bob", "alpha_x"), ("ana", "alphaXx")]):
            audit_q.append_event(s, actor=actor, action=action, details={"h": h})
    monkeypatch.undo()


def _actions(rows: list[dict[str, Any]]) -> list[str]:
    return [r["action"] for r in rows]


def test_event_filters(ctx, people, timed_events):
    day = {"since": T0, "until": T0 + timedelta(days=1)}  # the people's own events are later (real time)
    everything = _actions(_rows(ctx, "events", ExportFilter(**day)))
    assert everything == ["alpha.one", "alpha.two", "beta.one", "alpha_x", "alphaXx"]
    window = ExportFilter(since=T0 + timedelta(hours=1), until=T0 + timedelta(hours=3))
    assert _actions(_rows(ctx, "events", window)) == ["alpha.two", "beta.one"]  # since in, until out
    assert _actions(_rows(ctx, "events", ExportFilter(**day, actor="ana"))) == ["alpha.one", "beta.one", "alphaXx"]
    assert _actions(_rows(ctx, "events", ExportFilter(action_prefix="alpha."))) == ["alpha.one", "alpha.two"]
    assert _actions(_rows(ctx, "events", ExportFilter(action_prefix="alpha_"))) == ["alpha_x"]  # _ is no wildcard


def test_model_version_filter(ctx, people, tmp_path):
    with ctx.db.session() as s:
        version = ModelVersion(name="m-1", source="/models/m1")
        s.add(version)
        s.flush()
        conv = Conversation(user_id=people["olga"].user_id, created_at=T0, updated_at=T0)
        s.add(conv)
        s.flush()
        x1 = _exchange(s, people["olga"].user_id, conv.id, model_version="m-1")
        x2 = _exchange(s, people["olga"].user_id, conv.id, model_version="m-2")
        d1 = _decide(s, x1.id, people["rita"].user_id)
        _decide(s, x2.id, people["rita"].user_id)
        audit_q.append_event(s, actor="x", action="mv.details", details={"model_version": "m-1"})
        audit_q.append_event(s, actor="x", action="mv.other", details={"model_version": "m-2"})
        audit_q.append_event(s, actor="x", action="mv.object_id", object_type="model_version",
                             object_id=version.id)
        audit_q.append_event(s, actor="x", action="mv.object_name", object_type="model_version", object_id="m-1")
        audit_q.append_event(s, actor="x", action="mv.not_a_version", object_type="exchange", object_id="m-1")
    flt = ExportFilter(model_version="m-1")
    assert [r["id"] for r in _rows(ctx, "exchanges", flt)] == [x1.id]
    assert [r["id"] for r in _rows(ctx, "decisions", flt)] == [d1.id]
    assert _actions(_rows(ctx, "events", flt)) == ["mv.details", "mv.object_id", "mv.object_name"]
    result = _export(ctx, people["ana"], tmp_path, "events", "jsonl", flt)
    assert _actions(read_export(result.path, "jsonl", "events")) == ["mv.details", "mv.object_id",
                                                                     "mv.object_name"]


def test_exchange_and_decision_filters_and_synthetic_load_left_out_by_default(ctx, people, tmp_path):
    olga, rita = people["olga"], people["rita"]
    with ctx.db.session() as s:
        conv = Conversation(user_id=olga.user_id, created_at=T0, updated_at=T0)
        s.add(conv)
        s.flush()
        real = [_exchange(s, olga.user_id, conv.id, created_at=T0 + timedelta(days=d)) for d in range(3)]
        load = _exchange(s, olga.user_id, conv.id, synthetic=True)
        ada_conv = Conversation(user_id=people["ada"].user_id, created_at=T0, updated_at=T0)
        s.add(ada_conv)
        s.flush()
        ada_x = _exchange(s, people["ada"].user_id, ada_conv.id)
        by_rita = _decide(s, real[0].id, rita.user_id, created_at=T0 + timedelta(days=1))
        by_ada = _decide(s, real[1].id, people["ada"].user_id, created_at=T0 + timedelta(days=2))
        on_load = _decide(s, load.id, rita.user_id)
    ids = [r["id"] for r in _rows(ctx, "exchanges")]
    assert load.id not in ids and ids == [x.id for x in real] + [ada_x.id]
    assert load.id in [r["id"] for r in _rows(ctx, "exchanges", ExportFilter(include_synthetic=True))]
    window = ExportFilter(since=T0 + timedelta(days=1), until=T0 + timedelta(days=2))
    assert [r["id"] for r in _rows(ctx, "exchanges", window)] == [real[1].id]
    assert [r["id"] for r in _rows(ctx, "exchanges", ExportFilter(actor="ada"))] == [ada_x.id]
    assert [r["id"] for r in _rows(ctx, "decisions")] == [by_rita.id, by_ada.id]
    assert [r["id"] for r in _rows(ctx, "decisions", ExportFilter(actor="ada"))] == [by_ada.id]
    assert [r["id"] for r in _rows(ctx, "decisions", window)] == [by_rita.id]
    assert on_load.id in [r["id"] for r in _rows(ctx, "decisions", ExportFilter(include_synthetic=True))]
    # The service passes the filter through: the file holds what the rows hold.
    result = _export(ctx, people["ana"], tmp_path, "exchanges", "csv", window)
    assert [r["id"] for r in read_export(result.path, "csv", "exchanges")] == [real[1].id]
    assert result.manifest["filters"]["since"] == (T0 + timedelta(days=1)).isoformat()


@pytest.mark.parametrize("spec,message", [
    (ExportSpec("users", "csv"), "Cannot export 'users'"),
    (ExportSpec("events", "xlsx"), "Unknown export format"),
    (ExportSpec("events", "csv", ExportFilter(since=T0, until=T0)), "start of the range must be before"),
    (ExportSpec("events", "csv", ExportFilter(since=T0 + timedelta(1), until=T0)), "before its end"),
    (ExportSpec("exchanges", "csv", ExportFilter(action_prefix="chat.")), "audit events only"),
    (ExportSpec("events", "csv", ExportFilter(actor="x" * 201)), "too long"),
    (ExportSpec("events", "csv", ExportFilter(actor="a\x00b")), "cannot be stored"),
])
def test_bad_specs_are_refused_with_a_clear_message_and_nothing_is_written(ctx, people, tmp_path, spec, message):
    before = _all_actions(ctx)
    with pytest.raises(InvalidInput, match=message):
        exports_svc.run_export(ctx, people["ana"], spec, tmp_path / "x.csv")
    assert list(tmp_path.glob("x.csv*")) == [] and _all_actions(ctx) == before


def test_an_existing_file_or_a_missing_folder_is_refused(ctx, people, tmp_path):
    target = tmp_path / "taken.csv"
    target.write_bytes(b"keep me")
    with pytest.raises(InvalidInput, match="already exists"):
        exports_svc.run_export(ctx, people["ana"], ExportSpec("events", "csv"), target)
    assert target.read_bytes() == b"keep me"
    with pytest.raises(InvalidInput, match="does not exist"):
        exports_svc.run_export(ctx, people["ana"], ExportSpec("events", "csv"), tmp_path / "no" / "x.csv")


def test_naive_times_are_utc_and_dates_are_midnight(ctx, people):
    spec = exports_svc.validated_spec(ExportSpec("events", "csv", ExportFilter(
        since=datetime(2026, 1, 1, 8), until=datetime(2026, 1, 2).date(), actor="  ana  ", model_version=" ")))
    assert spec.filter.since == datetime(2026, 1, 1, 8, tzinfo=UTC)
    assert spec.filter.until == datetime(2026, 1, 2, tzinfo=UTC)
    assert spec.filter.actor == "ana" and spec.filter.model_version is None


# --- manifest, audit, failures ------------------------------------------------------------------------------


def _all_actions(ctx) -> list[str]:
    with ctx.db.session(readonly=True) as s:
        return list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_manifest_matches_the_file_and_the_export_is_audited(ctx, tricky_data, tmp_path, fmt):
    ana = tricky_data["ana"]
    result = _export(ctx, ana, tmp_path, "events", fmt)
    manifest = json.loads(result.manifest_path.read_text(encoding="utf-8"))
    assert result.manifest_path == result.path.with_name(result.path.name + ".manifest.json")
    data = result.path.read_bytes()
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest() == result.sha256
    assert manifest["size"] == len(data) and manifest["rows"] == result.rows
    assert manifest["what"] == "events" and manifest["format"] == fmt and manifest["exported_by"] == "ana"
    assert manifest["console_version"] and manifest["exported_at"].startswith("2026-11-26T09:00")
    rows = read_export(result.path, fmt, "events")
    assert manifest["rows"] == len(rows)
    # A signed checkpoint taken first; the export covers the chain up to it, so its last hash is the head.
    cp = audit_q.Checkpoint.from_dict(manifest["checkpoint"])
    assert audit_svc.anchor(ctx).is_valid(cp) and cp.reason == "export"
    assert manifest["last_event"] == {"seq": rows[-1]["seq"], "hash": rows[-1]["hash"]} == {
        "seq": cp.seq, "hash": cp.head_hash}
    assert manifest["first_event"] == {"seq": rows[0]["seq"], "hash": rows[0]["hash"]}
    with ctx.db.session(readonly=True) as s:
        event = audit_q.latest_event(s, "audit.export")
    assert event is not None and event.actor == "ana" and event.actor_id == ana.user_id
    assert event.details["sha256"] == result.sha256 and event.details["rows"] == result.rows
    assert event.details["checkpoint_seq"] == cp.seq and event.seq > cp.seq
    assert "reason" not in json.dumps(event.details)  # the manifest's essentials, never the data
    assert audit_q.verify_chain(ctx.db, audit_svc.anchor(ctx)).ok


def test_jsonl_writes_details_as_an_object_whose_canonical_text_has_the_events_hash(ctx, tricky_data, tmp_path):
    ana = tricky_data["ana"]
    jsonl = _export(ctx, ana, tmp_path, "events", "jsonl", ExportFilter(action_prefix="tricky."))
    lines = [json.loads(line) for line in jsonl.path.read_bytes().decode("utf-8").splitlines()]
    assert len(lines) == len(TRICKY)
    for row in lines:
        details = row["details"]
        assert isinstance(details, dict) and details["n"] == int(details["n"]) and details["none"] is None
        # As appended (an escaped NUL in JSON text is no NUL byte in any file).
        assert details["reason"] in TRICKY and details["list"][1] == ""
        # The chain's details hash is the SHA-256 of the details' canonical JSON: a reader can still check it.
        assert hashlib.sha256(audit_q.canonical_json(details).encode()).hexdigest() == row["details_hash"]
    assert jsonl.manifest["jsonl"] == {"encoding": "utf-8", "json_columns": ["details"]}
    assert jsonl.manifest["sha256"] == hashlib.sha256(jsonl.path.read_bytes()).hexdigest()
    # Exchanges: sampling an object, findings and decisions lists.
    (exchange, *_) = [json.loads(line) for line in _export(ctx, ana, tmp_path, "exchanges", "jsonl")
                      .path.read_bytes().decode("utf-8").splitlines()]
    assert isinstance(exchange["sampling"], dict)
    assert isinstance(exchange["findings"], list) and isinstance(exchange["findings"][0], dict)
    assert isinstance(exchange["decisions"], list) and exchange["decisions"][0]["reviewer"] == "rita"
    # CSV and Parquet keep the same value as text.
    csv_rows = read_export(_export(ctx, ana, tmp_path, "events", "csv", ExportFilter(action_prefix="tricky."))
                           .path, "csv", "events")
    assert [json.loads(r["details"]) for r in csv_rows] == [r["details"] for r in lines]
    assert "jsonl" not in _export(ctx, ana, tmp_path, "decisions", "parquet").manifest


def test_manifest_of_other_kinds_names_the_chain_head(ctx, tricky_data, tmp_path):
    result = _export(ctx, tricky_data["ana"], tmp_path, "decisions", "jsonl")
    manifest = result.manifest
    assert manifest["chain_head"] == {"seq": manifest["checkpoint"]["seq"],
                                      "hash": manifest["checkpoint"]["head_hash"]}
    assert "first_event" not in manifest and manifest["rows"] == len(TRICKY)
    assert json.loads(result.manifest_path.read_text()) == manifest
    assert (result.path.stat().st_mode & 0o077) == 0 and (result.manifest_path.stat().st_mode & 0o077) == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_failure_midway_leaves_no_file_and_only_a_failure_event(ctx, tricky_data, tmp_path, monkeypatch, fmt):
    real = exports_q.iter_chunks

    def breaks(*args: Any, **kwargs: Any):
        chunks = real(*args, **{**kwargs, "chunk_size": 3})
        yield next(chunks)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(exports_q, "iter_chunks", breaks)
    before = _all_actions(ctx)
    with pytest.raises(StorageUnavailable, match="No space left on device"):
        _export(ctx, tricky_data["ana"], tmp_path, "exchanges", fmt)
    assert list((tmp_path / "out").iterdir()) == []  # no file, no manifest, no temporary file
    assert _all_actions(ctx)[len(before):] == ["audit.export_failed"]


def test_a_bug_midway_is_loud_and_cleans_up(ctx, people, tmp_path, monkeypatch):
    def bug(*args: Any, **kwargs: Any):
        raise KeyError("a bug")
        yield

    monkeypatch.setattr(exports_q, "iter_chunks", bug)
    with pytest.raises(KeyError):
        _export(ctx, people["ana"], tmp_path, "events", "csv")
    assert list((tmp_path / "out").iterdir()) == []
    with ctx.db.session(readonly=True) as s:
        failed = audit_q.latest_event(s, "audit.export_failed")
    assert failed is not None and failed.details["error"] == "KeyError"


def test_default_export_path_is_in_an_owner_only_folder(ctx, people):
    path = exports_svc.default_export_path(ctx, ExportSpec("events", "parquet"))
    assert path.parent == ctx.settings.export_dir and path.suffix == ".parquet" and not path.exists()
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert exports_svc.run_export(ctx, people["ana"], ExportSpec("events", "parquet"), path).path.is_file()


# --- flat memory --------------------------------------------------------------------------------------------


class _Row(dict):
    alive = 0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        _Row.alive += 1

    def __del__(self) -> None:
        _Row.alive -= 1


def _bulk_events(ctx, n: int) -> None:
    """``n`` events written straight into the table (fast; their hashes are not a valid chain)."""
    with ctx.db.session() as s:
        head = s.get(AuditHead, 1)
        start = head.seq
        rows = [{"seq": start + i + 1, "ts": T0, "actor": "load", "actor_id": None, "action": "load.event",
                 "object_type": None, "object_id": str(i), "details": {"i": i, "text": "x" * 40},
                 "details_hash": "d" * 64, "prev_hash": "p" * 64, "hash": f"{i:064d}"} for i in range(n)]
        s.execute(insert(AuditEvent.__table__), rows)
        s.execute(update(AuditHead.__table__).where(AuditHead.id == 1).values(seq=start + n, hash=f"{n - 1:064d}"))


def test_writers_hold_one_chunk_at_a_time(ctx, people, tmp_path, monkeypatch):
    _bulk_events(ctx, 20_000)
    real = exports_q.iter_chunks
    queries: list[tuple[str, Any]] = []
    peaks: list[int] = []

    def instrumented(*args: Any, **kwargs: Any):
        for chunk in real(*args, **kwargs):
            tracked = [_Row(r) for r in chunk]
            del chunk
            peaks.append(_Row.alive)  # this chunk, plus whatever earlier rows something still holds
            yield tracked
            del tracked

    from sqlalchemy import event

    def record(conn, cursor, statement, parameters, context, executemany):
        if "FROM audit_events" in statement and "LIMIT" in statement:
            queries.append((statement, parameters))

    monkeypatch.setattr(exports_q, "iter_chunks", instrumented)
    for fmt in FORMATS:
        peaks.clear()
        queries.clear()
        event.listen(ctx.db.engine, "before_cursor_execute", record)
        try:
            result = _export(ctx, people["ana"], tmp_path, "events", fmt, ExportFilter(action_prefix="load."))
        finally:
            event.remove(ctx.db.engine, "before_cursor_execute", record)
        assert result.rows == 20_000 and len(peaks) == 10
        assert max(peaks) <= exports_q.CHUNK_ROWS, fmt  # never more than one chunk of rows alive at once
        assert _Row.alive == 0
        # Keyset chunks: one query per chunk and one finding the end, each "after the last key", never skipping
        # rows (SQLAlchemy renders SQLite's LIMIT as "LIMIT ? OFFSET ?"; the offset is always 0).
        assert len(queries) == 11
        assert all("audit_events.seq > ?" in q and params[-2:] == (exports_q.CHUNK_ROWS, 0) for q, params in queries)
        data = result.path.read_bytes()
        if fmt == "csv":
            counted = sum(1 for _ in csv.reader(io.StringIO(data.decode(), newline=""))) - 1
        elif fmt == "jsonl":
            counted = data.count(b"\n")
        else:
            counted = pq.ParquetFile(result.path).metadata.num_rows
        assert counted == 20_000


# --- raw text: four eyes ------------------------------------------------------------------------------------

RAW_SECRET = "call me on +44 20 7946 0958, raw and unredacted"
REASON = "Legal hold #42: the regulator asked for the original texts."


@pytest.fixture
def raw_data(ctx, people):
    with ctx.db.session() as s:
        conv = Conversation(user_id=people["olga"].user_id, created_at=T0, updated_at=T0)
        s.add(conv)
        s.flush()
        x = _exchange(s, people["olga"].user_id, conv.id, prompt="call me on <PHONE_NUMBER>")
        s.add(RawText(exchange_id=x.id, direction="prompt", text=RAW_SECRET))
        s.add(RawText(exchange_id=x.id, direction="output", text="gone", erased_at=T0))
    return x.id


def _raw_spec(fmt: str = "jsonl") -> ExportSpec:
    return ExportSpec("exchanges", fmt)


def test_an_ordinary_export_never_holds_raw_text(ctx, people, raw_data, tmp_path):
    for who in ("ana", "ada"):
        for fmt in FORMATS:
            result = _export(ctx, people[who], tmp_path, "exchanges", fmt, name=f"{who}.{fmt}")
            assert RAW_SECRET.encode() not in result.path.read_bytes()
            assert "raw_prompt" not in read_export(result.path, fmt, "exchanges")[0]


def test_an_analyst_can_never_get_raw_text(ctx, people, raw_data, tmp_path):
    ana, ada, abe = people["ana"], people["ada"], people["abe"]
    with pytest.raises(AccessDenied):
        approvals_svc.request_raw_export(ctx, ana, _raw_spec(), REASON)
    request = approvals_svc.request_raw_export(ctx, ada, _raw_spec(), REASON)
    with pytest.raises(AccessDenied):
        approvals_svc.decide_raw_export(ctx, ana, request.id, True, "ok")
    approvals_svc.decide_raw_export(ctx, abe, request.id, True, "ok")
    with pytest.raises(AccessDenied):
        approvals_svc.run_approved_raw_export(ctx, ana, request.id, tmp_path / "raw.jsonl")
    with pytest.raises(AccessDenied):
        approvals_svc.list_export_requests(ctx, ana)
    assert not (tmp_path / "raw.jsonl").exists()
    assert "access.denied" in _all_actions(ctx)
    with ctx.db.session(readonly=True) as s:
        assert s.get(ExportRequest, request.id).status == "approved"


def test_the_four_eyes_flow_exports_raw_text_once(ctx, people, raw_data, tmp_path):
    ada, abe = people["ada"], people["abe"]
    request = approvals_svc.request_raw_export(ctx, ada, _raw_spec("csv"), REASON)
    assert request.status == "pending" and request.requested_by == "ada" and request.what == "exchanges"
    with pytest.raises(SeparationOfDuties):
        approvals_svc.decide_raw_export(ctx, ada, request.id, True, "my own")
    with pytest.raises(InvalidInput, match="not approved|pending"):
        approvals_svc.run_approved_raw_export(ctx, ada, request.id, tmp_path / "early.csv")
    decided = approvals_svc.decide_raw_export(ctx, abe, request.id, True, "for the legal hold")
    assert decided.status == "approved" and decided.decided_by == "abe"
    with pytest.raises(InvalidInput, match="already approved"):
        approvals_svc.decide_raw_export(ctx, abe, request.id, False, "changed my mind")
    with pytest.raises(AccessDenied, match="Only the person who asked"):  # the approver cannot run it
        approvals_svc.run_approved_raw_export(ctx, abe, request.id, tmp_path / "abe.csv")
    result = approvals_svc.run_approved_raw_export(ctx, ada, request.id, tmp_path / "raw.csv")
    (row,) = read_export(result.path, "csv", "exchanges", include_raw=True)
    assert row["raw_prompt"] == RAW_SECRET and row["raw_response"] is None  # erased raw text is not exported
    assert row["prompt"] == "call me on <PHONE_NUMBER>"
    assert result.manifest["raw_text"] is True and result.manifest["request_id"] == request.id
    with pytest.raises(InvalidInput, match="already used"):
        approvals_svc.run_approved_raw_export(ctx, ada, request.id, tmp_path / "again.csv")
    assert not (tmp_path / "again.csv").exists() and not (tmp_path / "abe.csv").exists()
    (listed,) = approvals_svc.list_export_requests(ctx, abe)
    assert listed.status == "used" and listed.used_at is not None
    actions = [a for a in _all_actions(ctx) if a.startswith("audit.export")]
    assert actions == ["audit.export_raw_requested", "audit.export_raw_approved", "audit.export_raw_run",
                       "audit.export"]
    with ctx.db.session(readonly=True) as s:
        export_event = audit_q.latest_event(s, "audit.export")
    assert export_event.details["raw_text"] is True and RAW_SECRET not in json.dumps(export_event.details)


def test_reasons_and_notes_are_stored_redacted(ctx, people, quick_redaction):
    request = approvals_svc.request_raw_export(ctx, people["ada"], _raw_spec(), "Caller +44 20 7946 0958 asked.")
    decided = approvals_svc.decide_raw_export(ctx, people["abe"], request.id, False, "call +44 20 7946 0958 first")
    assert request.reason == "Caller <PHONE_NUMBER> asked." and decided.decision_note == "call <PHONE_NUMBER> first"
    assert quick_redaction == ["Caller +44 20 7946 0958 asked.", "call +44 20 7946 0958 first"]
    with ctx.db.session(readonly=True) as s:
        assert "7946" not in json.dumps([e.details for e in s.scalars(select(AuditEvent))])
        assert s.get(ExportRequest, request.id).reason == "Caller <PHONE_NUMBER> asked."


def test_rejected_and_cancelled_requests_cannot_run(ctx, people, raw_data, tmp_path):
    ada, abe = people["ada"], people["abe"]
    rejected = approvals_svc.request_raw_export(ctx, ada, _raw_spec(), REASON)
    approvals_svc.decide_raw_export(ctx, abe, rejected.id, False, "no legal basis")
    with pytest.raises(InvalidInput, match="rejected"):
        approvals_svc.run_approved_raw_export(ctx, ada, rejected.id, tmp_path / "r.jsonl")
    cancelled = approvals_svc.request_raw_export(ctx, ada, _raw_spec(), REASON)
    approvals_svc.decide_raw_export(ctx, abe, cancelled.id, True, None)
    with pytest.raises(AccessDenied):
        approvals_svc.cancel_raw_export(ctx, abe, cancelled.id)
    assert approvals_svc.cancel_raw_export(ctx, ada, cancelled.id).status == "cancelled"
    with pytest.raises(InvalidInput, match="cancelled"):
        approvals_svc.run_approved_raw_export(ctx, ada, cancelled.id, tmp_path / "c.jsonl")
    assert list(tmp_path.glob("*.jsonl")) == []


def _denials(ctx, after: int) -> list[tuple[str, str | None, dict[str, Any]]]:
    with ctx.db.session(readonly=True) as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "access.denied", AuditEvent.seq > after)
                           .order_by(AuditEvent.seq))
        return [(e.object_type, e.object_id, e.details) for e in events]


def _last_seq(ctx) -> int:
    with ctx.db.session(readonly=True) as s:
        return int(s.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1)) or 0)


def test_raw_export_refusals_keep_their_words_and_their_audit_events(ctx, people, raw_data, tmp_path):
    """The four-eyes checks (console.services.four_eyes) say what this module always said, and audit the same."""
    ada, abe = people["ada"], people["abe"]
    for bad in (0, "1", True, None):
        with pytest.raises(InvalidInput) as refused:
            approvals_svc.decide_raw_export(ctx, abe, bad, True)
        assert str(refused.value) == "Choose an export request."
    with pytest.raises(NotFound) as missing:
        approvals_svc.decide_raw_export(ctx, abe, 999, True, "x" * 2001)  # the request is looked for first
    assert str(missing.value) == "There is no export request #999."
    for call in (lambda: approvals_svc.cancel_raw_export(ctx, ada, 999),
                 lambda: approvals_svc.run_approved_raw_export(ctx, ada, 999, tmp_path / "none.jsonl")):
        with pytest.raises(NotFound, match=r"^There is no export request #999\.$"):
            call()
    request = approvals_svc.request_raw_export(ctx, ada, _raw_spec(), REASON)
    with pytest.raises(InvalidInput, match=r"^Choose approve or reject\.$"):
        approvals_svc.decide_raw_export(ctx, abe, request.id, "yes")
    head = _last_seq(ctx)
    with pytest.raises(SeparationOfDuties) as own:
        approvals_svc.decide_raw_export(ctx, ada, request.id, True)
    assert str(own.value) == ("Separation of duties: nobody approves or rejects their own request for a raw-text "
                              "export.")
    with pytest.raises(AccessDenied) as cancel:
        approvals_svc.cancel_raw_export(ctx, abe, request.id)
    assert str(cancel.value) == "Only the person who asked for an export can cancel it."
    approvals_svc.decide_raw_export(ctx, abe, request.id, True)
    with pytest.raises(AccessDenied) as run:
        approvals_svc.run_approved_raw_export(ctx, abe, request.id, tmp_path / "abe.jsonl")
    assert str(run.value) == "Only the person who asked for a raw-text export can run it."
    rid = str(request.id)
    assert _denials(ctx, head) == [
        ("action", rid, {"action": "audit.export_raw.decide", "reason": "separation of duties"}),
        ("export_request", rid, {"action": "audit.export_raw.cancel", "reason": "not the requester"}),
        ("export_request", rid, {"action": "audit.export_raw.run", "reason": "not the requester"}),
    ]
    with pytest.raises(InvalidInput) as decided:
        approvals_svc.decide_raw_export(ctx, abe, request.id, False)
    assert str(decided.value) == f"Export request #{request.id} is already approved."
    assert approvals_svc.cancel_raw_export(ctx, ada, request.id).status == "cancelled"  # approved, not yet used
    with pytest.raises(InvalidInput) as again:
        approvals_svc.cancel_raw_export(ctx, ada, request.id)
    assert str(again.value) == f"Export request #{request.id} is already cancelled."
    with pytest.raises(AccessDenied):  # not the requester comes before the status
        approvals_svc.cancel_raw_export(ctx, abe, request.id)
    assert audit_q.verify_chain(ctx.db).ok


@pytest.mark.parametrize("spec,reason,message", [
    (ExportSpec("exchanges", "csv"), "too short", "at least 10"),
    (ExportSpec("exchanges", "csv"), "x" * 2001, "2,001 characters; the limit is 2,000"),
    (ExportSpec("events", "csv"), REASON, "only for exchanges"),
    (ExportSpec("exchanges", "pdf"), REASON, "Unknown export format"),
])
def test_raw_requests_need_a_reason_and_exchanges(ctx, people, spec, reason, message):
    with pytest.raises(InvalidInput, match=message):
        approvals_svc.request_raw_export(ctx, people["ada"], spec, reason)
    with ctx.db.session(readonly=True) as s:
        assert s.scalars(select(ExportRequest)).first() is None


def test_a_failed_raw_export_keeps_its_approval(ctx, people, raw_data, tmp_path, monkeypatch):
    ada, abe = people["ada"], people["abe"]
    request = approvals_svc.request_raw_export(ctx, ada, _raw_spec(), REASON)
    approvals_svc.decide_raw_export(ctx, abe, request.id, True, "ok")

    def full_disk(*args: Any, **kwargs: Any):
        raise OSError(28, "No space left on device")
        yield

    with monkeypatch.context() as m:
        m.setattr(exports_q, "iter_chunks", full_disk)
        with pytest.raises(StorageUnavailable):
            approvals_svc.run_approved_raw_export(ctx, ada, request.id, tmp_path / "raw.jsonl")
    assert not (tmp_path / "raw.jsonl").exists()
    result = approvals_svc.run_approved_raw_export(ctx, ada, request.id, tmp_path / "raw.jsonl")
    assert RAW_SECRET in result.path.read_text(encoding="utf-8")


# --- command line -------------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path, monkeypatch, migrated_db_file):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(migrated_db_file, data / "console.db")
    monkeypatch.setenv("LLM_CONSOLE_DATA_DIR", str(data))
    db = _cli_db()
    with db.session() as s:
        audit_q.append_event(s, actor="seed", action="seed.event", details={"text": "a,b\n=c"})
    db.dispose()
    return tmp_path


def _cli_db():
    from console.settings import Settings
    from db.config import DbConfig
    from db.database import Database

    return Database(DbConfig(url=Settings.from_env().database_url))


def test_cli_export_writes_the_file_and_manifest_and_audits_it(cli_env, capsys):
    out = cli_env / "events.jsonl"
    assert cli.main(["audit", "export", "--what", "events", "--format", "jsonl", "--since", "2000-01-01",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((cli_env / "events.jsonl.manifest.json").read_text())
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    assert f"sha256: {sha}" in printed and f"file: {out}" in printed and "manifest: " in printed
    # The seeded event, and the creation of the shell user the command acts as (its first command creates it).
    assert "exported 2 rows" in printed and manifest["rows"] == 2
    shell = f"shell:{os_user()}"
    assert manifest["exported_by"] == shell and manifest["filters"]["since"] == "2000-01-01T00:00:00+00:00"
    seeded, created = read_export(out, "jsonl", "events")
    assert seeded["action"] == "seed.event" and json.loads(seeded["details"]) == {"text": "a,b\n=c"}
    assert created["action"] == "user.create" and json.loads(created["details"])["username"] == shell
    db = _cli_db()
    with db.session(readonly=True) as s:
        event = audit_q.latest_event(s, "audit.export")
    db.dispose()
    assert event.actor == shell and event.actor_id == int(created["object_id"]) and event.details["sha256"] == sha


@pytest.mark.parametrize("args,status,message", [
    (["--what", "users", "--format", "csv"], 2, "invalid choice: 'users'"),
    (["--what", "events", "--format", "xlsx"], 2, "invalid choice: 'xlsx'"),
    (["--what", "events", "--format", "csv", "--since", "yesterday"], 2, "not an ISO date"),
    (["--what", "events"], 2, "required: --format"),
    (["--what", "events", "--format", "csv", "--since", "2026-02-01", "--until", "2026-01-01"], 1,
     "before its end"),
    (["--what", "exchanges", "--format", "csv", "--action-prefix", "chat."], 1, "audit events only"),
])
def test_cli_bad_arguments_give_one_line_and_write_nothing(cli_env, capsys, args, status, message):
    out = cli_env / "x.out"
    argv = ["audit", "export", *args] + ([] if "--out" in args or status == 2 and "--format" not in args
                                         else ["--out", str(out)])
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == status and message in err and len(err.strip().splitlines()) == 1
    assert not list(cli_env.glob("x.out*"))


def test_cli_refuses_to_overwrite(cli_env, capsys):
    out = cli_env / "taken.csv"
    out.write_text("keep")
    assert cli.main(["audit", "export", "--what", "events", "--format", "csv", "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err and out.read_text() == "keep"
