"""Quotas and rate limits per role and per user (issue 25, part 4).

PLACEHOLDER: filled in by the engineer who owns this part; empty until then (a valid, empty step in the chain).

Revision ID: 0025_quotas
Revises: 0024_spot_checks
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0025_quotas"
down_revision: str | None = "0024_spot_checks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
