"""User feedback (thumbs up or down, a reason) on exchanges (issue 25, part 2).

- ``feedback``: one current rating per (exchange, user): ``rating`` +1 or -1, an optional ``reason`` (cleaned,
  personal data cut, bounded; blanked by retention and erasure like review notes), ``model_version`` copied from the
  exchange (the version that answered), ``created_at`` / ``updated_at``. A change updates the row in place; every
  change is on the audit chain (``feedback.given`` / ``feedback.changed`` / ``feedback.cleared``), which is the

Revision ID: 0023_feedback
Revises: 0022_review_reasons
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023_feedback"
down_revision: str | None = "0022_review_reasons"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("exchange_id", sa.Integer(), sa.ForeignKey("exchanges.id"), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("rating IN (-1, 1)", name="rating"),
        sa.UniqueConstraint("exchange_id", "user_id"),
    )
    op.create_index("ix_feedback_user_id", "feedback", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_feedback_user_id", table_name="feedback")
    op.drop_table("feedback")
