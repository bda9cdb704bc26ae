"""Webhook URLs and secrets encrypted at rest (issue 25 follow-up; placeholder until its part lands).

Revision ID: 0029_webhook_secrets
Revises: 0028_audit_verifications
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0029_webhook_secrets"
down_revision: str | None = "0028_audit_verifications"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
