"""Batched sequencing of the audit chain (issue 24): an event may wait, unchained, to be integrated.

On PostgreSQL ``db.audit.append_event`` no longer takes the chain's head lock: it writes the event with ``seq``,
``prev_hash`` and ``hash`` NULL (queued, in the caller's transaction), and an integrator chains the queued events in
batches under one head update (``db.audit.integrate_pending``), like a transparency log's sequencer.

- ``audit_events.seq``, ``prev_hash`` and ``hash`` become nullable (NULL only while the event is queued).
- ``ix_audit_events_pending``: a partial index on ``id`` of the queued events (the integrator's queue).
- The append-only triggers allow one more change: filling in ``seq``, ``prev_hash`` and ``hash`` of a queued event
  (all three NULL before, all three set after), with every other column unchanged. The erasure path stays as 0016
  made it.

Downgrade integrates nothing: it refuses while events are queued (integrate them first: ``llm-console audit verify``).

Revision ID: 0021_audit_sequencer
Revises: 0020_replicas_canary
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021_audit_sequencer"
down_revision: str | None = "0020_replicas_canary"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHAIN = ("seq", "prev_hash", "hash")
# Every column the erasure path must leave alone (as 0016 made it).
_FIXED = ("id", "seq", "ts", "actor", "actor_id", "action", "object_type", "object_id", "prev_hash", "hash",
          "details_hash", "remains_hash")
# Every column integration must leave alone (details compared as text: PostgreSQL's json has no equality).
_KEPT = ("id", "ts", "actor", "actor_id", "action", "object_type", "object_id", "details_hash", "remains_hash",
         "erased_at")
PENDING_INDEX = "ix_audit_events_pending"


def _drop_triggers(sqlite: bool) -> None:
    if sqlite:
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only_delete")
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only_update")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")


def _create_triggers(sqlite: bool, *, integration: bool) -> None:
    if sqlite:
        same = "{} IS {}".format
        details = "NEW.details IS OLD.details"
    else:
        same = "{} IS NOT DISTINCT FROM {}".format
        details = "NEW.details::text IS NOT DISTINCT FROM OLD.details::text"
    erasure = ("OLD.erased_at IS NULL AND NEW.erased_at IS NOT NULL AND "
               + " AND ".join(same(f"NEW.{c}", f"OLD.{c}") for c in _FIXED))
    rule = erasure
    if integration:
        chain_in = " AND ".join(f"OLD.{c} IS NULL AND NEW.{c} IS NOT NULL" for c in _CHAIN)
        kept = " AND ".join(same(f"NEW.{c}", f"OLD.{c}") for c in _KEPT)
        rule = f"({erasure}) OR ({chain_in} AND {kept} AND {details})"
    if sqlite:
        op.execute("CREATE TRIGGER audit_events_append_only_delete BEFORE DELETE ON audit_events "
                   "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: rows cannot be deleted'); END")
        op.execute("CREATE TRIGGER audit_events_append_only_update BEFORE UPDATE ON audit_events "
                   f"WHEN NOT ({rule}) "
                   "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: only the erasure path may change a row');"
                   " END")
        return
    op.execute(f"""CREATE FUNCTION audit_events_append_only() RETURNS trigger AS $$
        BEGIN
            IF TG_OP = 'UPDATE' AND (({rule})) THEN
                RETURN NEW;
            END IF;
            RAISE EXCEPTION 'audit_events is append-only: only the erasure path may change a row';
        END $$ LANGUAGE plpgsql""")
    op.execute("CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
               "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()")


def _set_nullable(nullable: bool) -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.alter_column("seq", existing_type=sa.Integer(), nullable=nullable)
        batch.alter_column("prev_hash", existing_type=sa.String(64), nullable=nullable)
        batch.alter_column("hash", existing_type=sa.String(64), nullable=nullable)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    _drop_triggers(sqlite)  # SQLite rebuilds the table for the change (its triggers would go with it)
    _set_nullable(True)
    op.create_index(PENDING_INDEX, "audit_events", ["id"], sqlite_where=sa.text("seq IS NULL"),
                    postgresql_where=sa.text("seq IS NULL"))
    _create_triggers(sqlite, integration=True)


def downgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    queued = bind.execute(sa.text("SELECT count(*) FROM audit_events WHERE seq IS NULL")).scalar()
    if queued:
        raise RuntimeError(f"{queued} audit events are queued, not yet chained: start the console (or run "
                           "`llm-console audit verify`) to integrate them before downgrading")
    _drop_triggers(sqlite)
    op.drop_index(PENDING_INDEX, table_name="audit_events")
    _set_nullable(False)
    _create_triggers(sqlite, integration=False)
