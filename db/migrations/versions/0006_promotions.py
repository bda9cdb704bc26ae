"""Promotion requests (four eyes): an alias move asked for by one person, decided by another.

The request freezes the candidate's evaluation report, the alias holder's (baseline) report and the gates computed
from them at request time, so the approver decides on what was asked, not on what changed since.

Revision ID: 0006_promotions
Revises: 0005_evaluations
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_promotions"
down_revision: str | None = "0005_evaluations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "promotion_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(60), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("from_version_id", sa.Integer(), nullable=True),
        sa.Column("evaluation_id", sa.Integer(), nullable=True),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("baseline_report", sa.JSON(), nullable=True),
        sa.Column("gates", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_by_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("decided_by_id", sa.Integer(), nullable=True),
        sa.Column("decision_note", sa.Text(), nullable=True),
        sa.Column("override_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'rejected', 'cancelled')", name=op.f("ck_promotion_requests_status")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["model_versions.id"], name=op.f("fk_promotion_requests_version_id_model_versions")
        ),
        sa.ForeignKeyConstraint(
            ["from_version_id"], ["model_versions.id"],
            name=op.f("fk_promotion_requests_from_version_id_model_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["evaluation_id"], ["evaluations.id"], name=op.f("fk_promotion_requests_evaluation_id_evaluations")
        ),
        sa.ForeignKeyConstraint(
            ["requested_by_id"], ["users.id"], name=op.f("fk_promotion_requests_requested_by_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["decided_by_id"], ["users.id"], name=op.f("fk_promotion_requests_decided_by_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promotion_requests")),
    )
    op.create_index(op.f("ix_promotion_requests_status"), "promotion_requests", ["status"])
    op.create_index(op.f("ix_promotion_requests_version_id"), "promotion_requests", ["version_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_promotion_requests_version_id"), table_name="promotion_requests")
    op.drop_index(op.f("ix_promotion_requests_status"), table_name="promotion_requests")
    op.drop_table("promotion_requests")
