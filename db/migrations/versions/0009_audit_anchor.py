"""Anchored audit chain: content hashes, signed checkpoints, triggers that keep the log append-only, raw exports.

- ``audit_events`` gains ``details_hash`` (the chained hash now covers a hash of the details, not the details, so
  personal data in them can be erased without breaking the chain) and ``erased_at``. Every existing event is
  re-chained in the new format; the old chain's verdict and head are recorded in an ``audit.chain_upgraded`` event.
- ``audit_checkpoints``: signed (count, head hash, time) statements.
- ``export_requests``: exports with raw text, approved by a second person.
- ``exchanges``: statuses ``pending`` (stored when submitted, before the model sees it) and ``interrupted``;
  ``text_erased_at`` (retention and erasure) and ``synthetic`` (load tests).
- ``review_decisions.note_erased_at``.
- Triggers on SQLite and PostgreSQL refuse UPDATE and DELETE on ``audit_events`` and ``review_decisions``, except
  the erasure path (details or note replaced while the erasure time is set and every other column stays).

Revision ID: 0009_audit_anchor
Revises: 0008_lora_adapters
Create Date: 2026-11-26
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

revision: str = "0009_audit_anchor"
down_revision: str | None = "0008_lora_adapters"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS = "0" * 64
OLD_STATUSES = ("ok", "error", "aborted", "blocked")
NEW_STATUSES = (*OLD_STATUSES, "pending", "interrupted")

# Columns of each guarded table that the erasure path may change, and the column it must set.
_GUARDED = {
    "audit_events": (("details",), "erased_at",
                     ("id", "seq", "ts", "actor", "actor_id", "action", "object_type", "object_id", "prev_hash",
                      "hash", "details_hash")),
    "review_decisions": (("note",), "note_erased_at",
                         ("id", "item_id", "reviewer_id", "decision", "category", "supersedes_id", "second_review",
                          "created_at")),
}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _rechain(bind: sa.Connection) -> None:
    """Verify the old chain, re-chain every event in the new format, and record what was found."""
    events = sa.table(
        "audit_events", sa.column("id", sa.Integer), sa.column("seq", sa.Integer), sa.column("ts", UTCDateTime()),
        sa.column("actor", sa.String), sa.column("actor_id", sa.Integer), sa.column("action", sa.String),
        sa.column("object_type", sa.String), sa.column("object_id", sa.String), sa.column("details", sa.JSON),
        sa.column("prev_hash", sa.String), sa.column("hash", sa.String), sa.column("details_hash", sa.String),
    )
    head = sa.table("audit_head", sa.column("id", sa.Integer), sa.column("seq", sa.Integer),
                    sa.column("hash", sa.String))
    old_prev, new_prev, old_ok, old_first_bad, count = GENESIS, GENESIS, True, None, 0
    rows = bind.execute(sa.select(events).order_by(events.c.seq)).mappings().all()
    for row in rows:
        count += 1
        details = row["details"] or {}
        old_payload = [row["seq"], row["ts"].isoformat(), row["actor"], row["actor_id"], row["action"],
                       row["object_type"], row["object_id"], details, row["prev_hash"]]
        if old_ok and (row["seq"] != count or row["prev_hash"] != old_prev or _sha(_canonical(old_payload)) != row["hash"]):
            old_ok, old_first_bad = False, row["seq"]
        old_prev = row["hash"]
        details_hash = _sha(_canonical(details))
        new_hash = _sha(_canonical([row["ts"].isoformat(), row["actor"], row["actor_id"], row["action"],
                                    row["object_type"], row["object_id"], details_hash, new_prev]))
        bind.execute(sa.update(events).where(events.c.id == row["id"])
                     .values(seq=count, prev_hash=new_prev, hash=new_hash, details_hash=details_hash))
        new_prev = new_hash
    if count == 0:
        return  # a new database: nothing to re-chain
    old_head = bind.execute(sa.select(head.c.seq, head.c.hash).where(head.c.id == 1)).first()
    if old_head is not None and (old_head.seq != count or old_head.hash != old_prev):
        old_ok, old_first_bad = False, old_first_bad or min(old_head.seq, count) + 1
    # The upgrade itself is an event: the next auditor sees that the chain was re-chained, and what it said before.
    ts = datetime.now(UTC)
    details = {"events": count, "old_chain_intact": old_ok, "old_first_bad_seq": old_first_bad,
               "old_head_hash": old_prev, "format": 2}
    details_hash = _sha(_canonical(details))
    new_hash = _sha(_canonical([ts.isoformat(), "system", None, "audit.chain_upgraded", None, None, details_hash,
                                new_prev]))
    bind.execute(sa.insert(events).values(seq=count + 1, ts=ts, actor="system", actor_id=None,
                                          action="audit.chain_upgraded", object_type=None, object_id=None,
                                          details=details, prev_hash=new_prev, hash=new_hash,
                                          details_hash=details_hash))
    bind.execute(sa.update(head).where(head.c.id == 1).values(seq=count + 1, hash=new_hash))


def _sqlite_triggers(table: str, erasable: tuple[str, ...], marker: str, fixed: tuple[str, ...]) -> list[str]:
    unchanged = " AND ".join(f"NEW.{c} IS OLD.{c}" for c in fixed)
    return [
        f"CREATE TRIGGER {table}_append_only_delete BEFORE DELETE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: rows cannot be deleted'); END",
        f"CREATE TRIGGER {table}_append_only_update BEFORE UPDATE ON {table} "
        f"WHEN NOT (NEW.{marker} IS NOT NULL AND {unchanged}) "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: only the erasure path may change a row'); END",
    ]


def _postgres_triggers(table: str, erasable: tuple[str, ...], marker: str, fixed: tuple[str, ...]) -> list[str]:
    unchanged = " AND ".join(f"NEW.{c} IS NOT DISTINCT FROM OLD.{c}" for c in fixed)
    return [
        f"""CREATE FUNCTION {table}_append_only() RETURNS trigger AS $$
        BEGIN
            IF TG_OP = 'UPDATE' AND NEW.{marker} IS NOT NULL AND {unchanged} THEN
                RETURN NEW;
            END IF;
            RAISE EXCEPTION '{table} is append-only: only the erasure path may change a row';
        END $$ LANGUAGE plpgsql""",
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()",
    ]


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("details_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_audit_events_object", ["object_type", "object_id"])
    op.create_index(op.f("ix_audit_events_actor"), "audit_events", ["actor"])
    _rechain(bind)

    op.add_column("review_decisions", sa.Column("note_erased_at", sa.DateTime(timezone=True), nullable=True))

    # Rebuilding exchanges on SQLite (for its status CHECK) drops the old table, which the rows of findings,
    # raw_texts and review_items point at: Database.migrate runs this with foreign keys off and env.py checks them
    # afterwards. (With them on, deferred or not, the DROP counted each such row as a violation and the commit
    # failed: an upgrade from a 0008 database holding any finding or review item never went through.)
    with op.batch_alter_table("exchanges", recreate="always" if sqlite else "auto") as batch:
        batch.add_column(sa.Column("text_erased_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("synthetic", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.drop_constraint("status", type_="check")
        batch.create_check_constraint("status",
                                      sa.text("status IN (" + ", ".join(f"'{s}'" for s in NEW_STATUSES) + ")"))

    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("signature", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoints")),
    )
    op.create_index(op.f("ix_audit_checkpoints_seq"), "audit_checkpoints", ["seq"])
    op.create_table(
        "export_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("what", sa.String(20), nullable=False),
        sa.Column("format", sa.String(20), nullable=False),
        sa.Column("filters", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_by_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("decided_by_id", sa.Integer(), nullable=True),
        sa.Column("decision_note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'approved', 'rejected', 'cancelled', 'used')",
                           name=op.f("ck_export_requests_status")),
        sa.ForeignKeyConstraint(["requested_by_id"], ["users.id"],
                                name=op.f("fk_export_requests_requested_by_id_users")),
        sa.ForeignKeyConstraint(["decided_by_id"], ["users.id"], name=op.f("fk_export_requests_decided_by_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_requests")),
    )
    op.create_index(op.f("ix_export_requests_status"), "export_requests", ["status"])

    make = _sqlite_triggers if sqlite else _postgres_triggers
    for table, (erasable, marker, fixed) in _GUARDED.items():
        for statement in make(table, erasable, marker, fixed):
            op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    for table in _GUARDED:
        if sqlite:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only_delete")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only_update")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS {table}_append_only()")
    op.drop_index(op.f("ix_export_requests_status"), table_name="export_requests")
    op.drop_table("export_requests")
    op.drop_index(op.f("ix_audit_checkpoints_seq"), table_name="audit_checkpoints")
    op.drop_table("audit_checkpoints")
    with op.batch_alter_table("exchanges", recreate="always" if sqlite else "auto") as batch:  # see upgrade()
        batch.drop_constraint("status", type_="check")
        batch.create_check_constraint("status",
                                      sa.text("status IN (" + ", ".join(f"'{s}'" for s in OLD_STATUSES) + ")"))
        batch.drop_column("synthetic")
        batch.drop_column("text_erased_at")
    with op.batch_alter_table("review_decisions") as batch:
        batch.drop_column("note_erased_at")
    op.drop_index(op.f("ix_audit_events_actor"), table_name="audit_events")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_index("ix_audit_events_object")
        batch.drop_column("erased_at")
        batch.drop_column("details_hash")
    # The events keep their new-format hashes: a downgraded console's verify reports the chain as changed here.
