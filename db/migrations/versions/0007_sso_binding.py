"""Single sign-on binding and session epochs on users.

An account is bound to its provider's issuer and subject at the first SSO sign-in and matched on them afterwards
(an email alone is not an identity). ``session_epoch`` is bumped to end a user's open sessions (a password reset).

Revision ID: 0007_sso_binding
Revises: 0006_promotions
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_sso_binding"
down_revision: str | None = "0006_promotions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE ADD COLUMN and CREATE UNIQUE INDEX: no table rebuild, which on SQLite would have to drop
    # "users" while user_roles, conversations and the audit log still point at it.
    op.add_column("users", sa.Column("sso_issuer", sa.String(512), nullable=True))
    op.add_column("users", sa.Column("sso_subject", sa.String(255), nullable=True))
    op.add_column("users", sa.Column("session_epoch", sa.Integer(), nullable=False, server_default=sa.text("0")))
    op.create_index(op.f("ix_users_sso_issuer_sso_subject"), "users", ["sso_issuer", "sso_subject"], unique=True)


def downgrade() -> None:
    op.drop_index(op.f("ix_users_sso_issuer_sso_subject"), table_name="users")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("session_epoch")
        batch.drop_column("sso_subject")
        batch.drop_column("sso_issuer")
