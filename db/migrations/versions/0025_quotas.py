"""Quotas and rate limits per role and per user (issue 25, part 4).

- ``quota_limits``: one row per limit that an admin set, either a role's default (``role``) or one user's
  override (``user_id``), for ``kind`` ``requests_per_minute`` or ``tokens_per_day``; ``limit_value`` NULL means
  "no limit" (set explicitly). No row: the role's shipped default, or no override.
- ``quota_counters``: one row per user holding this minute's request count (``window_start``, ``requests``), raised
  by one conditional UPDATE so that every console replica on the database enforces one limit, and the window in
  which the last refusal of each kind was audited (at most one ``quota.exceeded`` event per user, limit and window).

Revision ID: 0025_quotas
Revises: 0024_spot_checks
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from db.types import UTCDateTime

revision: str = "0025_quotas"
down_revision: str | None = "0024_spot_checks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KINDS = ("requests_per_minute", "tokens_per_day")
_ROLES = ("operator", "reviewer", "admin", "analyst")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "quota_limits",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("role", sa.String(20), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(30), nullable=False),
        sa.Column("limit_value", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("updated_by_id", sa.Integer(), nullable=True),
        sa.CheckConstraint(_in("kind", _KINDS), name=op.f("ck_quota_limits_kind")),
        sa.CheckConstraint("role IS NULL OR " + _in("role", _ROLES), name=op.f("ck_quota_limits_role")),
        sa.CheckConstraint("(role IS NULL) <> (user_id IS NULL)", name=op.f("ck_quota_limits_scope")),
        sa.CheckConstraint("limit_value IS NULL OR limit_value >= 0", name=op.f("ck_quota_limits_value")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_quota_limits_user_id_users"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["updated_by_id"], ["users.id"], name=op.f("fk_quota_limits_updated_by_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quota_limits")),
    )
    op.create_index("ix_quota_limits_role_kind", "quota_limits", ["role", "kind"], unique=True)
    op.create_index("ix_quota_limits_user_id_kind", "quota_limits", ["user_id", "kind"], unique=True)
    op.create_table(
        "quota_counters",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("window_start", UTCDateTime(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("rpm_refusal_audited", UTCDateTime(), nullable=True),
        sa.Column("tpd_refusal_audited", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_quota_counters_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_quota_counters")),
    )


def downgrade() -> None:
    op.drop_table("quota_counters")
    op.drop_index("ix_quota_limits_user_id_kind", table_name="quota_limits")
    op.drop_index("ix_quota_limits_role_kind", table_name="quota_limits")
    op.drop_table("quota_limits")
