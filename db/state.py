"""Small process-independent facts, e.g. which model version is live (key ``live_model``)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.audit import append_event
from db.tables import AppState
from db.types import utcnow

logger = logging.getLogger(__name__)

LIVE_MODEL_KEY = "live_model"


def get_state(session: Session, key: str, default: Any = None) -> Any:
    """The JSON value stored under ``key``, or ``default``."""
    row = session.get(AppState, key)
    return default if row is None else row.value


def set_state(session: Session, key: str, value: Any, *, actor: str, actor_id: int | None = None) -> None:
    """Store a JSON value under ``key``; audited as ``state.set`` with the old and new value."""
    row = session.scalars(select(AppState).where(AppState.key == key).with_for_update()).one_or_none()
    before = None if row is None else row.value
    if row is None:
        session.add(AppState(key=key, value=value, updated_at=utcnow()))
    else:
        row.value = value
        row.updated_at = utcnow()
    session.flush()
    append_event(
        session,
        actor=actor,
        actor_id=actor_id,
        action="state.set",
        object_type="app_state",
        object_id=key,
        details={"key": key, "before": before, "after": value},
    )
