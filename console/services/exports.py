"""Streamed exports of the audit log, the exchanges and the review decisions (CSV, JSON Lines, Parquet).

An export reads its rows in keyset chunks (``db.exports``) inside one read-only session and writes each chunk
as it comes, so memory stays flat however many rows match. It first takes a signed checkpoint of the audit chain
(an events export covers the chain up to that checkpoint), writes to a temporary file beside the target, hashes
while writing, then renames it into place and writes ``<file>.manifest.json`` beside it: what, filters, rows,
sha256 and size, the checkpoint, who and when. The export is an ``audit.export`` event (the manifest's essentials,
never the data). A failure removes what was written and records only an ``audit.export_failed`` event.

Formats (every format carries the same values; times are ISO 8601 text, JSON values canonical JSON text in CSV
and Parquet):

- **CSV**: UTF-8, RFC 4180 (``\\r\\n`` between records, fields with quotes/commas/newlines quoted). Every text
  value is quoted; numbers and booleans are not. As in PostgreSQL's ``COPY ... CSV``, an *unquoted* empty field
  is NULL and a *quoted* one (``""``) is an empty string. Spreadsheet formula injection is neutralised: text
  starting with ``= + - @``, a tab, CR or LF (after any leading quotes) gets one ``'`` in front
  (``console.textsafe.csv_safe``); ``console.textsafe.csv_restore`` takes it off again exactly.
- **JSON Lines**: one JSON object per ``\\n``-terminated line, UTF-8 (not ASCII-escaped), except that U+2028,
  U+2029 and U+0085 are escaped so no line splitter can cut a record. JSON values (an event's ``details``, an
  exchange's ``sampling``, ``findings`` and ``decisions``) are nested JSON, not text holding JSON; the manifest
  lists them (``jsonl.json_columns``). ``db.audit.canonical_json`` of an event's ``details`` is the text its
  ``details_hash`` is the SHA-256 of.
- **Parquet**: a fixed schema per kind (string, int64, float64, bool columns), one row group per chunk.

A NUL in a value is written as U+FFFD (as the store keeps it), so none can break a format or a reader.

Exports with raw (unredacted) text go through four eyes: an admin asks with a reason, another admin approves,
and only the requester may run the approved export, once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import operator
import os
import secrets
import tempfile
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from console.services.access import (
    DutyRule,
    Principal,
    authorize,
    ensure_separation,
    register_duty_rule,
    requires,
)
from console.services.context import AppContext
from console.services.errors import AccessDenied, ConsoleError, InvalidInput, NotFound, StorageUnavailable
from console.services.text import clean_text
from console.textsafe import CSV_CHECK_FIRST, csv_safe
from db import audit as audit_q
from db import exports as exports_q
from db.exports import KINDS, ExportFilter
from db.tables import ExportRequest

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS", "KINDS", "ExportFilter", "ExportRequestView", "ExportResult", "ExportSpec", "cancel_raw_export",
    "decide_raw_export", "default_export_path", "delete_expired_exports", "delete_exports_for_erasure",
    "list_export_requests", "open_download", "request_raw_export",
    "run_approved_raw_export", "run_export", "run_export_cli",
]

FORMATS: tuple[str, ...] = ("csv", "jsonl", "parquet")
EXTENSIONS = {"csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}
MIN_REASON_CHARS = 10
MAX_REASON_CHARS = 2000
MAX_NOTE_CHARS = 2000
MAX_ACTOR_CHARS = 200
MAX_PREFIX_CHARS = 100
MAX_MODEL_VERSION_CHARS = 200
MANIFEST_SUFFIX = ".manifest.json"
SYSTEM_ACTOR = "system"  # retention's deletions of expired export files


@dataclass(frozen=True)
class ExportSpec:
    """What to export (``events``, ``exchanges`` or ``decisions``), in which format, with which filter."""

    what: str
    format: str
    filter: ExportFilter = field(default_factory=ExportFilter)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest_path: Path
    rows: int
    sha256: str
    size: int
    manifest: dict[str, Any]
    file_id: int | None = None  # the export file's record (export_files): download, expiry, deletion
    expires_at: datetime | None = None


@dataclass(frozen=True)
class ExportRequestView:
    id: int
    what: str
    format: str
    filter: ExportFilter
    reason: str
    requested_by: str
    requested_by_id: int
    status: str
    decided_by: str | None
    decision_note: str | None
    created_at: datetime
    decided_at: datetime | None
    used_at: datetime | None


# --- validation -----------------------------------------------------------------------------------------------


def _when(value: object, what: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time.min, UTC)
    raise InvalidInput(f"The {what} must be a date and time.")


def _optional_text(value: object, what: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"The {what} must be text.")
    text = value.strip()
    if not text:
        return None
    if "\x00" in text or clean_text(text) != text:
        raise InvalidInput(f"The {what} holds characters that cannot be stored (NUL or a broken surrogate).")
    if len(text) > limit:
        raise InvalidInput(f"The {what} is too long (at most {limit} characters).")
    return text


def validated_spec(spec: ExportSpec) -> ExportSpec:
    """``spec`` with its filter normalised (times in UTC, blank text as None); InvalidInput names what is wrong."""
    if not isinstance(spec, ExportSpec):
        raise InvalidInput("Say what to export, in which format.")
    if spec.what not in KINDS:
        raise InvalidInput(f"Cannot export {spec.what!r}: choose one of {', '.join(KINDS)}.")
    if spec.format not in FORMATS:
        raise InvalidInput(f"Unknown export format {spec.format!r}: choose one of {', '.join(FORMATS)}.")
    flt = spec.filter if spec.filter is not None else ExportFilter()
    if not isinstance(flt, ExportFilter):
        raise InvalidInput("The export filter is not valid.")
    since, until = _when(flt.since, "start"), _when(flt.until, "end")
    if since is not None and until is not None and since >= until:
        raise InvalidInput("The start of the range must be before its end (the end is not included).")
    prefix = _optional_text(flt.action_prefix, "action filter", MAX_PREFIX_CHARS)
    event_only = {"action": _optional_text(flt.action, "action", MAX_PREFIX_CHARS),
                  "object_type": _optional_text(flt.object_type, "target type filter", MAX_ACTOR_CHARS),
                  "object_id": _optional_text(flt.object_id, "target id filter", MAX_ACTOR_CHARS),
                  "text": _optional_text(flt.text, "text filter", MAX_ACTOR_CHARS)}
    if (prefix is not None or any(event_only.values())) and spec.what != "events":
        raise InvalidInput("The action, target and text filters apply to audit events only.")
    if not isinstance(flt.include_synthetic, bool):
        raise InvalidInput("Say whether to include synthetic exchanges (yes or no).")
    clean = ExportFilter(
        since=since,
        until=until,
        actor=_optional_text(flt.actor, "user filter", MAX_ACTOR_CHARS),
        action_prefix=prefix,
        model_version=_optional_text(flt.model_version, "model version filter", MAX_MODEL_VERSION_CHARS),
        include_synthetic=flt.include_synthetic,
        **event_only,
    )
    return replace(spec, filter=clean)


def check_out_path(out_path: Path | str) -> Path:
    path = Path(out_path)
    if not path.name or path.name in (".", ".."):
        raise InvalidInput(f"{path} is not a file name.")
    if not path.parent.is_dir():
        raise InvalidInput(f"The folder {path.parent} does not exist.")
    manifest = _manifest_path(path)
    for existing in (path, manifest):
        if existing.exists() or existing.is_symlink():
            raise InvalidInput(f"{existing} already exists; choose another file name.")
    return path


def _manifest_path(path: Path) -> Path:
    return path.with_name(path.name + MANIFEST_SUFFIX)


def default_export_path(ctx: AppContext, spec: ExportSpec) -> Path:
    """A new file name for ``spec`` in the export folder (created owner-only), e.g. for the Audit log page."""
    from db.database import make_private_dir

    spec = validated_spec(spec)
    folder = ctx.settings.export_dir
    make_private_dir(folder, tighten=True)
    stamp = ctx.now().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return folder / f"{spec.what}-{stamp}-{secrets.token_hex(4)}.{EXTENSIONS[spec.format]}"


# --- how much one person may export, and for how long a file lives ---------------------------------------------


class ExportQuotaExceeded(InvalidInput):
    """The export would take its person past ``export_rows_per_hour``."""


QUOTA_WINDOW = timedelta(hours=1)


def _quota(ctx: AppContext, actor_name: str, actor_id: int | None) -> tuple[int | None, str]:
    """Rows ``actor_id`` may still export this hour and the message for going past them; raises
    :class:`ExportQuotaExceeded` when none are left. The shell (no user id) is not bounded."""
    if actor_id is None:
        return None, ""
    limit, now = ctx.settings.export_rows_per_hour, ctx.now()
    with ctx.db.session(readonly=True) as s:
        used, oldest = exports_q.exported_since(s, actor_id, now - QUOTA_WINDOW)
    resets = (oldest or now) + QUOTA_WINDOW
    where = f"the limit is {limit:,} rows per person and hour (LLM_CONSOLE_EXPORT_ROWS_PER_HOUR)"
    if used >= limit:
        raise ExportQuotaExceeded(f"{actor_name} exported {used:,} rows in the past hour and {where}; you can "
                                  f"export again from {resets.astimezone(UTC):%Y-%m-%d %H:%M} UTC.")
    return limit - used, (f"This export has more than the {limit - used:,} rows left to {actor_name} this hour "
                          f"({used:,} exported already; {where}); nothing was kept. Narrow the filters, or wait "
                          f"until {resets.astimezone(UTC):%Y-%m-%d %H:%M} UTC.")


def _expiry(ctx: AppContext, raw: bool, oldest_exchange: str | None) -> datetime:
    """When an export file is deleted if nobody downloads it: ``export_file_hours`` from now, and a raw-text
    export no later than the raw-text retention of the oldest exchange in it."""
    expires = ctx.now() + timedelta(hours=ctx.settings.export_file_hours)
    if raw and oldest_exchange is not None:
        raw_gone = datetime.fromisoformat(oldest_exchange) + timedelta(days=ctx.settings.retention_raw_days)
        expires = min(expires, raw_gone)
    return expires


# --- writers --------------------------------------------------------------------------------------------------


class _HashingFile:
    """A binary sink that hashes and counts what passes through it to ``raw``."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        self.raw.write(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:  # the caller closes the real file
        self.closed = True


Chunks = Iterable[list[dict[str, Any]]]


class _CsvNull(float):
    """A NULL cell: "numeric" to the csv module (so it is never quoted) and empty when written."""

    def __str__(self) -> str:
        return ""

    __repr__ = __str__


_CSV_NULL = _CsvNull()


def write_csv(chunks: Chunks, out: Any, cols: dict[str, str]) -> int:
    """CSV (see the module docstring for NULLs and formula neutralisation); returns the rows written."""
    names = list(cols)
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\r\n")
    writer.writerow(names)
    out.write(buf.getvalue().encode("utf-8"))
    rows = 0
    # Only text can start a formula; NULL (None) becomes an unquoted empty cell in every column.
    text_columns = [i for i, kind in enumerate(cols.values()) if kind == "str"]
    other_columns = [i for i, kind in enumerate(cols.values()) if kind != "str"]
    values_of = operator.itemgetter(*names)

    def lines_of(chunk: list[dict[str, Any]]) -> list[list[Any]]:
        # A function of its own, so nothing of this chunk stays referenced once its lines are written.
        lines = []
        for row in chunk:
            values = list(values_of(row)) if len(names) > 1 else [row[names[0]]]
            for i in text_columns:
                value = values[i]
                if value is None:
                    values[i] = _CSV_NULL
                elif isinstance(value, str) and value[:1] in CSV_CHECK_FIRST:
                    values[i] = csv_safe(value)
            for i in other_columns:
                if values[i] is None:
                    values[i] = _CSV_NULL
            lines.append(values)
        return lines

    for chunk in chunks:
        buf.seek(0)
        buf.truncate()
        lines = lines_of(chunk)
        writer.writerows(lines)
        del lines
        out.write(buf.getvalue().encode("utf-8"))
        rows += len(chunk)
        del chunk  # released before the next chunk is read
    return rows


# json.dumps(ensure_ascii=False) leaves these as they are, but str.splitlines() and some readers break lines there.
_JSON_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"})


def write_jsonl(chunks: Chunks, out: Any, cols: dict[str, str], json_columns: Collection[str] = ()) -> int:
    """JSON Lines, one object per row with the columns in order; returns the rows written. ``json_columns`` hold
    JSON text and are written as the JSON values they hold."""
    names = list(cols)
    nested = [name for name in names if name in json_columns]
    rows = 0

    def line(row: dict[str, Any]) -> str:
        values = {name: row[name] for name in names}
        for name in nested:
            if values[name] is not None:
                values[name] = json.loads(values[name])
        return json.dumps(values, ensure_ascii=False).translate(_JSON_LINE_BREAKS)

    for chunk in chunks:
        lines = [line(row) for row in chunk]
        if lines:
            out.write(("\n".join(lines) + "\n").encode("utf-8"))
        rows += len(chunk)
        del chunk, lines  # released before the next chunk is read
    return rows


def parquet_schema(cols: dict[str, str], what: str) -> Any:
    """The fixed pyarrow schema of an export with these columns."""
    import pyarrow as pa

    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
    return pa.schema([pa.field(name, types[kind], nullable=True) for name, kind in cols.items()],
                     metadata={b"llm_console.export": what.encode("utf-8")})


def write_parquet(chunks: Chunks, out: Any, cols: dict[str, str], what: str = "") -> int:
    """Parquet with a fixed schema, one row group per chunk; returns the rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema(cols, what)
    rows = 0
    writer = pq.ParquetWriter(out, schema)
    try:
        for chunk in chunks:
            if not chunk:
                continue
            # Column by column: pyarrow converts each list in C (several times faster than from_pylist on dicts).
            table = pa.Table.from_arrays([pa.array([row[name] for row in chunk], type=field.type)
                                          for name, field in zip(schema.names, schema, strict=True)], schema=schema)
            writer.write_table(table, row_group_size=len(chunk))
            rows += len(chunk)
            del chunk, table  # released before the next chunk is read
    finally:
        writer.close()
    return rows


def _write(fmt: str, chunks: Chunks, out: Any, cols: dict[str, str], what: str) -> int:
    if fmt == "csv":
        return write_csv(chunks, out, cols)
    if fmt == "jsonl":
        return write_jsonl(chunks, out, cols, exports_q.json_columns(what))
    if fmt == "parquet":
        return write_parquet(chunks, out, cols, what)
    raise ValueError(f"unknown export format {fmt!r}")


class _Tally:
    """Counts the rows passing through and keeps the first and last event hash (events exports)."""

    def __init__(self, budget: int | None = None, over_budget: str = "") -> None:
        self.rows = 0
        self.first: tuple[int, str] | None = None
        self.last: tuple[int, str] | None = None
        self.oldest: str | None = None  # the oldest exchange's created_at (ISO text), for a raw export's expiry
        self.budget = budget
        self.over_budget = over_budget

    def track(self, chunks: Iterable[list[dict[str, Any]]], what: str) -> Iterator[list[dict[str, Any]]]:
        for chunk in chunks:
            if chunk:
                self.rows += len(chunk)
                if self.budget is not None and self.rows > self.budget:
                    raise ExportQuotaExceeded(self.over_budget)
                if what == "exchanges":
                    oldest = min((r["created_at"] for r in chunk if r.get("created_at")), default=None)
                    if oldest is not None and (self.oldest is None or oldest < self.oldest):
                        self.oldest = oldest
                if what == "events":
                    if self.first is None:
                        self.first = (chunk[0]["seq"], chunk[0]["hash"])
                    self.last = (chunk[-1]["seq"], chunk[-1]["hash"])
            yield chunk
            del chunk  # released before the next chunk is read


# --- the export -----------------------------------------------------------------------------------------------


def _console_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llm-console")
    except PackageNotFoundError:
        return "unknown"


def _take_checkpoint(ctx: AppContext) -> Any:
    from console.services import audit as audit_svc

    return audit_svc.checkpoint(ctx, "export")  # anchor(ctx).checkpoint(ctx.db, "export"), errors translated


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary owner-only file beside ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _user_error(exc: BaseException) -> ConsoleError | None:
    if isinstance(exc, ConsoleError):
        return exc
    if isinstance(exc, OSError):
        reason = exc.strerror or type(exc).__name__
        return StorageUnavailable(f"The export could not be written ({reason}); nothing was kept.")
    if isinstance(exc, OperationalError):
        return StorageUnavailable("The database could not be read for the export right now; nothing was kept. "
                                  "Try again later.")
    return None


def _record_failure(ctx: AppContext, actor_name: str, actor_id: int | None, spec: ExportSpec, out_path: Path,
                    exc: BaseException, request_id: int | None) -> None:
    details: dict[str, Any] = {"what": spec.what, "format": spec.format, "filters": spec.filter.to_dict(),
                               "file": out_path.name, "error": type(exc).__name__}
    if isinstance(exc, ConsoleError):
        details["message"] = str(exc)
    if request_id is not None:
        details["request_id"] = request_id
    try:
        with ctx.db.session() as s:
            audit_q.append_event(s, actor=actor_name, actor_id=actor_id, action="audit.export_failed",
                                 object_type="export", object_id=out_path.name, details=details)
    except Exception:  # the export's own error is the one to report
        logger.exception("could not record the failed export of %s", out_path.name)


def _export(ctx: AppContext, actor_name: str, actor_id: int | None, spec: ExportSpec, out_path: Path, *,
            include_raw: bool = False, request_id: int | None = None) -> ExportResult:
    """Write the export (``spec`` validated, ``out_path`` checked by the caller); see the module docstring."""
    manifest_path = _manifest_path(out_path)
    tmp: Path | None = None
    placed: list[Path] = []
    try:
        budget, over_budget = _quota(ctx, actor_name, actor_id)
        checkpoint = _take_checkpoint(ctx)
        cols = exports_q.columns(spec.what, include_raw=include_raw)
        tally = _Tally(budget, over_budget)
        fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".part")
        tmp = Path(tmp_name)
        with os.fdopen(fd, "wb") as raw:
            sink = _HashingFile(raw)
            # One read-only unit of work: never the write lock, whatever the size.
            with ctx.db.session(readonly=True) as s:
                upto = checkpoint.seq if spec.what == "events" else exports_q.upper_bound(s, spec.what)
                chunks = exports_q.iter_chunks(s, spec.what, spec.filter, upto=upto, include_raw=include_raw)
                _write(spec.format, tally.track(chunks, spec.what), sink, cols, spec.what)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out_path)
        tmp = None
        placed.append(out_path)

        checkpoint_dict = checkpoint.to_dict()
        manifest: dict[str, Any] = {
            "what": spec.what,
            "format": spec.format,
            "filters": spec.filter.to_dict(),
            "rows": tally.rows,
            "columns": list(cols),
            "file": out_path.name,
            "sha256": sink.sha256.hexdigest(),
            "size": sink.size,
            "checkpoint": checkpoint_dict,
            "chain_head": {"seq": checkpoint.seq, "hash": checkpoint.head_hash},
            "exported_by": actor_name,
            "exported_at": ctx.now().astimezone(UTC).isoformat(),
            "console_version": _console_version(),
            "raw_text": include_raw,
        }
        if spec.what == "events":
            manifest["first_event"] = None if tally.first is None else {"seq": tally.first[0], "hash": tally.first[1]}
            manifest["last_event"] = None if tally.last is None else {"seq": tally.last[0], "hash": tally.last[1]}
        if spec.format == "csv":
            manifest["csv"] = {"encoding": "utf-8", "null": "an unquoted empty field",
                               "formula_prefix": "one ' added before text starting with = + - @ tab CR LF "
                                                 "(after any leading ')"}
        if spec.format == "jsonl":
            manifest["jsonl"] = {"encoding": "utf-8", "json_columns": sorted(exports_q.json_columns(spec.what))}
        if request_id is not None:
            manifest["request_id"] = request_id
        expires_at = _expiry(ctx, include_raw, tally.oldest)
        manifest["expires_at"] = expires_at.astimezone(UTC).isoformat()
        _write_private(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False)
                                       + "\n").encode("utf-8"))
        placed.append(manifest_path)

        essentials = {k: manifest[k] for k in ("what", "format", "filters", "rows", "file", "sha256", "size",
                                               "raw_text")}
        essentials["checkpoint_seq"] = checkpoint.seq
        essentials["checkpoint_head"] = checkpoint.head_hash
        for key in ("first_event", "last_event", "request_id"):
            if key in manifest:
                essentials[key] = manifest[key]
        essentials["expires_at"] = manifest["expires_at"]
        with ctx.db.session() as s:
            record = exports_q.add_export_file(
                s, path=str(out_path), what=spec.what, format=spec.format, raw_text=include_raw, rows=tally.rows,
                size=sink.size, created_by=actor_name, created_by_id=actor_id, created_at=ctx.now(),
                expires_at=expires_at)
            file_id = record.id
            essentials["file_id"] = file_id
            audit_q.append_event(s, actor=actor_name, actor_id=actor_id, action="audit.export",
                                 object_type="export", object_id=out_path.name, details=essentials)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        for path in placed:
            path.unlink(missing_ok=True)
        _record_failure(ctx, actor_name, actor_id, spec, out_path, exc, request_id)
        user_error = _user_error(exc)
        if user_error is None or user_error is exc:
            raise
        raise user_error from exc
    logger.info("export written: %s rows of %s as %s to %s by %s", tally.rows, spec.what, spec.format,
                out_path.name, actor_name)
    return ExportResult(out_path, manifest_path, tally.rows, manifest["sha256"], manifest["size"], manifest,
                        file_id, expires_at)


@requires("audit.export")
def run_export(ctx: AppContext, actor: Principal, spec: ExportSpec, out_path: Path) -> ExportResult:
    """Export ``spec`` to ``out_path`` (which must not exist) with its manifest; audited. Never raw text."""
    spec = validated_spec(spec)
    path = check_out_path(out_path)
    return _export(ctx, actor.username, actor.user_id, spec, path)


def run_export_cli(ctx: AppContext, spec: ExportSpec, out_path: Path, actor_name: str = "cli") -> ExportResult:
    """:func:`run_export` from the command line (the shell user is trusted, as with ``init``); audited."""
    spec = validated_spec(spec)
    path = check_out_path(out_path)
    return _export(ctx, actor_name, None, spec, path)


# --- download and deletion of export files --------------------------------------------------------------------

DOWNLOAD_CHUNK = 64 * 1024
DELETE_ACTION = "audit.export_deleted"
DOWNLOAD_ACTION = "audit.export_downloaded"
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/jsonl; charset=utf-8",
               "parquet": "application/vnd.apache.parquet"}


@dataclass(frozen=True)
class ExportDownload:
    """An export file being downloaded: its name and size for the response headers, and its bytes in chunks."""

    file_id: int
    file_name: str
    size: int
    media_type: str
    chunks: Iterator[bytes]


def _unlink(path: Path) -> None:
    for target in (path, _manifest_path(path)):
        try:
            target.unlink(missing_ok=True)
        except OSError:
            logger.exception("could not delete the export file %s", target.name)


def _delete_files(ctx: AppContext, s: Session, rows: list[Any], reason: str, actor_name: str,
                  actor_id: int | None, extra: dict[str, Any] | None = None) -> int:
    """Delete these export files (and manifests) and mark their rows, with one ``audit.export_deleted`` event."""
    if not rows:
        return 0
    now = ctx.now()
    for row in rows:
        row.deleted_at, row.deleted_reason = now, reason
    s.flush()
    audit_q.append_event(s, actor=actor_name, actor_id=actor_id, action=DELETE_ACTION, object_type="export",
                         object_id=Path(rows[0].path).name if len(rows) == 1 else None,
                         details={"reason": reason, "files": [r.id for r in rows],
                                  "names": [Path(r.path).name for r in rows], "raw_text": any(r.raw_text for r in rows),
                                  **(extra or {})})
    for row in rows:
        _unlink(Path(row.path))
    return len(rows)


def _finish_download(ctx: AppContext, actor: Principal, file_id: int) -> None:
    """A download was sent whole: the file has done its job and is deleted (a cut download keeps it till expiry)."""
    with ctx.db.session() as s:
        row = exports_q.lock_export_file(s, file_id)
        if row is None or row.deleted_at is not None:
            return
        row.downloaded_at = ctx.now()
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action=DOWNLOAD_ACTION,
                             object_type="export", object_id=Path(row.path).name,
                             details={"file_id": row.id, "size": row.size, "raw_text": row.raw_text})
        _delete_files(ctx, s, [row], "downloaded", actor.username, actor.user_id)


def _chunks(ctx: AppContext, actor: Principal, file_id: int, handle: IO[bytes]) -> Iterator[bytes]:
    try:
        while block := handle.read(DOWNLOAD_CHUNK):
            yield block
    finally:
        handle.close()
    _finish_download(ctx, actor, file_id)  # only reached when every chunk was taken


@requires("audit.export")
def open_download(ctx: AppContext, actor: Principal, file_id: int) -> ExportDownload:
    """One's own export file, read in chunks as the response is sent (memory stays flat); once the last chunk is
    taken the file and its manifest are deleted (``audit.export_downloaded``, ``audit.export_deleted``).

    Only the person who made the export may download it (a raw-text one only while they may export raw text);
    a deleted or expired file is gone (NotFound)."""
    if isinstance(file_id, bool) or not isinstance(file_id, int):
        raise InvalidInput("An export file is named by its number.")
    with ctx.db.session(readonly=True) as s:
        row = exports_q.get_export_file(s, file_id)
        if row is None or row.created_by_id != actor.user_id:
            raise NotFound(f"There is no export #{file_id} of yours to download.")
        if row.deleted_at is not None or row.expires_at <= ctx.now():
            raise NotFound(f"Export #{file_id} is no longer kept ({row.deleted_reason or 'expired'}); export again.")
        path, size, fmt, raw = Path(row.path), row.size, row.format, row.raw_text
    if raw:
        authorize(ctx, actor, "audit.export_raw")
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise NotFound(f"Export #{file_id} is no longer kept; export again.") from None
    return ExportDownload(file_id, path.name, size, MEDIA_TYPES.get(fmt, "application/octet-stream"),
                          _chunks(ctx, actor, file_id, handle))


def delete_expired_exports(ctx: AppContext, *, now: datetime | None = None) -> int:
    """Delete export files past their ``expires_at`` (the retention task calls this), and any other file in the
    export folder older than ``export_file_hours`` that no live export owns (files from before 0017, a crashed
    export's leftovers). Returns how many files went; audited as ``audit.export_deleted`` (``expired``)."""
    now = now or ctx.now()
    with ctx.db.session() as s:
        deleted = _delete_files(ctx, s, exports_q.live_export_files(s, expired_by=now), "expired", SYSTEM_ACTOR, None)
        known = exports_q.known_export_paths(s)
    folder = ctx.settings.export_dir
    cutoff = (now - timedelta(hours=ctx.settings.export_file_hours)).timestamp()
    strays: list[str] = []
    if folder.is_dir():
        live = known | {k + MANIFEST_SUFFIX for k in known}
        for entry in folder.iterdir():
            try:
                if entry.is_file() and not entry.is_symlink() and str(entry) not in live \
                        and entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    strays.append(entry.name)
            except OSError:
                logger.exception("could not delete the stray export file %s", entry.name)
    if strays:
        with ctx.db.session() as s:
            audit_q.append_event(s, actor=SYSTEM_ACTOR, action=DELETE_ACTION, object_type="export",
                                 details={"reason": "expired", "files": [], "names": sorted(strays)})
    return deleted + len(strays)


def delete_exports_for_erasure(ctx: AppContext, user_id: int, actor_name: str, actor_id: int | None) -> int:
    """Delete every export file still kept when a person's content is erased: any export (events name actors,
    exchanges and decisions carry user ids, raw exports the text itself) may hold their data, and a file written
    before the erasure cannot be edited in place. Returns how many went; audited (``erasure``, the user id)."""
    with ctx.db.session() as s:
        return _delete_files(ctx, s, exports_q.live_export_files(s, created_before=ctx.now()), "erasure",
                             actor_name, actor_id, {"user": user_id})


# --- exports with raw text (four eyes) ------------------------------------------------------------------------


def _requester_of(session: Session, request_id: str) -> int | None:
    request = exports_q.get_export_request(session, int(request_id))
    return None if request is None else request.requested_by_id


DECIDE_RULE = register_duty_rule(
    DutyRule("audit.export_raw.decide", "nobody approves or rejects their own request for a raw-text export",
             owner_of=_requester_of)
)


def _view(s: Session, r: ExportRequest) -> ExportRequestView:
    names = exports_q.usernames(s, [r.requested_by_id, r.decided_by_id])
    return ExportRequestView(
        r.id, r.what, r.format, ExportFilter.from_dict(r.filters or {}), r.reason,
        names.get(r.requested_by_id, "?"), r.requested_by_id, r.status,
        None if r.decided_by_id is None else names.get(r.decided_by_id, "?"), r.decision_note, r.created_at,
        r.decided_at, r.used_at,
    )


def _redact(ctx: AppContext, text: str) -> str:
    from console.services.moderation import redact_pii

    return redact_pii(ctx, text)


def _deny(ctx: AppContext, actor: Principal, action: str, reason: str, request_id: int) -> None:
    with ctx.db.session() as s:
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="access.denied",
                             object_type="export_request", object_id=request_id,
                             details={"action": action, "reason": reason})
    logger.warning("access denied: user=%s action=%s request=%s reason=%s", actor.username, action, request_id,
                   reason)


def _ensure_requester(ctx: AppContext, actor: Principal, request_id: int, action: str, message: str) -> None:
    # A read-only unit of work first: the refusal is audited in its own transaction. The requester never changes.
    with ctx.db.session(readonly=True) as s:
        request = exports_q.get_export_request(s, request_id)
        if request is None:
            raise NotFound(f"There is no export request #{request_id}.")
        requester = request.requested_by_id
    if requester != actor.user_id:
        _deny(ctx, actor, action, "not the requester", request_id)
        raise AccessDenied(message)


def _locked(s: Session, request_id: int) -> ExportRequest:
    request = exports_q.lock_export_request(s, request_id)
    if request is None:
        raise NotFound(f"There is no export request #{request_id}.")
    return request


def _request_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput("Choose an export request.")
    return value


@requires("audit.export_raw")
def request_raw_export(ctx: AppContext, actor: Principal, spec: ExportSpec, reason: str) -> ExportRequestView:
    """Ask for an export of exchanges with their raw text; another admin must approve it. Audited."""
    spec = validated_spec(spec)
    if spec.what != "exchanges":
        raise InvalidInput("Raw text exists only for exchanges: choose exchanges.")
    text = clean_text(reason if isinstance(reason, str) else "").strip()
    if len(text) < MIN_REASON_CHARS:
        raise InvalidInput(f"Say why you need the raw text (at least {MIN_REASON_CHARS} characters); "
                           "it is recorded in the audit log.")
    if len(text) > MAX_REASON_CHARS:
        raise InvalidInput(f"Keep the reason under {MAX_REASON_CHARS:,} characters.")
    text = _redact(ctx, text)
    with ctx.db.session() as s:
        request = exports_q.create_export_request(
            s, what=spec.what, format=spec.format, filters=spec.filter.to_dict(), reason=text,
            requested_by_id=actor.user_id, created_at=ctx.now())
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="audit.export_raw_requested",
                             object_type="export_request", object_id=request.id,
                             details={"what": spec.what, "format": spec.format, "filters": spec.filter.to_dict(),
                                      "reason": text})
        return _view(s, request)


@requires("audit.approve_export")
def decide_raw_export(ctx: AppContext, actor: Principal, request_id: int, approve: bool,
                      note: str | None = None) -> ExportRequestView:
    """Approve or reject someone else's pending raw-text export request (never one's own). Audited."""
    request_id = _request_id(request_id)
    if not isinstance(approve, bool):
        raise InvalidInput("Choose approve or reject.")
    with ctx.db.session(readonly=True) as s:
        if exports_q.get_export_request(s, request_id) is None:
            raise NotFound(f"There is no export request #{request_id}.")
        ensure_separation(ctx, s, actor, DECIDE_RULE.name, str(request_id))
    text = clean_text(note if isinstance(note, str) else "").strip() or None
    if text is not None and len(text) > MAX_NOTE_CHARS:
        raise InvalidInput(f"Keep the note under {MAX_NOTE_CHARS:,} characters.")
    if text is not None:
        text = _redact(ctx, text)
    status = "approved" if approve else "rejected"
    with ctx.db.session() as s:
        request = _locked(s, request_id)
        if request.requested_by_id == actor.user_id:  # checked above; the requester never changes
            raise AccessDenied(f"Separation of duties: {DECIDE_RULE.description}.")
        if request.status != "pending":
            raise InvalidInput(f"Export request #{request_id} is already {request.status}.")
        request.status = status
        request.decided_by_id = actor.user_id
        request.decision_note = text
        request.decided_at = ctx.now()
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action=f"audit.export_raw_{status}",
                             object_type="export_request", object_id=request_id,
                             details={"requested_by_id": request.requested_by_id, "note": text})
        return _view(s, request)


@requires("audit.export_raw")
def cancel_raw_export(ctx: AppContext, actor: Principal, request_id: int) -> ExportRequestView:
    """Withdraw one's own pending or approved (not yet used) raw-text export request. Audited."""
    request_id = _request_id(request_id)
    _ensure_requester(ctx, actor, request_id, "audit.export_raw.cancel",
                      "Only the person who asked for an export can cancel it.")
    with ctx.db.session() as s:
        request = _locked(s, request_id)
        if request.status not in ("pending", "approved"):
            raise InvalidInput(f"Export request #{request_id} is already {request.status}.")
        before = request.status
        request.status = "cancelled"
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="audit.export_raw_cancelled",
                             object_type="export_request", object_id=request_id, details={"before": before})
        return _view(s, request)


@requires("audit.export_raw")
def list_export_requests(ctx: AppContext, actor: Principal, status: str | None = None,
                         limit: int = 100) -> list[ExportRequestView]:
    """Raw-text export requests, newest first (``status``: pending, approved, rejected, cancelled or used)."""
    if status is not None and status not in ("pending", "approved", "rejected", "cancelled", "used"):
        raise InvalidInput(f"Unknown request status {status!r}.")
    with ctx.db.session(readonly=True) as s:
        return [_view(s, r) for r in exports_q.list_export_requests(s, status=status, limit=max(1, min(limit, 1000)))]


@requires("audit.export_raw")
def run_approved_raw_export(ctx: AppContext, actor: Principal, request_id: int, out_path: Path) -> ExportResult:
    """Run one's own approved request, once: exchanges with their raw text. Audited.

    The approval is used up when the export starts; if the export fails (nothing is kept), it is approved again.
    """
    request_id = _request_id(request_id)
    _ensure_requester(ctx, actor, request_id, "audit.export_raw.run",
                      "Only the person who asked for a raw-text export can run it.")
    path = check_out_path(out_path)
    with ctx.db.session() as s:
        request = _locked(s, request_id)
        if request.status == "used":
            raise InvalidInput(f"Export request #{request_id} was already used; ask again for another export.")
        if request.status != "approved":
            raise InvalidInput(f"Export request #{request_id} is {request.status}, not approved.")
        spec = validated_spec(ExportSpec(request.what, request.format, ExportFilter.from_dict(request.filters or {})))
        request.status = "used"
        request.used_at = ctx.now()
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="audit.export_raw_run",
                             object_type="export_request", object_id=request_id, details={"file": path.name})
    try:
        return _export(ctx, actor.username, actor.user_id, spec, path, include_raw=True, request_id=request_id)
    except BaseException:
        try:
            with ctx.db.session() as s:  # nothing left the store: the approval may be used again
                request = _locked(s, request_id)
                if request.status == "used":
                    request.status = "approved"
                    request.used_at = None
        except Exception:
            logger.exception("could not restore the approval of export request #%s", request_id)
        raise

