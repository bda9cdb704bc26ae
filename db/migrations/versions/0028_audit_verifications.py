"""Automatic audit-chain verification: every verification run is recorded (issue 25, second round).

- ``audit_verifications``: one row per verification of the audit chain against the signed checkpoints: the
  console's own on its schedule (``trigger = 'schedule'``, every ``LLM_CONSOLE_AUDIT_VERIFY_MINUTES``), or asked for
  on the Audit page (``manual``) or by ``llm-console audit verify`` (``cli``); when it started and finished (UTC),
  how long it took (``duration_ms``), the verdict (``ok``, events ``checked``) and, for a failure, the kind of damage,
  the first bad event and the reason. Only the newest runs are kept (``db.audit_verifications.KEEP_RUNS``).

Revision ID: 0028_audit_verifications
Revises: 0027_policy_changes
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0028_audit_verifications"
down_revision: str | None = "0027_policy_changes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TRIGGERS = ("schedule", "manual", "cli")


def upgrade() -> None:
    op.create_table(
        "audit_verifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(20), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("checked", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(40), nullable=True),
        sa.Column("first_bad_seq", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.CheckConstraint("trigger IN (" + ", ".join(f"'{t}'" for t in _TRIGGERS) + ")",
                           name=op.f("ck_audit_verifications_trigger")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_verifications")),
    )
    op.create_index(op.f("ix_audit_verifications_started_at"), "audit_verifications", ["started_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_verifications_started_at"), table_name="audit_verifications")
    op.drop_table("audit_verifications")
