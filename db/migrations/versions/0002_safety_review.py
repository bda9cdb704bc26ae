"""Safety and review: policy versions, findings, raw texts, review items and decisions; exchange actions.

Revision ID: 0002_safety_review
Revises: 0001_core
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_safety_review"
down_revision: str | None = "0001_core"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "policy_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_policy_versions_created_by_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_versions")),
        sa.UniqueConstraint("version", name=op.f("uq_policy_versions_version")),
    )
    op.create_table(
        "findings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("exchange_id", sa.Integer(), nullable=False),
        sa.Column("direction", sa.String(10), nullable=False),
        sa.Column("detector", sa.String(100), nullable=False),
        sa.Column("detector_version", sa.String(100), nullable=True),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("start", sa.Integer(), nullable=True),
        sa.Column("end", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(20), nullable=False),
        sa.CheckConstraint("direction IN ('prompt', 'output')", name=op.f("ck_findings_direction")),
        sa.ForeignKeyConstraint(
            ["exchange_id"], ["exchanges.id"], name=op.f("fk_findings_exchange_id_exchanges")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_findings")),
    )
    op.create_index(op.f("ix_findings_exchange_id"), "findings", ["exchange_id"])
    op.create_table(
        "raw_texts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("exchange_id", sa.Integer(), nullable=False),
        sa.Column("direction", sa.String(10), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("direction IN ('prompt', 'output')", name=op.f("ck_raw_texts_direction")),
        sa.ForeignKeyConstraint(
            ["exchange_id"], ["exchanges.id"], name=op.f("fk_raw_texts_exchange_id_exchanges")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_raw_texts")),
    )
    op.create_index(op.f("ix_raw_texts_exchange_id"), "raw_texts", ["exchange_id"])
    with op.batch_alter_table("exchanges") as batch:
        batch.add_column(sa.Column("prompt_action", sa.String(20), nullable=True))
        batch.add_column(sa.Column("output_action", sa.String(20), nullable=True))
        batch.add_column(sa.Column("policy_version", sa.Integer(), nullable=True))
        # Existing exchanges were never reviewed: the server default fills them in. No CHECK here: on
        # SQLite it would force a copy of the whole exchanges table, and only db/ code writes the column.
        batch.add_column(sa.Column("review_status", sa.String(20), nullable=False, server_default="none"))
    op.create_table(
        "review_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("exchange_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(20), nullable=False),
        sa.Column("direction", sa.String(10), nullable=True),
        sa.Column("severity", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by_id", sa.Integer(), nullable=True),
        sa.Column("claim_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("reason IN ('flagged', 'blocked', 'manual')", name=op.f("ck_review_items_reason")),
        sa.CheckConstraint(
            "status IN ('open', 'claimed', 'decided', 'escalated')", name=op.f("ck_review_items_status")
        ),
        sa.ForeignKeyConstraint(
            ["exchange_id"], ["exchanges.id"], name=op.f("fk_review_items_exchange_id_exchanges")
        ),
        sa.ForeignKeyConstraint(
            ["claimed_by_id"], ["users.id"], name=op.f("fk_review_items_claimed_by_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_review_items_created_by_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_items")),
    )
    op.create_index(op.f("ix_review_items_exchange_id"), "review_items", ["exchange_id"])
    # The queue reads open items by severity (highest first), then oldest first.
    op.create_index(
        "ix_review_items_queue", "review_items", ["status", sa.text("severity DESC"), "created_at"]
    )
    op.create_table(
        "review_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("reviewer_id", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(20), nullable=False),
        sa.Column("category", sa.String(100), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("supersedes_id", sa.Integer(), nullable=True),
        sa.Column("second_review", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "decision IN ('violation', 'false_positive', 'escalate')",
            name=op.f("ck_review_decisions_decision"),
        ),
        sa.ForeignKeyConstraint(
            ["item_id"], ["review_items.id"], name=op.f("fk_review_decisions_item_id_review_items")
        ),
        sa.ForeignKeyConstraint(
            ["reviewer_id"], ["users.id"], name=op.f("fk_review_decisions_reviewer_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["supersedes_id"],
            ["review_decisions.id"],
            name=op.f("fk_review_decisions_supersedes_id_review_decisions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_decisions")),
    )
    op.create_index(op.f("ix_review_decisions_item_id"), "review_decisions", ["item_id"])


def downgrade() -> None:
    op.drop_table("review_decisions")
    op.drop_table("review_items")
    with op.batch_alter_table("exchanges") as batch:
        batch.drop_column("review_status")
        batch.drop_column("policy_version")
        batch.drop_column("output_action")
        batch.drop_column("prompt_action")
    op.drop_table("raw_texts")
    op.drop_table("findings")
    op.drop_table("policy_versions")
