"""Resolved notices: a delivery says which notice it carries.

``alert_deliveries`` gains ``event``: ``firing`` (the alert raised, a condition or a one-off event: every row from
before this migration) or ``resolved`` (the condition cleared; queued by db.alerts.resolve_alert for each webhook
that had the firing notice, sent only once that one was delivered or gave up).

Downgrading drops the column and deletes the ``resolved`` deliveries (and their attempts): the schema before 0030
cannot tell them from firing notices, so the old code would show them as such and send unsent ones as firing.

Revision ID: 0030_alert_resolved
Revises: 0029_webhook_secrets
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0030_alert_resolved"
down_revision: str | None = "0029_webhook_secrets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DELIVERY_EVENTS = ("firing", "resolved")
CHECK = "event IN (" + ", ".join(f"'{v}'" for v in DELIVERY_EVENTS) + ")"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # ADD COLUMN, not a rebuild of the table: alert_attempts point at its rows (see 0029_webhook_secrets).
        op.execute("ALTER TABLE alert_deliveries ADD COLUMN event VARCHAR(20) DEFAULT 'firing' NOT NULL "
                   f"CONSTRAINT ck_alert_deliveries_event CHECK ({CHECK})")
        return
    op.add_column("alert_deliveries", sa.Column("event", sa.String(20), nullable=False, server_default="firing"))
    op.create_check_constraint("event", "alert_deliveries", sa.text(CHECK))


def downgrade() -> None:
    op.execute("DELETE FROM alert_attempts WHERE delivery_id IN "
               "(SELECT id FROM alert_deliveries WHERE event = 'resolved')")
    op.execute("DELETE FROM alert_deliveries WHERE event = 'resolved'")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE alert_deliveries DROP COLUMN event")  # its CHECK is the column's own: it goes too
        return
    op.drop_constraint("event", "alert_deliveries", type_="check")
    op.drop_column("alert_deliveries", "event")
