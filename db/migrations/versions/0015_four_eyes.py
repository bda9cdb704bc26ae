"""Four eyes on every production move (issue 21, item 1).

- ``protected_aliases``: aliases an admin marked protected; like ``production`` (always protected, no row), a
  protected alias that a version holds moves only through an approved promotion.
- ``emergency_moves``: the single-person moves still allowed (an emergency rollback to the version that held
  production just before, or a shell command with ``--break-glass``), each shown to every admin until a second
  admin acknowledges it.

Revision ID: 0015_four_eyes
Revises: 0014_one_open_review_item
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_four_eyes"
down_revision: str | None = "0014_one_open_review_item"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "protected_aliases",
        sa.Column("alias", sa.String(60), nullable=False),
        sa.Column("protected_by", sa.String(200), nullable=False),
        sa.Column("protected_by_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["protected_by_id"], ["users.id"],
                                name=op.f("fk_protected_aliases_protected_by_id_users")),
        sa.PrimaryKeyConstraint("alias", name=op.f("pk_protected_aliases")),
    )
    op.create_table(
        "emergency_moves",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("alias", sa.String(60), nullable=False),
        sa.Column("from_version_id", sa.Integer(), nullable=True),
        sa.Column("to_version_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("break_glass", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_by", sa.String(200), nullable=True),
        sa.Column("acknowledged_by_id", sa.Integer(), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ack_note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["from_version_id"], ["model_versions.id"],
                                name=op.f("fk_emergency_moves_from_version_id_model_versions")),
        sa.ForeignKeyConstraint(["to_version_id"], ["model_versions.id"],
                                name=op.f("fk_emergency_moves_to_version_id_model_versions")),
        sa.ForeignKeyConstraint(["actor_id"], ["users.id"], name=op.f("fk_emergency_moves_actor_id_users")),
        sa.ForeignKeyConstraint(["acknowledged_by_id"], ["users.id"],
                                name=op.f("fk_emergency_moves_acknowledged_by_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_emergency_moves")),
    )
    op.create_index(op.f("ix_emergency_moves_acknowledged_at"), "emergency_moves", ["acknowledged_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_emergency_moves_acknowledged_at"), table_name="emergency_moves")
    op.drop_table("emergency_moves")
    op.drop_table("protected_aliases")
