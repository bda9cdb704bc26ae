"""Alembic environment: runs on the connection ``Database.migrate`` passes in, or on the configured URL."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from db.database import ForeignKeyCheckError
from db.tables import Base

config = context.config
target_metadata = Base.metadata


def _check_foreign_keys(ctx: MigrationContext, step: MigrationInfo, heads: Collection[Any],
                        run_args: Mapping[str, Any]) -> None:
    """SQLite: after each migration, inside its transaction, every reference must still find its row.

    ``Database.migrate`` runs the migrations with foreign keys off (a table rebuild drops a table others point
    at), so this is where a migration that loses or orphans rows is caught, as SQLite's ALTER TABLE procedure asks.
    """
    assert ctx.connection is not None
    rows = ctx.connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if rows:
        shown = "; ".join(f"{table} rowid {rowid} -> {parent}" for table, rowid, parent, _fkid in rows[:10])
        which = f"{'up to' if step.is_upgrade else 'down from'} {', '.join(step.up_revision_ids)}"
        raise ForeignKeyCheckError(f"migrating {which} left {len(rows)} rows pointing at missing rows ({shown}); "
                                   "that migration was rolled back")


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table when needed.
        render_as_batch=True,
        transaction_per_migration=True,
        compare_type=True,
        on_version_apply=_check_foreign_keys if connection.dialect.name == "sqlite" else None,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # Command-line use (`alembic -c ...`): a plain engine on the configured URL.
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
