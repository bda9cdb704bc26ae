"""Alerts: webhooks, alerts and their deliveries (issue 25, part 5).

PLACEHOLDER: filled in by the engineer who owns this part; empty until then (a valid, empty step in the chain).

Revision ID: 0026_alerts
Revises: 0025_quotas
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0026_alerts"
down_revision: str | None = "0025_quotas"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
