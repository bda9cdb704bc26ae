"""One review item waiting for a reviewer per exchange.

A message could be sent to review twice (or sent by hand after the policy had flagged it), giving two items for one
exchange. From now on a second request adds its note to the item that waits (``db.review.items.request_review``),
and a partial unique index on ``review_items.exchange_id`` for the items still ``open`` or ``claimed`` makes two
sessions racing unable to create two (SQLite and PostgreSQL both have partial indexes).

Before the index is built, the duplicates an older console left are merged: per exchange the oldest waiting item
stays, the others' notes are appended to its note (oldest first), and the others are deleted. A waiting item has
no decision, sample or claim history of its own to lose (a claim is two columns on the item); the audit events
that recorded their creation stay, as every event does. No audit event here: a migration is not an actor's change.

Revision ID: 0014_one_open_review_item
Revises: 0013_flagged_by_policy
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_one_open_review_item"
down_revision: str | None = "0013_flagged_by_policy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "uq_review_items_open_exchange"
# This migration's own copy of the rule (db.tables.OPEN_ITEM_STATUSES), so later changes do not change what it did.
OPEN_STATUSES = ("open", "claimed")
WHERE = "status IN ('open', 'claimed')"

items = sa.table(
    "review_items",
    sa.column("id", sa.Integer),
    sa.column("exchange_id", sa.Integer),
    sa.column("status", sa.String),
    sa.column("note", sa.Text),
)


def _merge_duplicates(conn: sa.Connection) -> None:
    rows = conn.execute(
        sa.select(items.c.id, items.c.exchange_id, items.c.note)
        .where(items.c.status.in_(OPEN_STATUSES))
        .order_by(items.c.exchange_id, items.c.id)
    ).all()
    by_exchange: dict[int, list[tuple[int, str | None]]] = {}
    for item_id, exchange_id, note in rows:
        by_exchange.setdefault(exchange_id, []).append((item_id, note))
    for group in by_exchange.values():
        if len(group) < 2:
            continue
        (kept, _), others = group[0], group[1:]
        notes = [note for _, note in group if note]
        conn.execute(sa.update(items).where(items.c.id == kept).values(note="\n\n".join(notes) or None))
        conn.execute(sa.delete(items).where(items.c.id.in_([item_id for item_id, _ in others])))


def upgrade() -> None:
    _merge_duplicates(op.get_bind())
    op.create_index(INDEX, "review_items", ["exchange_id"], unique=True,
                    sqlite_where=sa.text(WHERE), postgresql_where=sa.text(WHERE))


def downgrade() -> None:
    op.drop_index(INDEX, table_name="review_items")
