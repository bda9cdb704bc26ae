"""LoRA adapters: a model version may be an adapter served on a base version.

Revision ID: 0008_lora_adapters
Revises: 0007_sso_binding
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_lora_adapters"
down_revision: str | None = "0007_sso_binding"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


FK_NAME = "fk_model_versions_base_version_id_model_versions"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # A plain ADD COLUMN with its REFERENCES clause, which SQLite allows without rebuilding the table (a batch
        # rebuild of model_versions would trip the foreign keys that point at it, and Alembic cannot ALTER a
        # constraint on SQLite).
        op.execute(f"ALTER TABLE model_versions ADD COLUMN base_version_id INTEGER "
                   f"CONSTRAINT {FK_NAME} REFERENCES model_versions (id)")
        return
    op.add_column("model_versions", sa.Column("base_version_id", sa.Integer(), nullable=True))
    op.create_foreign_key(FK_NAME, "model_versions", "model_versions", ["base_version_id"], ["id"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE model_versions DROP COLUMN base_version_id")  # SQLite 3.35+
        return
    op.drop_constraint(FK_NAME, "model_versions", type_="foreignkey")
    op.drop_column("model_versions", "base_version_id")
