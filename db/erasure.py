"""Erasure requests: one account's content, by user id, asked for by one admin and carried out by another."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.tables import ErasureRequest


def create_erasure_request(session: Session, *, user_id: int, reason: str, legal_basis: str | None,
                           requested_by_id: int | None, created_at: datetime) -> ErasureRequest:
    """A pending request (flushed, so it has its id); ``requested_by_id`` None is the shell. The caller audits it."""
    request = ErasureRequest(user_id=user_id, reason=reason, legal_basis=legal_basis,
                             requested_by_id=requested_by_id, status="pending", created_at=created_at)
    session.add(request)
    session.flush()
    return request


def get_erasure_request(session: Session, request_id: int) -> ErasureRequest | None:
    return session.get(ErasureRequest, request_id)


def lock_erasure_request(session: Session, request_id: int) -> ErasureRequest | None:
    """The request, locked for the rest of the transaction (PostgreSQL; SQLite's write lock is already held)."""
    return session.scalars(select(ErasureRequest).where(ErasureRequest.id == request_id).with_for_update()).first()


def pending_request_for(session: Session, user_id: int) -> ErasureRequest | None:
    """The open request to erase ``user_id``'s content, if any (one at a time per account)."""
    return session.scalars(select(ErasureRequest).where(ErasureRequest.user_id == user_id,
                                                        ErasureRequest.status == "pending").limit(1)).first()


def list_erasure_requests(session: Session, *, status: str | None = None, limit: int = 100) -> list[ErasureRequest]:
    """Requests, newest first."""
    stmt = select(ErasureRequest).order_by(ErasureRequest.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(ErasureRequest.status == status)
    return list(session.scalars(stmt))
