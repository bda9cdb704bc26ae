"""Copy a SQLite console database into an empty PostgreSQL one, then verify the copy.

``copy_database`` is the whole move (``llm-console db copy --to URL`` calls it):

1. The source must be a SQLite console database at the code's migration head. It is opened with
   ``PRAGMA query_only`` and never migrated or written: an older one is refused with the way to upgrade it first
   (the console's own commands migrate it), so the source stays exactly what it was if anything goes wrong.
2. The target must be PostgreSQL and empty: no tables at all, or only what the console's migrations create with no
   rows in them except the seeded chain head (``audit_head`` at seq 0, the genesis hash). Anything else is refused
   with the tables that hold rows, before anything is written.
3. The target is migrated to head with the same Alembic migrations, then every table is copied in foreign-key order
   (``metadata.sorted_tables``) inside one transaction: rows are read from one SQLite snapshot in batches and written
   with PostgreSQL's ``COPY`` (memory stays flat whatever the table's size). Primary keys are kept, timestamps go in
   as UTC ``timestamptz``, JSON columns are copied as their stored text (audit details stay byte for byte what was
   hashed), and each table's sequence is set past its largest id.
4. Before that transaction commits, the copy is verified: row counts per table equal the source's, ``audit_head``
   equals the source's, and ``verify_chain`` walks the whole chain on PostgreSQL against the signed checkpoints
   (copied with the rest; the key and the checkpoint file are the files beside the database, given by the caller).
   A failed check, a row PostgreSQL refuses or any error rolls everything back: the target then holds the empty
   schema and none of the rows.

Error messages name tables and row numbers, never stored values (prompts, answers and raw text), and show URLs with
the password masked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import JSON, Engine, Integer, Table, create_engine, event, func, inspect, select, text
from sqlalchemy import type_coerce as sa_type_coerce
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session
from sqlalchemy.types import Text

from db import audit as audit_q
from db.config import DbConfig
from db.database import Database, alembic_config
from db.tables import AuditHead, Base

logger = logging.getLogger(__name__)

BATCH_ROWS = 5000
VERSION_TABLE = "alembic_version"
_HEAD = cast(Table, AuditHead.__table__)


class CopyError(ValueError):
    """A problem the user can fix (a bad URL, a source that is not a console database, a target that is not empty,
    a row PostgreSQL refuses, a copy that does not verify); nothing was copied."""


@dataclass(frozen=True)
class CopyReport:
    """What ``copy_database`` copied and verified.

    ``tables`` maps each table to its row count (equal on both sides, or there is no report); ``events_verified``
    is how many audit events ``verify_chain`` walked on the target, ``checkpoints_checked`` how many signed
    checkpoints it compared (0 without the audit key), ``anchored_seq`` the newest event a checkpoint covers.
    ``seconds`` is the whole run, ``copy_seconds`` the copy and its verification (after the migration); ``rows_per_s``
    is rows over ``copy_seconds``.
    """

    source: str
    target: str
    revision: str
    tables: dict[str, int]
    rows: int
    events_verified: int
    checkpoints_checked: int
    anchored_seq: int
    audit_head_seq: int
    seconds: float
    copy_seconds: float
    warnings: tuple[str, ...] = field(default=())

    @property
    def rows_per_s(self) -> float:
        return round(self.rows / self.copy_seconds, 1) if self.copy_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"ok": True, **asdict(self), "warnings": list(self.warnings), "rows_per_s": self.rows_per_s}


BatchHook = Callable[[str, int], None]


def copy_database(source_url: str, target_url: str, *, key_file: Path | None = None,
                  checkpoint_file: Path | None = None, batch_rows: int = BATCH_ROWS,
                  on_batch: BatchHook | None = None) -> CopyReport:
    """Copy the SQLite console database at ``source_url`` into the empty PostgreSQL database at ``target_url``.

    ``key_file`` and ``checkpoint_file`` are the console's audit key and checkpoint file (they stay where they are:
    the copy's checkpoints are signed with the same key); without a key file the chain is verified without its
    checkpoints and the report says so. ``on_batch(table, rows_so_far)`` is called after each batch is written
    (a progress hook, and the tests' seam for a failure mid-copy). Raises :class:`CopyError`; the target then holds
    none of the source's rows.
    """
    started = time.perf_counter()
    source, target = _parse(source_url, "--from"), _parse(target_url, "--to")
    shown_source, shown_target = _show(source), _show(target)
    if _same(source, target):
        raise CopyError(f"the source and the target are the same database ({shown_source})")
    if source.get_backend_name() != "sqlite":
        raise CopyError(f"the source must be a SQLite console database (this command moves one to PostgreSQL); "
                        f"got {shown_source}: give the SQLite file with --from sqlite:///PATH")
    if target.get_backend_name() != "postgresql":
        raise CopyError(f"the target must be a PostgreSQL database (postgresql+psycopg://USER@HOST/DB); got "
                        f"{shown_target}")
    head = ScriptDirectory.from_config(alembic_config(source_url)).get_current_head()
    assert head is not None
    anchor, warnings = _anchor(key_file, checkpoint_file)  # an unusable key stops here, before anything is written
    src_engine = _open_source(source)
    try:
        _check_source(src_engine, shown_source, head)
        target_db = _open_target(target, target_url, shown_target)
        try:
            _check_target_empty(target_db, shown_target)
            try:
                target_db.migrate()
            except DBAPIError as exc:
                raise CopyError(f"cannot migrate {shown_target}: {_first_line(exc.orig)}") from None
            copy_started = time.perf_counter()
            with src_engine.connect() as src, target_db.engine.connect() as dst:
                with src.begin(), dst.begin():
                    _check_target_empty_now(dst, shown_target)
                    counts = _copy_tables(src, dst, batch_rows, on_batch)
                    _reset_sequences(dst)
                    report, head_seq = _verify(src, dst, counts, anchor)
                    # Leaving the block commits: only a copy that verified is kept.
        finally:
            target_db.dispose()
    finally:
        src_engine.dispose()
    ended = time.perf_counter()
    seconds, copy_seconds = round(ended - started, 3), round(ended - copy_started, 3)
    logger.info("copied %s rows from %s to %s in %.1f s", sum(counts.values()), shown_source, shown_target, seconds)
    return CopyReport(source=shown_source, target=shown_target, revision=head, tables=counts,
                      rows=sum(counts.values()), events_verified=report.checked,
                      checkpoints_checked=report.checkpoints_checked, anchored_seq=report.anchored_seq,
                      audit_head_seq=head_seq, seconds=seconds,
                      copy_seconds=copy_seconds,
                      warnings=tuple(warnings) + report.warnings)


# ---- the two ends ----


def _parse(url: str, option: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        raise CopyError(f"{option}: not a database URL (e.g. sqlite:///data/console.db, "
                        "postgresql+psycopg://USER@HOST/DB)") from None


def _show(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _same(a: URL, b: URL) -> bool:
    if a.get_backend_name() == "sqlite" and b.get_backend_name() == "sqlite":
        return _sqlite_path(a).resolve() == _sqlite_path(b).resolve()
    return (a.get_backend_name(), a.host, a.port, a.database) == (b.get_backend_name(), b.host, b.port, b.database)


def _sqlite_path(url: URL) -> Path:
    return Path(url.database or "").expanduser()


def _open_source(url: URL) -> Engine:
    """A read-only engine on the SQLite file (never created here: a missing file is refused)."""
    database = url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        raise CopyError(f"--from: give the SQLite database as a file path (sqlite:///PATH); got {_show(url)}")
    path = _sqlite_path(url)
    if not path.is_file():
        raise CopyError(f"no SQLite database at {path}")
    engine = create_engine(url.set(drivername="sqlite"), hide_parameters=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN (below): one snapshot for every read
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA query_only=ON")  # the source is never written, whatever happens
            cursor.execute("PRAGMA busy_timeout=30000")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


def _check_source(engine: Engine, shown: str, head: str) -> None:
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            revision = (MigrationContext.configure(conn).get_current_revision()
                        if VERSION_TABLE in tables else None)
    except DBAPIError as exc:
        raise CopyError(f"{shown} is not a readable SQLite database: {_first_line(exc.orig)}") from None
    if revision is None or "audit_events" not in tables:
        raise CopyError(f"{shown} is not a console database (it has no migrated console tables)")
    if revision != head:
        raise CopyError(f"{shown} is at migration {revision}, this release at {head}: the copy never changes its "
                        "source, so upgrade it first with this release's console (any command that opens it, e.g. "
                        "`llm-console audit verify`, migrates it), then copy")


def _open_target(url: URL, raw_url: str, shown: str) -> Database:
    try:
        database = Database(DbConfig(url=raw_url))
    except (NoSuchModuleError, ModuleNotFoundError):
        raise CopyError(f"no driver for {url.drivername}: use postgresql+psycopg://USER@HOST/DB") from None
    try:
        with database.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except DBAPIError as exc:
        database.dispose()
        raise CopyError(f"cannot connect to {shown}: {_masked(_first_line(exc.orig), url)}") from None
    return database


def _first_line(error: BaseException | None) -> str:
    return (str(error) or type(error).__name__).strip().splitlines()[0] if error is not None else "unknown error"


def _masked(message: str, url: URL) -> str:
    return message.replace(url.password, "***") if url.password else message


def _check_target_empty(database: Database, shown: str) -> None:
    with database.engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        if not tables:
            return
        unknown = sorted(tables - set(Base.metadata.tables) - {VERSION_TABLE})
        if unknown:
            raise CopyError(f"{shown} is not empty: it has tables that are not the console's "
                            f"({', '.join(unknown)}); copy into a new database")
        if VERSION_TABLE not in tables:
            raise CopyError(f"{shown} has console tables that the console's migrations did not make (no "
                            f"{VERSION_TABLE} table); copy into a new database")
        revision = MigrationContext.configure(conn).get_current_revision()
        script = ScriptDirectory.from_config(alembic_config(database.config.url))
        if revision is not None and revision not in {r.revision for r in script.walk_revisions()}:
            raise CopyError(f"{shown} was migrated by a newer release (revision {revision})")
        _refuse_rows(conn, tables, shown)


def _check_target_empty_now(conn: Connection, shown: str) -> None:
    """The same check inside the copy's transaction, with the tables locked (a console started on the target
    meanwhile cannot slip rows in)."""
    names = [t.name for t in Base.metadata.sorted_tables]
    conn.exec_driver_sql(f"LOCK TABLE {', '.join(_quote(n) for n in names)} IN EXCLUSIVE MODE")
    _refuse_rows(conn, set(names), shown)
    # The seeded head goes; the source's takes its place.
    conn.execute(_HEAD.delete())


def _refuse_rows(conn: Connection, tables: set[str], shown: str) -> None:
    holding = []
    for table in Base.metadata.sorted_tables:
        if table.name not in tables:
            continue
        count = conn.execute(select(func.count()).select_from(table)).scalar_one()
        if table.name == "audit_head":
            seeded = conn.execute(select(func.count()).select_from(table).where(
                table.c.seq == 0, table.c.hash == audit_q.GENESIS_HASH)).scalar_one()
            count -= min(seeded, 1)
        if count:
            holding.append(f"{table.name} ({count} row{'s' if count != 1 else ''})")
    if holding:
        raise CopyError(f"{shown} is not empty: {', '.join(holding)} hold rows; the copy goes only into an empty "
                        "database (nothing was written)")


# ---- copying ----


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _read_columns(table: Table) -> list[Any]:
    # JSON columns as their stored text: what was hashed is what lands in PostgreSQL, byte for byte.
    return [sa_type_coerce(c, Text) if isinstance(c.type, JSON) else c for c in table.columns]


def _source_rows(src: Connection, table: Table, batch_rows: int) -> Iterator[Sequence[Sequence[Any]]]:
    stmt = select(*_read_columns(table)).order_by(*table.primary_key.columns)
    result = src.execute(stmt.execution_options(yield_per=batch_rows))
    yield from result.partitions()


def _copy_tables(src: Connection, dst: Connection, batch_rows: int, on_batch: BatchHook | None) -> dict[str, int]:
    import psycopg

    cursor = dst.connection.driver_connection.cursor()  # type: ignore[union-attr]
    counts: dict[str, int] = {}
    try:
        for table in Base.metadata.sorted_tables:
            columns = ", ".join(_quote(c.name) for c in table.columns)
            copied = 0
            try:
                with cursor.copy(f"COPY {_quote(table.name)} ({columns}) FROM STDIN") as copy:
                    for batch in _source_rows(src, table, batch_rows):
                        for row in batch:
                            copy.write_row(row)
                        copied += len(batch)
                        if on_batch is not None:
                            on_batch(table.name, copied)
            except psycopg.Error as exc:
                # The primary message only: the context PostgreSQL adds quotes the refused value.
                primary = getattr(exc.diag, "message_primary", None) or type(exc).__name__
                if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError)):
                    raise CopyError(f"PostgreSQL refused a row of {table.name}: {primary}; nothing was "
                                    "copied") from None
                raise CopyError(f"copying {table.name} failed: {primary}; nothing was copied") from None
            counts[table.name] = copied
    finally:
        cursor.close()
    return counts


def _reset_sequences(dst: Connection) -> None:
    """Each serial primary key's sequence continues after the largest copied id (a new row gets a fresh one)."""
    for table in Base.metadata.sorted_tables:
        pk = list(table.primary_key.columns)
        if len(pk) != 1 or not isinstance(pk[0].type, Integer):
            continue
        sequence = dst.execute(text("SELECT pg_get_serial_sequence(:t, :c)"),
                               {"t": table.name, "c": pk[0].name}).scalar()
        if sequence is None:
            continue
        top = dst.execute(select(func.max(pk[0]))).scalar()
        dst.execute(text("SELECT setval(CAST(:s AS regclass), :v, :called)"),
                    {"s": sequence, "v": top if top is not None else 1, "called": top is not None})


# ---- verification ----


def _anchor(key_file: Path | None, checkpoint_file: Path | None) -> tuple[audit_q.AuditAnchor | None, list[str]]:
    if key_file is None:
        return None, ["no audit key given: the chain was verified without its signed checkpoints"]
    if not key_file.exists():
        return None, [f"no audit key at {key_file}: the chain was verified without its signed checkpoints"]
    try:
        return audit_q.AuditAnchor.load(key_file, checkpoint_file, create=False), []
    except (OSError, ValueError) as exc:
        raise CopyError(f"the audit key {key_file} cannot be used: {exc}") from None


def _verify(src: Connection, dst: Connection, counts: dict[str, int],
            anchor: audit_q.AuditAnchor | None) -> tuple[audit_q.ChainReport, int]:
    differ = []
    for table in Base.metadata.sorted_tables:
        expected = src.execute(select(func.count()).select_from(table)).scalar_one()
        found = dst.execute(select(func.count()).select_from(table)).scalar_one()
        if not expected == found == counts[table.name]:
            differ.append(f"{table.name} ({expected} in the source, {found} copied)")
    if differ:
        raise CopyError(f"row counts differ: {', '.join(differ)}; nothing was copied")
    head = _HEAD
    src_head = src.execute(select(head.c.seq, head.c.hash)).all()
    dst_head = dst.execute(select(head.c.seq, head.c.hash)).all()
    if src_head != dst_head:
        raise CopyError("the copied audit head differs from the source's; nothing was copied")
    with Session(bind=dst) as session:
        report = audit_q.verify_chain(session, anchor, ())
    if not report.ok:
        with Session(bind=src) as session:
            source_report = audit_q.verify_chain(session, anchor, ())
        where = (f"the source's chain is broken at the same place ({source_report.kind} at event "
                 f"{source_report.first_bad_seq}): check it with `llm-console audit verify`"
                 if not source_report.ok else "the source's chain verifies: the copy differs from it")
        if report.kind == audit_q.TAIL_CUT:
            # A console still running on the source signs checkpoints past the snapshot the copy read.
            where += "; if a console still runs on the source, stop it and copy again"
        raise CopyError(f"the copied audit chain does not verify ({report.kind} at event {report.first_bad_seq}: "
                        f"{report.reason}); {where}; nothing was copied")
    return report, src_head[0].seq if src_head else 0


def describe(report: CopyReport) -> Iterable[str]:
    """The report as lines for a person: what was copied, what was verified, how long it took."""
    yield (f"copied {report.rows:,} rows in {len(report.tables)} tables from {report.source} to {report.target} "
           f"(migration {report.revision}) in {report.seconds:.1f} s (the copy and its checks "
           f"{report.copy_seconds:.1f} s: {report.rows_per_s:,.0f} rows/s)")
    for name, rows in report.tables.items():
        if rows:
            yield f"  {name}: {rows:,}"
    empty = [name for name, rows in report.tables.items() if not rows]
    if empty:
        yield f"  empty: {', '.join(empty)}"
    anchored = (f", {report.checkpoints_checked} signed checkpoint(s) match, events 1-{report.anchored_seq} anchored"
                if report.checkpoints_checked else ", no signed checkpoint compared")
    yield (f"verified: row counts equal in every table; audit chain intact on the target: {report.events_verified:,} "
           f"events{anchored}")
    for warning in report.warnings:
        yield f"warning: {warning}"


