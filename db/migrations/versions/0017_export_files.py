"""Export files with a lifetime (issue 21, item 7).

- ``export_files``: every export file the console wrote (the Audit log page, the shell, raw-text exports): who
  made it, what it holds (kind, rows, size, raw text or not), when it expires (``export_file_hours`` after it was
  written; a raw-text export also no later than its oldest exchange's raw-text retention), when it was downloaded
  and when and why it was deleted (``downloaded``, ``expired``, ``erasure``). The rows stay as the record; the
  file goes. The rows per analyst and hour are summed from here for the export quota.

Revision ID: 0017_export_files
Revises: 0016_erasure
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017_export_files"
down_revision: str | None = "0016_erasure"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "export_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("what", sa.String(20), nullable=False),
        sa.Column("format", sa.String(20), nullable=False),
        sa.Column("raw_text", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("downloaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_reason", sa.String(20), nullable=True),
        sa.ForeignKeyConstraint(["created_by_id"], ["users.id"], name=op.f("fk_export_files_created_by_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_files")),
    )
    op.create_index(op.f("ix_export_files_created_at"), "export_files", ["created_at"])
    op.create_index(op.f("ix_export_files_expires_at"), "export_files", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_export_files_expires_at"), table_name="export_files")
    op.drop_index(op.f("ix_export_files_created_at"), table_name="export_files")
    op.drop_table("export_files")
