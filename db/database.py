"""The one place that creates the database engine and opens sessions.

Everything SQLite-specific lives in ``_configure_sqlite``; the rest of ``db/`` is portable SQL and runs
on PostgreSQL through the URL alone.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

from db.config import DbConfig

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# PostgreSQL advisory lock key held while migrating (any fixed 64-bit number no other lock of the database uses).
_MIGRATION_LOCK_KEY = 0x6C6C6D2D6D6967  # "llm-mig"

# Engine-level execution option marking read-only sessions (SQLite: deferred BEGIN, no write lock).
READONLY_OPTION = "llm_console_readonly"


_canonical_json = functools.partial(json.dumps, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class ReadOnlySessionError(RuntimeError):
    """A session opened with ``readonly=True`` tried to write."""


class ForeignKeyCheckError(RuntimeError):
    """A migration left rows pointing at rows that do not exist (SQLite); that migration was rolled back."""


class Database:
    """Owns the process's single SQLAlchemy engine and hands out short units of work.

    ``with db.session() as s:`` commits when the block ends normally and rolls back on an exception.
    Objects loaded in a session stay readable after it closes (``expire_on_commit=False``).
    """

    def __init__(self, config: DbConfig) -> None:
        self.config = config
        url = make_url(config.url)
        self.url: URL = url
        # Bound values are prompts, answers and raw text: never copy them into error messages and logs.
        kwargs: dict[str, Any] = {"echo": config.echo, "future": True, "hide_parameters": True,
                                  # JSON columns stored in canonical form (sorted keys, no spaces, Unicode as is):
                                  # audit details are then stored byte for byte as they were hashed.
                                  "json_serializer": _canonical_json}
        if url.get_backend_name() == "sqlite":
            kwargs.update(_sqlite_engine_kwargs(url, config))
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if url.get_backend_name() == "sqlite":
            _configure_sqlite(self.engine, config)
        self._write_sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(
            self.engine.execution_options(**{READONLY_OPTION: True}),
            expire_on_commit=False,
            info={READONLY_OPTION: True},
        )
        logger.info("database engine created for %s", url.render_as_string(hide_password=True))

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        """One unit of work: commit on success, roll back on error, always close.

        ``readonly=True`` is for pages that only read: on SQLite it does not take the write lock, and
        any attempt to flush changes raises ``ReadOnlySessionError``.
        """
        maker = self._read_sessions if readonly else self._write_sessions
        with maker.begin() as session:
            yield session

    def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to ``revision`` (default: the newest) with Alembic.

        On PostgreSQL it holds an advisory lock meanwhile: console replicas starting together on a new database
        migrate one after the other (the later ones find it done) instead of creating the same tables at once.

        On SQLite the migrations run with foreign keys switched off, as SQLite's own procedure for changing a table
        asks: a migration that rebuilds a table (copy, drop the old one, rename) would otherwise fail when rows of
        other tables point at it, the DROP counting each of them as a violation. ``PRAGMA foreign_key_check`` runs
        after each migration instead (``migrations/env.py``) and rolls back one that leaves a dangling reference.
        """
        with self.engine.connect() as connection:
            postgres = connection.dialect.name == "postgresql"
            sqlite = connection.dialect.name == "sqlite"
            if postgres:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                connection.commit()  # the lock is the session's: it outlives this transaction
            if sqlite:
                _set_sqlite_foreign_keys(connection, on=False)
            try:
                cfg = alembic_config(self.config.url, connection)
                command.upgrade(cfg, revision)
                connection.commit()
            finally:
                if postgres:
                    connection.rollback()
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                    connection.commit()
                if sqlite:
                    connection.rollback()  # nothing after the commit; ends a failed migration's transaction
                    _set_sqlite_foreign_keys(connection, on=True)
        logger.info("database migrated to %s", self.current_revision())

    def current_revision(self) -> str | None:
        """The Alembic revision the database is at, or None for an empty database."""
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def head_revision(self) -> str | None:
        """The newest revision the code knows about."""
        return ScriptDirectory.from_config(alembic_config(self.config.url)).get_current_head()

    def dispose(self) -> None:
        """Close every pooled connection; call at shutdown or before discarding the object."""
        self.engine.dispose()


@contextmanager
def scratch_postgres_database(server_url: str, *, prefix: str = "llm_console_scratch") -> Iterator[str]:
    """The URL of a new, empty database on the PostgreSQL server at ``server_url`` (a role that may create
    databases), dropped afterwards with every connection to it: for tests and benchmarks, never for a console."""
    server = make_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))  # (a generated name: no user input in the statement)
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _set_sqlite_foreign_keys(connection: Connection, *, on: bool) -> None:
    """Switch foreign key enforcement on or off for this SQLite connection, and check that it took.

    The PRAGMA is silently ignored inside a transaction, so it goes straight to the driver's connection (the
    engine's ``begin`` listener would open one first). A connection that cannot be switched back on is discarded
    rather than returned to the pool: no later unit of work may run on it without foreign keys.
    """
    raw = connection.connection.driver_connection
    assert raw is not None
    raw.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    if raw.execute("PRAGMA foreign_keys").fetchone()[0] == int(on):
        return
    if on:
        connection.invalidate()
    raise RuntimeError(f"could not switch SQLite foreign keys {'on' if on else 'off'} around the migrations "
                       "(is the connection inside a transaction?)")


def alembic_config(url: str, connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` built in code, pointing at the migrations inside this package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Percent signs in passwords would be read as interpolation by ConfigParser.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@event.listens_for(Session, "before_flush")
def _refuse_readonly_writes(session: Session, flush_context: Any, instances: Any) -> None:
    if session.info.get(READONLY_OPTION) and (session.new or session.dirty or session.deleted):
        raise ReadOnlySessionError("this session was opened read-only")


# ---- files ----


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private_dir(path: Path, *, tighten: bool = False) -> None:
    """Create ``path`` (and missing parents) readable by its owner only.

    An existing directory is left as it is, unless ``tighten``: then, if this process's user owns it and
    others may enter it, it is made owner-only too (for a directory that holds only the console's own data).
    """
    if path.is_dir():
        info = path.stat()
        if tighten and info.st_uid == os.getuid() and info.st_mode & 0o077:
            logger.warning("%s was readable by other users; making it owner-only", path)
            path.chmod(PRIVATE_DIR_MODE)
        return
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    # mkdir's mode is filtered through the umask; chmod says exactly what we mean.
    path.chmod(PRIVATE_DIR_MODE)


# ---- SQLite corner ----


def _create_private_file(path: Path) -> None:
    """Create an empty SQLite file readable by its owner only, before SQLite creates it with the umask's mode.

    SQLite gives the -wal and -shm files it creates later the database file's own permissions.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)
    os.chmod(path, PRIVATE_FILE_MODE)
    logger.info("created the database file %s (owner-only)", path)


def _sqlite_engine_kwargs(url: URL, config: DbConfig) -> dict[str, Any]:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        path = Path(database).expanduser()
        make_private_dir(path.parent)
        _create_private_file(path)
    return {
        # pysqlite's own busy handler, in seconds; the PRAGMA below sets the same for the C library.
        "connect_args": {"timeout": config.busy_timeout_ms / 1000, "check_same_thread": False},
        # Streamlit serves many sessions from threads; let enough connections wait for the lock.
        "pool_size": 20,
        "max_overflow": 10,
    }


def _configure_sqlite(engine: Engine, config: DbConfig) -> None:
    """WAL, foreign keys, busy timeout, and BEGIN IMMEDIATE for write transactions.

    pysqlite normally opens transactions lazily with a deferred BEGIN, so two writers can both start
    reading and then fail to upgrade to the write lock ("database is locked") without the busy handler
    helping. Taking the lock at BEGIN (IMMEDIATE) makes concurrent writers queue on busy_timeout instead.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, emit BEGIN (the documented pysqlite transaction recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(config.busy_timeout_ms)}")
            cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fsync on checkpoint only
            # Overwrite freed bytes with zeros (not every build's default): text that retention or an erasure
            # removes, and the old copies an earlier update left in a page's free space, leave the file too.
            cursor.execute("PRAGMA secure_delete=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(READONLY_OPTION):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
