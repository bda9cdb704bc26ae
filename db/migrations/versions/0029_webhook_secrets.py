"""Webhook URLs and signing secrets encrypted at rest.

``webhooks`` gains ``secret_format`` (``plain``: ``url`` and ``secret`` hold the text as entered; ``fernet``: they
hold Fernet tokens made with the console's secrets key, a file outside the database) and ``secret_key_id`` (the id
of the key that encrypted them, so an error can say which key is needed). Rows already stored stay ``plain`` here:
a migration cannot reach the key file, so every console encrypts them when it starts
(console.services.secret_box.encrypt_stored_secrets, idempotent: one conditional UPDATE per row).

Downgrading drops the two columns; run it only with plaintext rows (encrypted ones would be unreadable to the old
code), which this migration checks.

Revision ID: 0029_webhook_secrets
Revises: 0028_audit_verifications
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0029_webhook_secrets"
down_revision: str | None = "0028_audit_verifications"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SECRET_FORMATS = ("plain", "fernet")
CHECK = "secret_format IN (" + ", ".join(f"'{v}'" for v in SECRET_FORMATS) + ")"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # ADD COLUMN, not a rebuild of the table: alert_deliveries point at its rows, and dropping the old table
        # leaves SQLite's deferred foreign-key count raised however the copy is renamed (the commit then fails).
        op.execute("ALTER TABLE webhooks ADD COLUMN secret_format VARCHAR(10) DEFAULT 'plain' NOT NULL "
                   f"CONSTRAINT ck_webhooks_secret_format CHECK ({CHECK})")
        op.execute("ALTER TABLE webhooks ADD COLUMN secret_key_id VARCHAR(16)")
        return
    op.add_column("webhooks", sa.Column("secret_format", sa.String(10), nullable=False, server_default="plain"))
    op.add_column("webhooks", sa.Column("secret_key_id", sa.String(16), nullable=True))
    op.create_check_constraint("secret_format", "webhooks", sa.text(CHECK))


def downgrade() -> None:
    encrypted = op.get_bind().scalar(sa.text("SELECT count(*) FROM webhooks WHERE secret_format <> 'plain'"))
    if encrypted:
        raise RuntimeError(f"{encrypted} webhook(s) are encrypted at rest; the schema before 0029 cannot read them. "
                           "Delete those webhooks (or re-enter them after the downgrade) first.")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE webhooks DROP COLUMN secret_key_id")
        op.execute("ALTER TABLE webhooks DROP COLUMN secret_format")  # its CHECK is the column's own: it goes too
        return
    op.drop_constraint("secret_format", "webhooks", type_="check")
    op.drop_column("webhooks", "secret_key_id")
    op.drop_column("webhooks", "secret_format")
