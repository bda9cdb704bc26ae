"""Four eyes on every production move (issue 21, item 1).

Placeholder created first so the chain stays whole while this revision is written; filled in by its change.

Revision ID: 0015_four_eyes
Revises: 0014_one_open_review_item
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0015_four_eyes"
down_revision: str | None = "0014_one_open_review_item"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
