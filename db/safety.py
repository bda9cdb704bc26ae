"""Moderation policy versions, scanner findings and the raw (unredacted) texts kept apart."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.audit import append_event
from db.tables import DIRECTIONS, Finding, PolicyVersion, RawText
from db.types import utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FindingRecord:
    """One scanner finding to store: what was found where, and what the policy did about it."""

    direction: str  # 'prompt' or 'output'
    detector: str
    label: str
    score: float
    action: str
    detector_version: str | None = None
    start: int | None = None
    end: int | None = None


@dataclass(frozen=True)
class RawTextRecord:
    """The unredacted text of one side of an exchange, kept apart because the policy says so."""

    direction: str  # 'prompt' or 'output'
    text: str


def store_policy_version(
    session: Session, content: str, created_by_id: int | None, *, actor: str
) -> PolicyVersion:
    """Store the policy text as the next version, unless it equals the latest (then return that).

    Audited as ``policy.version`` only when a new version is written.
    """
    digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
    latest = latest_policy_version(session)
    if latest is not None and latest.sha256 == digest:
        return latest
    version = PolicyVersion(
        version=1 if latest is None else latest.version + 1,
        content=content,
        sha256=digest,
        created_by_id=created_by_id,
    )
    session.add(version)
    session.flush()
    append_event(
        session,
        actor=actor,
        actor_id=created_by_id,
        action="policy.version",
        object_type="policy_version",
        object_id=version.version,
        details={
            "version": version.version,
            "sha256": digest,
            "previous": None if latest is None else latest.version,
        },
    )
    return version


def latest_policy_version(session: Session) -> PolicyVersion | None:
    """The newest stored policy version, or None."""
    return session.scalars(select(PolicyVersion).order_by(PolicyVersion.version.desc()).limit(1)).first()


def add_findings(
    session: Session,
    exchange_id: int,
    findings: Iterable[FindingRecord],
    *,
    actor: str,
    actor_id: int | None = None,
) -> list[Finding]:
    """Store the findings of one exchange; audited as one ``safety.findings`` event (labels, no text)."""
    rows = []
    for f in findings:
        if f.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {f.direction!r}")
        rows.append(
            Finding(
                exchange_id=exchange_id,
                direction=f.direction,
                detector=f.detector,
                detector_version=f.detector_version,
                label=f.label,
                score=float(f.score),
                start=f.start,
                end=f.end,
                action=f.action,
            )
        )
    if not rows:
        return []
    session.add_all(rows)
    session.flush()
    append_event(
        session,
        actor=actor,
        actor_id=actor_id,
        action="safety.findings",
        object_type="exchange",
        object_id=exchange_id,
        details={
            "findings": [
                {
                    "direction": r.direction,
                    "detector": r.detector,
                    "label": r.label,
                    "score": r.score,
                    "action": r.action,
                }
                for r in rows
            ]
        },
    )
    return rows


def list_findings(session: Session, exchange_id: int) -> list[Finding]:
    """The findings of one exchange, in the order they were stored."""
    return list(
        session.scalars(select(Finding).where(Finding.exchange_id == exchange_id).order_by(Finding.id))
    )


def store_raw_text(session: Session, exchange_id: int, direction: str, text: str) -> RawText:
    """Keep the unredacted text of one side of an exchange (call inside the exchange's transaction)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    row = RawText(exchange_id=exchange_id, direction=direction, text=text)
    session.add(row)
    session.flush()
    return row


def raw_text_directions(session: Session, exchange_id: int) -> tuple[str, ...]:
    """Which sides of an exchange still have raw text kept (not erased); the text itself is not read."""
    return tuple(
        sorted(
            session.scalars(
                select(RawText.direction).where(RawText.exchange_id == exchange_id, RawText.erased_at.is_(None))
            )
        )
    )


def reveal_raw_text(
    session: Session, exchange_id: int, direction: str, *, actor: str, actor_id: int | None = None
) -> str | None:
    """The raw text for a reviewer allowed to see it; every reveal is audited as ``safety.raw_reveal``.

    Returns None if none was kept or it was erased (the attempt is still audited).
    """
    row = session.scalars(
        select(RawText).where(RawText.exchange_id == exchange_id, RawText.direction == direction)
    ).first()
    found = row is not None and row.erased_at is None
    append_event(
        session,
        actor=actor,
        actor_id=actor_id,
        action="safety.raw_reveal",
        object_type="exchange",
        object_id=exchange_id,
        details={"direction": direction, "found": found},
    )
    return row.text if found and row is not None else None


def erase_raw_text(
    session: Session, exchange_id: int, *, actor: str, actor_id: int | None = None, reason: str | None = None
) -> int:
    """Blank every raw text of an exchange and stamp ``erased_at``; returns how many were erased. Audited."""
    rows = list(
        session.scalars(
            select(RawText)
            .where(RawText.exchange_id == exchange_id, RawText.erased_at.is_(None))
            .with_for_update()
        )
    )
    now = utcnow()
    for row in rows:
        row.text = ""
        row.erased_at = now
    session.flush()
    append_event(
        session,
        actor=actor,
        actor_id=actor_id,
        action="safety.raw_erase",
        object_type="exchange",
        object_id=exchange_id,
        details={"erased": len(rows), "reason": reason},
    )
    return len(rows)
