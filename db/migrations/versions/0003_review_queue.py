"""Review queue: blind second-review samples and the indexes the queue's filters and counters read.

Revision ID: 0003_review_queue
Revises: 0002_safety_review
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_review_queue"
down_revision: str | None = "0002_safety_review"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "review_samples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("first_decision_id", sa.Integer(), nullable=False),
        sa.Column("first_reviewer_id", sa.Integer(), nullable=False),
        sa.Column("second_decision_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"], ["review_items.id"], name=op.f("fk_review_samples_item_id_review_items")
        ),
        sa.ForeignKeyConstraint(
            ["first_decision_id"],
            ["review_decisions.id"],
            name=op.f("fk_review_samples_first_decision_id_review_decisions"),
        ),
        sa.ForeignKeyConstraint(
            ["first_reviewer_id"], ["users.id"], name=op.f("fk_review_samples_first_reviewer_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["second_decision_id"],
            ["review_decisions.id"],
            name=op.f("fk_review_samples_second_decision_id_review_decisions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_samples")),
        sa.UniqueConstraint("item_id", name=op.f("uq_review_samples_item_id")),
    )
    # Filters by label/detector and the precision statistics read findings by label.
    op.create_index(op.f("ix_findings_label"), "findings", ["label"])
    op.create_index(op.f("ix_findings_detector"), "findings", ["detector"])
    # The overdue counter: open/claimed items whose due time has passed, without a table scan.
    op.create_index(op.f("ix_review_items_status_due_at"), "review_items", ["status", "due_at"])
    op.create_index(op.f("ix_review_items_claimed_by_id"), "review_items", ["claimed_by_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_review_items_claimed_by_id"), table_name="review_items")
    op.drop_index(op.f("ix_review_items_status_due_at"), table_name="review_items")
    op.drop_index(op.f("ix_findings_detector"), table_name="findings")
    op.drop_index(op.f("ix_findings_label"), table_name="findings")
    op.drop_table("review_samples")
