"""Registered model versions (what the engine host can serve), their aliases and the aliases' history.

The ``production`` alias is the desired state: the version every console process should serve.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.audit import append_event
from db.tables import AliasMove, EmergencyMove, ModelAlias, ModelVersion, ProtectedAlias
from db.types import utcnow

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
    quantization: str | None = None,
    fingerprint: str | None = None,
    fingerprint_files: list[dict[str, Any]] | None = None,
    base_version_id: int | None = None,
    backend: str = "in-process",
    server_urls: list[str] | None = None,
    server_model: str | None = None,
    server_info: Mapping[str, Any] | None = None,
) -> ModelVersion:
    """Register a model version (``source``: local path or hub id; ``engine_args`` pass to vLLM); audited.

    With ``base_version_id`` the version is a LoRA adapter (``source`` its directory) served on that base.
    ``backend`` says where its engine runs (engine.types.BACKENDS); a ``server`` version names its servers' base
    URLs, the model name they serve and what they reported at registration (``server_info``: model, root,
    max_model_len). No API key is ever passed here: it is a setting of the installation.
    """
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
        quantization=quantization,
        fingerprint=fingerprint,
        fingerprint_files=list(fingerprint_files or []),
        base_version_id=base_version_id,
        backend=backend,
        server_urls=list(server_urls) if server_urls else None,
        server_model=server_model,
        server_info=dict(server_info) if server_info is not None else None,
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
            "quantization": quantization,
            "fingerprint": fingerprint,
            "base_version_id": base_version_id,
            "backend": backend,
            "server_urls": version.server_urls,
            "server_model": server_model,
            "server_info": version.server_info,
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


PRODUCTION = "production"


def get_alias(session: Session, alias: str) -> ModelAlias | None:
    """The alias row (which version it points at), or None if the alias was never set."""
    return session.get(ModelAlias, alias)


def version_for_alias(session: Session, alias: str) -> ModelVersion | None:
    """The version an alias points at, or None."""
    row = session.get(ModelAlias, alias)
    return None if row is None else session.get(ModelVersion, row.version_id)


def aliases_by_version(session: Session) -> dict[int, list[str]]:
    """Every version id that holds aliases, with its aliases sorted by name."""
    out: dict[int, list[str]] = {}
    for row in session.scalars(select(ModelAlias).order_by(ModelAlias.alias)):
        out.setdefault(row.version_id, []).append(row.alias)
    return out


def move_alias(
    session: Session, alias: str, version: ModelVersion, *, actor: str, actor_id: int | None, reason: str
) -> AliasMove:
    """Point ``alias`` at ``version`` (creating the alias if new); history row and audit event in this session.

    The alias row is locked first, so two concurrent moves serialise and the history records both in order.
    """
    row = session.scalars(select(ModelAlias).where(ModelAlias.alias == alias).with_for_update()).one_or_none()
    before = None if row is None else row.version_id
    if row is None:
        row = ModelAlias(alias=alias, version_id=version.id, updated_at=utcnow(), updated_by_id=actor_id)
        session.add(row)
    else:
        row.version_id, row.updated_at, row.updated_by_id = version.id, utcnow(), actor_id
    move = AliasMove(alias=alias, from_version_id=before, to_version_id=version.id, actor=actor,
                     actor_id=actor_id, reason=reason, created_at=utcnow())
    session.add(move)
    session.flush()
    previous = None if before is None else session.get(ModelVersion, before)
    append_event(
        session,
        actor=actor,
        actor_id=actor_id,
        action="model.alias",
        object_type="model_version",
        object_id=version.id,
        details={"alias": alias, "from": previous.name if previous else None, "to": version.name,
                 "reason": reason},
    )
    return move


def remove_alias(session: Session, alias: str, *, actor: str, actor_id: int | None, reason: str) -> bool:
    """Remove an alias (never ``production``, which must always point somewhere); False if it was not set."""
    if alias == PRODUCTION:
        raise ValueError("the production alias cannot be removed, only moved")
    row = session.scalars(select(ModelAlias).where(ModelAlias.alias == alias).with_for_update()).one_or_none()
    if row is None:
        return False
    before = row.version_id
    session.delete(row)
    session.add(AliasMove(alias=alias, from_version_id=before, to_version_id=None, actor=actor, actor_id=actor_id,
                          reason=reason, created_at=utcnow()))
    session.flush()
    append_event(session, actor=actor, actor_id=actor_id, action="model.alias_removed",
                 object_type="model_version", object_id=before, details={"alias": alias, "reason": reason})
    return True


def alias_moves(session: Session, *, alias: str | None = None, version_id: int | None = None,
                limit: int = 200) -> list[AliasMove]:
    """Alias history, newest first, optionally for one alias or one version (moved to or from it)."""
    stmt = select(AliasMove).order_by(AliasMove.id.desc()).limit(limit)
    if alias is not None:
        stmt = stmt.where(AliasMove.alias == alias)
    if version_id is not None:
        stmt = stmt.where((AliasMove.to_version_id == version_id) | (AliasMove.from_version_id == version_id))
    return list(session.scalars(stmt))


def retire_version(session: Session, version: ModelVersion, *, actor: str, actor_id: int | None,
                   reason: str) -> None:
    """Mark a version retired (it can no longer be served or hold an alias); audited."""
    version.retired_at = utcnow()
    version.status = "retired"
    session.flush()
    append_event(session, actor=actor, actor_id=actor_id, action="model.retire", object_type="model_version",
                 object_id=version.id, details={"name": version.name, "reason": reason})


# --- four eyes: protected aliases and the single-person moves still allowed -----------------------------------


def protected_aliases(session: Session) -> dict[str, ProtectedAlias | None]:
    """Every protected alias by name: ``production`` (always, with no row) and those an admin marked."""
    out: dict[str, ProtectedAlias | None] = {PRODUCTION: None}
    for row in session.scalars(select(ProtectedAlias).order_by(ProtectedAlias.alias)):
        out[row.alias] = row
    return out


def is_protected(session: Session, alias: str) -> bool:
    """True for ``production`` and every alias an admin marked protected."""
    return alias == PRODUCTION or session.get(ProtectedAlias, alias) is not None


def protect_alias(session: Session, alias: str, *, actor: str, actor_id: int | None, reason: str) -> bool:
    """Mark ``alias`` protected (False if it already was); audited as ``model.alias_protect``."""
    if is_protected(session, alias):
        return False
    session.add(ProtectedAlias(alias=alias, protected_by=actor, protected_by_id=actor_id, reason=reason,
                               created_at=utcnow()))
    session.flush()
    append_event(session, actor=actor, actor_id=actor_id, action="model.alias_protect", object_type="model_alias",
                 object_id=alias, details={"alias": alias, "reason": reason})
    return True


def unprotect_alias(session: Session, alias: str) -> bool:
    """Remove the protection row of ``alias`` (never ``production``); the caller records it as an emergency move.
    False if it was not protected."""
    if alias == PRODUCTION:
        raise ValueError("the production alias is always protected")
    row = session.get(ProtectedAlias, alias)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


EMERGENCY_ACTIONS = {False: "model.emergency_rollback", True: "model.break_glass"}


def record_emergency(session: Session, *, kind: str, alias: str, from_version: ModelVersion | None,
                     to_version: ModelVersion | None, actor: str, actor_id: int | None, reason: str,
                     break_glass: bool, details: Mapping[str, Any] | None = None) -> EmergencyMove:
    """Store a single-person move of a protected alias, to be shown until another admin acknowledges it; audited
    as ``model.emergency_rollback`` (or ``model.break_glass`` for a shell command with ``--break-glass``)."""
    move = EmergencyMove(kind=kind, alias=alias, from_version_id=from_version.id if from_version else None,
                         to_version_id=to_version.id if to_version else None, actor=actor, actor_id=actor_id,
                         reason=reason, break_glass=break_glass, created_at=utcnow())
    session.add(move)
    session.flush()
    append_event(session, actor=actor, actor_id=actor_id, action=EMERGENCY_ACTIONS[break_glass],
                 object_type="emergency_move", object_id=move.id,
                 details={**dict(details or {}), "kind": kind, "alias": alias,
                          "from": from_version.name if from_version else None,
                          "to": to_version.name if to_version else None, "reason": reason,
                          "break_glass": break_glass})
    return move


def get_emergency(session: Session, move_id: int, *, lock: bool = False) -> EmergencyMove | None:
    """One emergency move (``lock``: re-read and locked for the rest of the transaction)."""
    stmt = select(EmergencyMove).where(EmergencyMove.id == move_id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return session.scalars(stmt).one_or_none()


def unacknowledged_emergencies(session: Session) -> list[EmergencyMove]:
    """Emergency moves no second admin has acknowledged yet, newest first."""
    stmt = select(EmergencyMove).where(EmergencyMove.acknowledged_at.is_(None)).order_by(EmergencyMove.id.desc())
    return list(session.scalars(stmt))


def acknowledge_emergency(session: Session, move: EmergencyMove, *, actor: str, actor_id: int,
                          note: str | None) -> None:
    """Record that ``actor`` (another admin) saw and accepts the move; audited as
    ``model.emergency_acknowledged``."""
    move.acknowledged_by, move.acknowledged_by_id, move.acknowledged_at = actor, actor_id, utcnow()
    move.ack_note = note
    session.flush()
    append_event(session, actor=actor, actor_id=actor_id, action="model.emergency_acknowledged",
                 object_type="emergency_move", object_id=move.id,
                 details={"kind": move.kind, "alias": move.alias, "by": move.actor, "note": note,
                          "break_glass": move.break_glass})
