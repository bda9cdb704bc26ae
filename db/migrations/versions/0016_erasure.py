"""Erasure that keeps what remains under the chain, by user id, with approval (issue 21, items 4-5).

Placeholder created first so the chain stays whole while this revision is written; filled in by its change.

Revision ID: 0016_erasure
Revises: 0015_four_eyes
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0016_erasure"
down_revision: str | None = "0015_four_eyes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
