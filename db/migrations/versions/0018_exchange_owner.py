"""The console process that holds a pending exchange (issue 21, low item).

- ``exchanges.owner``: ``<host>:<pid>`` of the console process that stored the prompt (``db.chat.process_owner``).
  At start-up a console marks ``interrupted`` only the pending exchanges whose process is gone (on its own host: that
  process id no longer runs, or is its own, taken over from an earlier process in a restarted container; on another
  host: older than ``interrupted_after_minutes``), so a second console on the same database does not close the
  answers another one is still streaming. Exchanges from before this revision have no owner and are swept as before
  (pending from before the start).

Revision ID: 0018_exchange_owner
Revises: 0017_export_files
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018_exchange_owner"
down_revision: str | None = "0017_export_files"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("exchanges") as batch:
        batch.add_column(sa.Column("owner", sa.String(300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("exchanges") as batch:
        batch.drop_column("owner")
