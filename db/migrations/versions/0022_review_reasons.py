"""Two more reasons a review item is opened (issue 25): ``spot_check`` and ``feedback``.

- ``spot_check``: an exchange nothing flagged, drawn by the spot-check sampling rule so reviewers' verdicts estimate
  what the scanners miss.
- ``feedback``: a user's thumbs-down with a reason, sent to review when the policy says so.

Downgrade refuses while items with either reason exist (they would break the older constraint).

Revision ID: 0022_review_reasons
Revises: 0021_audit_sequencer
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022_review_reasons"
down_revision: str | None = "0021_audit_sequencer"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_REASONS = ("flagged", "blocked", "manual")
NEW_REASONS = (*OLD_REASONS, "spot_check", "feedback")


def _reasons(reasons: Sequence[str]) -> sa.TextClause:
    return sa.text("reason IN (" + ", ".join(f"'{r}'" for r in reasons) + ")")


def _set_reasons(reasons: Sequence[str]) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("review_items", recreate="always" if sqlite else "auto") as batch:
        batch.drop_constraint("reason", type_="check")
        batch.create_check_constraint("reason", _reasons(reasons))


def upgrade() -> None:
    _set_reasons(NEW_REASONS)


def downgrade() -> None:
    left = op.get_bind().execute(
        sa.text("SELECT COUNT(*) FROM review_items WHERE reason IN ('spot_check', 'feedback')")).scalar_one()
    if left:
        raise RuntimeError(f"{left} review items were opened as spot checks or from feedback; the older schema "
                           "cannot hold them. Delete or keep them (stay on this revision).")
    _set_reasons(OLD_REASONS)
