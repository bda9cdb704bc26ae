"""Erasure that keeps what remains under the chain, by user id, with approval (issue 21, items 4-5).

- ``audit_events.remains_hash``: for actions with personal detail keys, the SHA-256 of the details as an erasure
  leaves them; new events chain it (``db.audit.compute_hash``), so after an erasure only the erased text fields may
  differ. Events already in the log keep their hashes (NULL here).
- Events erased before this revision are sealed: one ``audit.erasure_sealed`` event (actor ``system``) records the
  hash of what remains of each (``details["remains"]``, by seq). What was changed in such a row before the upgrade
  cannot be told apart any more; from the upgrade on, a change to it fails verification.
- The append-only triggers on ``audit_events`` are re-made: the erasure path may no longer change an event that is
  erased already, and ``remains_hash`` is one of the columns that must stay.
- ``erasure_requests``: an erasure of one account's content, by user id, asked for by one admin (or the shell) and
  carried out when another admin approves it.

Revision ID: 0016_erasure
Revises: 0015_four_eyes
Create Date: 2026-12-06
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

from db.types import UTCDateTime

revision: str = "0016_erasure"
down_revision: str | None = "0015_four_eyes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FIXED = ("id", "seq", "ts", "actor", "actor_id", "action", "object_type", "object_id", "prev_hash", "hash",
          "details_hash")
_STATUSES = ("pending", "done", "rejected", "cancelled")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _drop_triggers(sqlite: bool) -> None:
    if sqlite:
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only_delete")
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only_update")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")


def _create_triggers(sqlite: bool, fixed: tuple[str, ...], only_once: bool) -> None:
    # only_once: the erasure path may change an event only while it is not erased yet.
    if sqlite:
        unchanged = " AND ".join(f"NEW.{c} IS OLD.{c}" for c in fixed)
        once = "OLD.erased_at IS NULL AND " if only_once else ""
        op.execute("CREATE TRIGGER audit_events_append_only_delete BEFORE DELETE ON audit_events "
                   "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: rows cannot be deleted'); END")
        op.execute("CREATE TRIGGER audit_events_append_only_update BEFORE UPDATE ON audit_events "
                   f"WHEN NOT ({once}NEW.erased_at IS NOT NULL AND {unchanged}) "
                   "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: only the erasure path may change a row');"
                   " END")
        return
    unchanged = " AND ".join(f"NEW.{c} IS NOT DISTINCT FROM OLD.{c}" for c in fixed)
    once = "OLD.erased_at IS NULL AND " if only_once else ""
    op.execute(f"""CREATE FUNCTION audit_events_append_only() RETURNS trigger AS $$
        BEGIN
            IF TG_OP = 'UPDATE' AND {once}NEW.erased_at IS NOT NULL AND {unchanged} THEN
                RETURN NEW;
            END IF;
            RAISE EXCEPTION 'audit_events is append-only: only the erasure path may change a row';
        END $$ LANGUAGE plpgsql""")
    op.execute("CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
               "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()")


def _seal_erased(bind: sa.Connection) -> None:
    """One chained event recording what remains of every event erased before this revision."""
    events = sa.table(
        "audit_events", sa.column("seq", sa.Integer), sa.column("ts", UTCDateTime()), sa.column("actor", sa.String),
        sa.column("actor_id", sa.Integer), sa.column("action", sa.String), sa.column("object_type", sa.String),
        sa.column("object_id", sa.String), sa.column("details", sa.JSON), sa.column("prev_hash", sa.String),
        sa.column("hash", sa.String), sa.column("details_hash", sa.String), sa.column("erased_at", UTCDateTime()),
    )
    head = sa.table("audit_head", sa.column("id", sa.Integer), sa.column("seq", sa.Integer),
                    sa.column("hash", sa.String))
    rows = bind.execute(sa.select(events.c.seq, events.c.details).where(events.c.erased_at.is_not(None))
                        .order_by(events.c.seq)).all()
    if not rows:
        return
    remains = {str(seq): _sha(_canonical(details or {})) for seq, details in rows}
    current = bind.execute(sa.select(head.c.seq, head.c.hash).where(head.c.id == 1)).one()
    ts = datetime.now(UTC)
    details = {"events": len(remains), "remains": remains}
    details_hash = _sha(_canonical(details))
    # The action has no personal detail keys: the event hash has no remains_hash part.
    digest = _sha(_canonical([ts.isoformat(), "system", None, "audit.erasure_sealed", None, None, details_hash,
                              current.hash]))
    bind.execute(sa.insert(events).values(seq=current.seq + 1, ts=ts, actor="system", actor_id=None,
                                          action="audit.erasure_sealed", object_type=None, object_id=None,
                                          details=details, prev_hash=current.hash, hash=digest,
                                          details_hash=details_hash))
    bind.execute(sa.update(head).where(head.c.id == 1).values(seq=current.seq + 1, hash=digest))


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    op.add_column("audit_events", sa.Column("remains_hash", sa.String(64), nullable=True))
    _drop_triggers(sqlite)
    _create_triggers(sqlite, (*_FIXED, "remains_hash"), only_once=True)
    _seal_erased(bind)
    op.create_table(
        "erasure_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("legal_basis", sa.Text(), nullable=True),
        sa.Column("requested_by_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("decided_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in _STATUSES) + ")",
                           name=op.f("ck_erasure_requests_status")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_erasure_requests_user_id_users")),
        sa.ForeignKeyConstraint(["requested_by_id"], ["users.id"],
                                name=op.f("fk_erasure_requests_requested_by_id_users")),
        sa.ForeignKeyConstraint(["decided_by_id"], ["users.id"],
                                name=op.f("fk_erasure_requests_decided_by_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasure_requests")),
    )
    op.create_index(op.f("ix_erasure_requests_status"), "erasure_requests", ["status"])
    op.create_index(op.f("ix_erasure_requests_user_id"), "erasure_requests", ["user_id"])


def downgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    op.drop_index(op.f("ix_erasure_requests_user_id"), table_name="erasure_requests")
    op.drop_index(op.f("ix_erasure_requests_status"), table_name="erasure_requests")
    op.drop_table("erasure_requests")
    _drop_triggers(sqlite)
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("remains_hash")
    _create_triggers(sqlite, _FIXED, only_once=False)
    # Events written with a remains_hash keep their hashes: a downgraded console's verify reports them as changed.
