"""Streamed exports of the audit log, the exchanges and the review decisions (CSV, JSON Lines, Parquet).

An export reads its rows in keyset chunks (``db.exports``) inside one read-only session and writes each chunk
as it comes, so memory stays flat however many rows match. It first takes a signed checkpoint of the audit chain
(an events export covers the chain up to that checkpoint), writes to a temporary file beside the target, hashes
while writing, then renames it into place and writes ``<file>.manifest.json`` beside it: what, filters, rows,
sha256 and size, the checkpoint, who and when. The export is an ``audit.export`` event (the manifest's essentials,
never the data). A failure removes what was written and records only an ``audit.export_failed`` event.

The formats are ``console.services.export_formats``; what happens to a file afterwards (download, expiry,
erasure) is ``console.services.export_files``; raw-text exports under four eyes are
``console.services.export_approvals``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from console.services import audit as audit_svc
from console.services.access import Principal, requires, shell_os_user
from console.services.context import AppContext
from console.services.errors import ConsoleError, InvalidInput, StorageUnavailable
from console.services.export_formats import EXTENSIONS, FORMATS, HashingFile, write_rows
from console.services.text import clean_text
from db import audit as audit_q
from db import export_files as files_q
from db import exports as exports_q
from db.exports import KINDS, ExportFilter

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS", "KINDS", "ExportFilter", "ExportResult", "ExportSpec", "check_out_path", "default_export_path",
    "manifest_path", "run_export", "validated_spec", "write_export",
]

MAX_ACTOR_CHARS = 200
MAX_PREFIX_CHARS = 100
MAX_MODEL_VERSION_CHARS = 200
MANIFEST_SUFFIX = ".manifest.json"


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
    """``out_path`` made absolute (the file is recorded, and deleted when it expires, by a console process whose
    working folder is not the shell's), once it is a new file name in a folder that exists."""
    path = Path(out_path).absolute()
    if not path.name or path.name in (".", ".."):
        raise InvalidInput(f"{path} is not a file name.")
    if not path.parent.is_dir():
        raise InvalidInput(f"The folder {path.parent} does not exist.")
    manifest = manifest_path(path)
    for existing in (path, manifest):
        if existing.exists() or existing.is_symlink():
            raise InvalidInput(f"{existing} already exists; choose another file name.")
    return path


def manifest_path(path: Path) -> Path:
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
    :class:`ExportQuotaExceeded` when none are left. The shell (``shell:<OS user>``, or no user id) is not bounded:
    whoever runs the command can read the database file anyway."""
    if actor_id is None or shell_os_user(actor_name) is not None:
        return None, ""
    limit, now = ctx.settings.export_rows_per_hour, ctx.now()
    with ctx.db.session(readonly=True) as s:
        used, oldest = files_q.exported_since(s, actor_id, now - QUOTA_WINDOW)
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
    return audit_svc.checkpoint(ctx, "export")  # anchor(ctx).checkpoint(ctx.db, "export"), errors translated


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


def write_export(ctx: AppContext, actor_name: str, actor_id: int | None, spec: ExportSpec, out_path: Path, *,
            include_raw: bool = False, request_id: int | None = None) -> ExportResult:
    """Write the export (``spec`` validated, ``out_path`` checked by the caller); see the module docstring.

    No access check: the callers (:func:`run_export`, the raw-text approvals) checked the principal."""
    manifest_file = manifest_path(out_path)
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
            sink = HashingFile(raw)
            # One read-only unit of work: never the write lock, whatever the size.
            with ctx.db.session(readonly=True) as s:
                upto = checkpoint.seq if spec.what == "events" else exports_q.upper_bound(s, spec.what)
                chunks = exports_q.iter_chunks(s, spec.what, spec.filter, upto=upto, include_raw=include_raw)
                write_rows(spec.format, tally.track(chunks, spec.what), sink, cols, spec.what)
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
        audit_q.write_private_text(manifest_file, json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False)
                                   + "\n")
        placed.append(manifest_file)

        essentials = {k: manifest[k] for k in ("what", "format", "filters", "rows", "file", "sha256", "size",
                                               "raw_text")}
        essentials["checkpoint_seq"] = checkpoint.seq
        essentials["checkpoint_head"] = checkpoint.head_hash
        for key in ("first_event", "last_event", "request_id"):
            if key in manifest:
                essentials[key] = manifest[key]
        essentials["expires_at"] = manifest["expires_at"]
        with ctx.db.session() as s:
            record = files_q.add_export_file(
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
    return ExportResult(out_path, manifest_file, tally.rows, manifest["sha256"], manifest["size"], manifest,
                        file_id, expires_at)


@requires("audit.export")
def run_export(ctx: AppContext, actor: Principal, spec: ExportSpec, out_path: Path) -> ExportResult:
    """Export ``spec`` to ``out_path`` (which must not exist) with its manifest; audited. Never raw text."""
    spec = validated_spec(spec)
    path = check_out_path(out_path)
    return write_export(ctx, actor.username, actor.user_id, spec, path)


