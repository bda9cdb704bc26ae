"""Several consoles on one store, and canary releases (issue 24).

- ``job_runs``: one row per periodic job that must run once per interval across console replicas (retention,
  the watch window, checkpoints, canary decisions). A replica runs a round only after it has claimed the row
  (``holder``, ``lease_until``) with one conditional UPDATE; ``last_started_at``/``last_finished_at``/``runs``
  say when and how often it ran, and who ran it.
- ``promotion_requests``: a request may carry a canary plan (``canary_plan``: share of new conversations,
  duration, margins, error levels, minimum sample), which is approved with it. Approval then starts the canary
  (status ``canary``, ``canary_started_at``/``canary_ends_at``) instead of moving the alias; the canary ends
  ``approved`` (promoted: the alias moved) or ``rolled_back``; ``canary_result`` holds the deciding statistics.
- ``canary_checks``: every round of a canary's sequential test (sample sizes, statistics, decision), for the
  Promotions page's history.

Revision ID: 0020_replicas_canary
Revises: 0019_server_backends
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020_replicas_canary"
down_revision: str | None = "0019_server_backends"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = ("pending", "approved", "rejected", "cancelled")
NEW_STATUSES = (*OLD_STATUSES, "canary", "rolled_back")


def _statuses(statuses: Sequence[str]) -> sa.TextClause:
    return sa.text("status IN (" + ", ".join(f"'{s}'" for s in statuses) + ")")


def upgrade() -> None:
    op.create_table(
        "job_runs",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("runs", sa.Integer(), nullable=False, server_default="0"),
    )
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("promotion_requests", recreate="always" if sqlite else "auto") as batch:
        batch.add_column(sa.Column("canary_plan", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("canary_started_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("canary_ends_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("canary_result", sa.JSON(), nullable=True))
        batch.drop_constraint("status", type_="check")
        batch.create_check_constraint("status", _statuses(NEW_STATUSES))
    op.create_table(
        "canary_checks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("request_id", sa.Integer(), sa.ForeignKey("promotion_requests.id"), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("candidate_n", sa.Integer(), nullable=False),
        sa.Column("live_n", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(20), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
    )
    op.create_index("ix_canary_checks_request_id_checked_at", "canary_checks", ["request_id", "checked_at"])


def downgrade() -> None:
    op.drop_index("ix_canary_checks_request_id_checked_at", table_name="canary_checks")
    op.drop_table("canary_checks")
    sqlite = op.get_bind().dialect.name == "sqlite"
    # Requests that ended as a canary read as their nearest older status.
    op.execute("UPDATE promotion_requests SET status = 'cancelled' WHERE status IN ('canary', 'rolled_back')")
    with op.batch_alter_table("promotion_requests", recreate="always" if sqlite else "auto") as batch:
        batch.drop_constraint("status", type_="check")
        batch.create_check_constraint("status", _statuses(OLD_STATUSES))
        for column in ("canary_result", "canary_ends_at", "canary_started_at", "canary_plan"):
            batch.drop_column(column)
    op.drop_table("job_runs")
