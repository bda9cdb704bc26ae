"""Model lifecycle: version fingerprints, quantization and retirement; aliases and their history.

The version the console serves becomes the ``production`` alias; the old ``live_model`` state value (if any)
moves there.

Revision ID: 0004_model_lifecycle
Revises: 0003_review_queue
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004_model_lifecycle"
down_revision: str | None = "0003_review_queue"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("quantization", sa.String(40), nullable=True))
        batch.add_column(sa.Column("fingerprint", sa.String(64), nullable=True))
        batch.add_column(sa.Column("fingerprint_files", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "model_aliases",
        sa.Column("alias", sa.String(60), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"], ["model_versions.id"], name=op.f("fk_model_aliases_version_id_model_versions")
        ),
        sa.ForeignKeyConstraint(["updated_by_id"], ["users.id"], name=op.f("fk_model_aliases_updated_by_id_users")),
        sa.PrimaryKeyConstraint("alias", name=op.f("pk_model_aliases")),
    )
    op.create_table(
        "model_alias_moves",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(60), nullable=False),
        sa.Column("from_version_id", sa.Integer(), nullable=True),
        sa.Column("to_version_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["from_version_id"], ["model_versions.id"],
            name=op.f("fk_model_alias_moves_from_version_id_model_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["to_version_id"], ["model_versions.id"], name=op.f("fk_model_alias_moves_to_version_id_model_versions")
        ),
        sa.ForeignKeyConstraint(["actor_id"], ["users.id"], name=op.f("fk_model_alias_moves_actor_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_alias_moves")),
    )
    op.create_index(op.f("ix_model_alias_moves_alias"), "model_alias_moves", ["alias"])

    # The version last switched to (app_state 'live_model', a JSON string) becomes the production alias.
    # No audit event here: a migration is not an actor's change, and the chain must not depend on one.
    conn = op.get_bind()
    # Read through a typed JSON column so SQLite (text) and PostgreSQL (json) both give the decoded value.
    app_state = sa.table("app_state", sa.column("key", sa.String), sa.column("value", sa.JSON))
    live = conn.execute(sa.select(app_state.c.value).where(app_state.c.key == "live_model")).scalar()
    if isinstance(live, dict):
        live = live.get("name")
    if isinstance(live, str) and live:
        version_id = conn.execute(sa.text("SELECT id FROM model_versions WHERE name = :n"), {"n": live}).scalar()
        if version_id is not None:
            now = datetime.now(UTC)
            conn.execute(
                sa.text("INSERT INTO model_aliases (alias, version_id, updated_at) VALUES ('production', :v, :t)"),
                {"v": version_id, "t": now},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO model_alias_moves (alias, to_version_id, actor, reason, created_at) "
                    "VALUES ('production', :v, 'migration', 'was the live model', :t)"
                ),
                {"v": version_id, "t": now},
            )


def downgrade() -> None:
    op.drop_index(op.f("ix_model_alias_moves_alias"), table_name="model_alias_moves")
    op.drop_table("model_alias_moves")
    op.drop_table("model_aliases")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("retired_at")
        batch.drop_column("fingerprint_files")
        batch.drop_column("fingerprint")
        batch.drop_column("quantization")
