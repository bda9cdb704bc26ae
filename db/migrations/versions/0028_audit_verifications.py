"""Automatic audit-chain verification runs (issue 25 follow-up; placeholder until its part lands).

Revision ID: 0028_audit_verifications
Revises: 0027_policy_changes
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0028_audit_verifications"
down_revision: str | None = "0027_policy_changes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
