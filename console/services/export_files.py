"""The lifetime of export files: one's own file downloaded in chunks (then deleted), files past their hours deleted
by the retention task, every kept file deleted when a person's content is erased. Each deletion is an
``audit.export_deleted`` event. ``console.services.exports`` writes the files and sets their expiry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy.orm import Session

from console.services import exports as exports_svc
from console.services.access import Principal, authorize, requires
from console.services.context import AppContext
from console.services.errors import InvalidInput, NotFound
from db import audit as audit_q
from db import export_files as files_q

logger = logging.getLogger(__name__)

SYSTEM_ACTOR = "system"  # retention's deletions of expired export files
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
    for target in (path, exports_svc.manifest_path(path)):
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
        row = files_q.lock_export_file(s, file_id)
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
        row = files_q.get_export_file(s, file_id)
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
        deleted = _delete_files(ctx, s, files_q.live_export_files(s, expired_by=now), "expired", SYSTEM_ACTOR, None)
        known = files_q.known_export_paths(s)
    folder = ctx.settings.export_dir
    cutoff = (now - timedelta(hours=ctx.settings.export_file_hours)).timestamp()
    strays: list[str] = []
    if folder.is_dir():
        live = known | {k + exports_svc.MANIFEST_SUFFIX for k in known}
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
        return _delete_files(ctx, s, files_q.live_export_files(s, created_before=ctx.now()), "erasure",
                             actor_name, actor_id, {"user": user_id})
