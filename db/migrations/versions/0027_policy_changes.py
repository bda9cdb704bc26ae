"""Policy change requests with a backtest, approved by a second admin (issue 25, part 6).

- ``policy_change_requests``: an admin proposes a new policy text (``content``, its ``sha256`` and the policy's own
  ``file_version``) with a reason, against the stored policy version in force when it was proposed
  (``base_version``). The backtest of the last ``days`` days of exchanges (current versus proposed policy: rates
  per label, review items per day, the exchanges whose verdict changes, by id) is stored with it (``backtest``).
  Another admin approves it (a new ``policy_versions`` row, ``applied_version``, is stored and is in force) or
  rejects it; the requester may cancel it. A request whose ``base_version`` is no longer the newest stored version
  is stale and cannot be approved.

Revision ID: 0027_policy_changes
Revises: 0026_alerts
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0027_policy_changes"
down_revision: str | None = "0026_alerts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUSES = ("pending", "approved", "rejected", "cancelled")


def upgrade() -> None:
    op.create_table(
        "policy_change_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("base_version", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("file_version", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.Column("backtest", sa.JSON(), nullable=False),
        sa.Column("requested_by_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by_id", sa.Integer(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision_note", sa.Text(), nullable=True),
        sa.Column("applied_version", sa.Integer(), nullable=True),
        sa.CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in _STATUSES) + ")",
                           name=op.f("ck_policy_change_requests_status")),
        sa.ForeignKeyConstraint(["requested_by_id"], ["users.id"],
                                name=op.f("fk_policy_change_requests_requested_by_id_users")),
        sa.ForeignKeyConstraint(["decided_by_id"], ["users.id"],
                                name=op.f("fk_policy_change_requests_decided_by_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_change_requests")),
    )
    op.create_index(op.f("ix_policy_change_requests_status"), "policy_change_requests", ["status"])


def downgrade() -> None:
    op.drop_index(op.f("ix_policy_change_requests_status"), table_name="policy_change_requests")
    op.drop_table("policy_change_requests")
