"""Latency buckets and service-level objectives.

- ``latency_buckets``: per minute (and per hour), model version, real/synthetic traffic and final status: request,
  flag and block counts, token sums, latency sums and the latency histograms as one compact array. Written with each
  finished exchange; the dashboards read only these (see ``db/latency.py`` and ``db/latency_report.py`` for the
  design and its error bound).
  Existing exchanges are not aggregated here (a migration should stay quick): ``llm-console metrics rebuild``
  builds the buckets from the exchanges table.
- ``slos``: the service-level objectives admins set (one per metric and statistic).

Revision ID: 0010_latency_buckets
Revises: 0009_audit_anchor
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_latency_buckets"
down_revision: str | None = "0009_audit_anchor"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SUMS = ("ttft_sum_ms", "itl_sum_ms", "e2e_sum_ms", "queue_sum_ms", "scan_before_sum_ms", "scan_after_sum_ms",
         "store_sum_ms")


def upgrade() -> None:
    op.create_table(
        "latency_buckets",
        sa.Column("resolution_s", sa.Integer(), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("synthetic", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("flagged", sa.Integer(), nullable=False),
        sa.Column("blocked", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        *(sa.Column(name, sa.Float(), nullable=False) for name in _SUMS),
        sa.Column("hist", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("resolution_s", "bucket_start", "model_version", "synthetic", "status",
                                name=op.f("pk_latency_buckets")),
    )
    op.create_table(
        "slos",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(40), nullable=False),
        sa.Column("stat", sa.String(10), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("set_by_id", sa.Integer(), nullable=True),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("stat IN ('p50', 'p90', 'p95', 'p99', 'rate')", name=op.f("ck_slos_stat")),
        sa.ForeignKeyConstraint(["set_by_id"], ["users.id"], name=op.f("fk_slos_set_by_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slos")),
    )
    op.create_index("ix_slos_metric_stat", "slos", ["metric", "stat"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_slos_metric_stat", table_name="slos")
    op.drop_table("slos")
    op.drop_table("latency_buckets")
