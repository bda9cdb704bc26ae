"""Requests for exports with raw text, approved by a second person (``console.services.export_approvals``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.tables import ExportRequest


def create_export_request(session: Session, *, what: str, format: str, filters: Mapping[str, Any], reason: str,
                          requested_by_id: int, created_at: datetime) -> ExportRequest:
    """A pending request (flushed, so it has its id); the caller audits it."""
    request = ExportRequest(what=what, format=format, filters=dict(filters), reason=reason,
                            requested_by_id=requested_by_id, status="pending", created_at=created_at)
    session.add(request)
    session.flush()
    return request


def get_export_request(session: Session, request_id: int) -> ExportRequest | None:
    return session.get(ExportRequest, request_id)


def lock_export_request(session: Session, request_id: int) -> ExportRequest | None:
    """The request, locked for the rest of the transaction (PostgreSQL; SQLite's write lock is already held)."""
    return session.scalars(
        select(ExportRequest).where(ExportRequest.id == request_id).with_for_update()
    ).first()


def list_export_requests(session: Session, *, status: str | None = None, limit: int = 100) -> list[ExportRequest]:
    """Requests, newest first."""
    stmt = select(ExportRequest).order_by(ExportRequest.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(ExportRequest.status == status)
    return list(session.scalars(stmt))
