"""Export files and their lifetime (0017_export_files): each written file's row, found again for its download,
its expiry and an erasure, and the rows a person exported lately (the hourly quota).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.tables import ExportFile


def add_export_file(session: Session, *, path: str, what: str, format: str, raw_text: bool, rows: int, size: int,
                    created_by: str, created_by_id: int | None, created_at: datetime,
                    expires_at: datetime) -> ExportFile:
    """Record an export file just written; it lives until its download or ``expires_at``."""
    row = ExportFile(path=path, what=what, format=format, raw_text=raw_text, rows=rows, size=size,
                     created_by=created_by, created_by_id=created_by_id, created_at=created_at,
                     expires_at=expires_at)
    session.add(row)
    session.flush()
    return row


def get_export_file(session: Session, file_id: int) -> ExportFile | None:
    return session.get(ExportFile, file_id)


def lock_export_file(session: Session, file_id: int) -> ExportFile | None:
    """The export file's row, locked for the rest of the transaction (one download or deletion at a time)."""
    stmt = select(ExportFile).where(ExportFile.id == file_id).with_for_update()
    return session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()


def live_export_files(session: Session, *, expired_by: datetime | None = None,
                      created_before: datetime | None = None) -> list[ExportFile]:
    """Export files not deleted yet: all, those expired by ``expired_by``, or those written before
    ``created_before``; oldest first."""
    stmt = select(ExportFile).where(ExportFile.deleted_at.is_(None))
    if expired_by is not None:
        stmt = stmt.where(ExportFile.expires_at <= expired_by)
    if created_before is not None:
        stmt = stmt.where(ExportFile.created_at <= created_before)
    return list(session.scalars(stmt.order_by(ExportFile.id)))


def known_export_paths(session: Session) -> set[str]:
    """The path of every export file ever recorded (deleted or not)."""
    return set(session.scalars(select(ExportFile.path)))


def exported_since(session: Session, user_id: int, since: datetime) -> tuple[int, datetime | None]:
    """Rows ``user_id`` exported since ``since`` (whatever became of the files) and when the oldest of those
    exports was written (the quota frees up an hour after it)."""
    row = session.execute(select(func.coalesce(func.sum(ExportFile.rows), 0), func.min(ExportFile.created_at))
                          .where(ExportFile.created_by_id == user_id, ExportFile.created_at >= since)).one()
    return int(row[0]), row[1]
