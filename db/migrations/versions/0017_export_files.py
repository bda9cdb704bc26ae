"""Export files with a lifetime (issue 21, item 7).

Placeholder created first so the chain stays whole while this revision is written; filled in by its change.

Revision ID: 0017_export_files
Revises: 0016_erasure
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0017_export_files"
down_revision: str | None = "0016_erasure"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
