"""Registered model versions (what the engine host can serve)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.audit import append_event
from db.models import ModelVersion

logger = logging.getLogger(__name__)


def register_model_version(
    session: Session,
    *,
    name: str,
    source: str,
    actor: str,
    actor_id: int | None = None,
    revision: str | None = None,
    dtype: str | None = None,
    max_model_len: int | None = None,
    engine_args: Mapping[str, Any] | None = None,
    description: str | None = None,
    status: str = "registered",
) -> ModelVersion:
    """Register a model version (``source``: local path or hub id; ``engine_args`` pass to vLLM); audited."""
    version = ModelVersion(
        name=name,
        source=source,
        revision=revision,
        dtype=dtype,
        max_model_len=max_model_len,
        engine_args=dict(engine_args or {}),
        description=description,
        status=status,
        created_by_id=actor_id,
    )
    session.add(version)
    session.flush()
    append_event(
        session,
        actor=actor,
        actor_id=actor_id,
        action="model.register",
        object_type="model_version",
        object_id=version.id,
        details={
            "name": name,
            "source": source,
            "revision": revision,
            "dtype": dtype,
            "max_model_len": max_model_len,
            "engine_args": version.engine_args,
            "status": status,
        },
    )
    return version


def set_model_version_status(
    session: Session, version_id: int, status: str, *, actor: str, actor_id: int | None = None
) -> ModelVersion:
    """Change a version's status (e.g. 'registered' -> 'approved' -> 'retired'); audited with before/after."""
    version = session.scalars(
        select(ModelVersion).where(ModelVersion.id == version_id).with_for_update()
    ).one()
    before = version.status
    version.status = status
    session.flush()
    append_event(
        session,
        actor=actor,
        actor_id=actor_id,
        action="model.status",
        object_type="model_version",
        object_id=version.id,
        details={"name": version.name, "before": before, "after": status},
    )
    return version


def list_model_versions(session: Session, *, status: str | None = None) -> list[ModelVersion]:
    """Model versions, newest first, optionally only those with ``status``."""
    stmt = select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
    if status is not None:
        stmt = stmt.where(ModelVersion.status == status)
    return list(session.scalars(stmt))


def get_model_version_by_name(session: Session, name: str) -> ModelVersion | None:
    """The model version with this name, or None."""
    return session.scalars(select(ModelVersion).where(ModelVersion.name == name)).one_or_none()


def get_model_version(session: Session, version_id: int) -> ModelVersion | None:
    """The model version with this id, or None."""
    return session.get(ModelVersion, version_id)
