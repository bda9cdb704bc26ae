"""Engines on vLLM servers (issue 23): a version's backend, and which server answered.

- ``model_versions.backend``: ``in-process`` (every version before this revision), ``server`` or
  ``managed-server``; ``server_urls`` (a JSON list of base URLs) and ``server_model`` (the model name the servers
  serve) for ``server``; ``server_info``: what the server reported when the version was registered (model name,
  root, max model length), so a server that later reports another model refuses to serve, like a changed file.
- ``exchanges.engine_server``: the base URL of the server that answered (NULL in-process), for per-server latency,
  indexed with created_at.
- ``engine_health.server``: NULL for the row of the whole engine, a base URL for one server's row;
  ``queue_ms``: that server's mean queue time over the sample (from its ``/metrics``).

Revision ID: 0019_server_backends
Revises: 0018_exchange_owner
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019_server_backends"
down_revision: str | None = "0018_exchange_owner"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("backend", sa.String(20), nullable=False, server_default="in-process"))
        batch.add_column(sa.Column("server_urls", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("server_model", sa.String(200), nullable=True))
        batch.add_column(sa.Column("server_info", sa.JSON(), nullable=True))
    with op.batch_alter_table("exchanges") as batch:
        batch.add_column(sa.Column("engine_server", sa.String(300), nullable=True))
    # Per-server figures over a time range; without it, finding that no exchange of a 30-day range came from a
    # server scans the range (2.2 s on 1,000,000 in-process exchanges).
    op.create_index("ix_exchanges_engine_server_created_at", "exchanges", ["engine_server", "created_at"])
    with op.batch_alter_table("engine_health") as batch:
        batch.add_column(sa.Column("server", sa.String(300), nullable=True))
        batch.add_column(sa.Column("queue_ms", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("engine_health") as batch:
        batch.drop_column("queue_ms")
        batch.drop_column("server")
    op.drop_index("ix_exchanges_engine_server_created_at", table_name="exchanges")
    with op.batch_alter_table("exchanges") as batch:
        batch.drop_column("engine_server")
    # Plain ALTER TABLE DROP COLUMN (SQLite 3.35+), not a batch copy of the table: a copy would write the
    # self-referencing foreign key of 0008 into the table's definition, which 0008's own downgrade cannot drop.
    for column in ("server_info", "server_model", "server_urls", "backend"):
        op.drop_column("model_versions", column)
