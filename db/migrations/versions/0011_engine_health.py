"""Engine health history: the serving engine's load, sampled every few seconds by each console process.

Revision ID: 0011_engine_health
Revises: 0010_latency_buckets
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_engine_health"
down_revision: str | None = "0010_latency_buckets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "engine_health",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("epoch_s", sa.BigInteger(), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("running", sa.Integer(), nullable=False),
        sa.Column("waiting", sa.Integer(), nullable=False),
        sa.Column("kv_cache_usage", sa.Float(), nullable=False),
        sa.Column("preemptions", sa.Integer(), nullable=False),
        sa.Column("preemptions_total", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens_per_s", sa.Float(), nullable=False),
        sa.Column("generation_tokens_per_s", sa.Float(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_count", sa.Integer(), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_engine_health")),
    )
    op.create_index(op.f("ix_engine_health_epoch_s"), "engine_health", ["epoch_s"])


def downgrade() -> None:
    op.drop_index(op.f("ix_engine_health_epoch_s"), table_name="engine_health")
    op.drop_table("engine_health")
