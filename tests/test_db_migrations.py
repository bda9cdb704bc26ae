"""Migrations: from an empty database, from the older 0001 schema with data, and the pinned audit columns."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from db import Database, DbConfig
from db.tables import Base

ROOT = Path(__file__).resolve().parent.parent
HEAD = "0012_browser_sessions"
QUEUE_INDEX = "ix_review_items_queue"
CORE_TABLES = {
    "users",
    "user_roles",
    "model_versions",
    "conversations",
    "exchanges",
    "audit_events",
    "audit_head",
    "app_state",
}
SAFETY_TABLES = {"policy_versions", "findings", "raw_texts", "review_items", "review_decisions", "review_samples"}
LIFECYCLE_TABLES = {"model_aliases", "model_alias_moves"}
RELEASE_TABLES = {"evaluations", "promotion_requests"}  # 0005_evaluations, 0006_promotions
AUDIT_TABLES = {"audit_checkpoints", "export_requests"}  # 0009_audit_anchor
METRICS_TABLES = {"latency_buckets", "slos", "engine_health"}  # 0010_latency_buckets, 0011_engine_health
SESSION_TABLES = {"browser_sessions"}  # 0012_browser_sessions


@pytest.fixture
def empty_db(tmp_path: Path) -> Iterator[Database]:
    database = Database(DbConfig(f"sqlite:///{tmp_path / 'data' / 'console.db'}"))
    yield database
    database.dispose()


def _tables(database: Database) -> set[str]:
    return set(inspect(database.engine).get_table_names()) - {"alembic_version"}


def test_migrating_an_empty_database_creates_every_table_at_head(empty_db: Database) -> None:
    assert empty_db.current_revision() is None
    empty_db.migrate()
    assert empty_db.current_revision() == HEAD == empty_db.head_revision()
    assert _tables(empty_db) == CORE_TABLES | SAFETY_TABLES | LIFECYCLE_TABLES | RELEASE_TABLES | AUDIT_TABLES | METRICS_TABLES | SESSION_TABLES


def _is_queue_index(diff: object) -> bool:
    return (
        isinstance(diff, tuple) and diff[0] in {"add_index", "remove_index"} and diff[1].name == QUEUE_INDEX
    )


def test_migrated_schema_matches_the_orm_models(empty_db: Database) -> None:
    empty_db.migrate()
    with empty_db.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    # Alembic cannot compare an index with a DESC expression; it is checked by reflection below.
    assert [d for d in diffs if not _is_queue_index(d)] == []
    indexes = {ix["name"]: ix for ix in inspect(empty_db.engine).get_indexes("review_items")}
    assert indexes[QUEUE_INDEX]["column_names"] == ["status", "severity", "created_at"]


def test_migrating_twice_changes_nothing(empty_db: Database) -> None:
    empty_db.migrate()
    empty_db.migrate()
    assert empty_db.current_revision() == HEAD
    with empty_db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_head")).scalar_one() == 1


def test_upgrading_from_0001_with_data_keeps_the_data(empty_db: Database) -> None:
    empty_db.migrate("0001_core")
    assert _tables(empty_db) == CORE_TABLES
    with empty_db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO users (id, username, disabled, failed_login_count, created_at, updated_at) "
                "VALUES (1, 'ada', false, 0, '2026-01-02 03:04:05.000000', '2026-01-02 03:04:05.000000')"
            )
        )
        conn.execute(text("INSERT INTO user_roles (user_id, role) VALUES (1, 'operator')"))
        conn.execute(
            text(
                "INSERT INTO conversations (id, user_id, title, created_at, updated_at) "
                "VALUES (7, 1, 'old chat', '2026-01-02 03:04:05.000000', '2026-01-02 03:04:05.000000')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO exchanges (id, conversation_id, user_id, model_version, prompt, response, sampling, "
                "status, ttft_ms, created_at) VALUES (9, 7, 1, 'demo-v1', 'hi', 'hello', '{\"temperature\": 0.5}', "
                "'ok', 12.5, '2026-01-02 03:04:05.000000')"
            )
        )

    empty_db.migrate()

    assert empty_db.current_revision() == HEAD
    from db.chat import get_exchange, list_exchanges
    from db.users import get_user_by_username

    with empty_db.session(readonly=True) as s:
        user = get_user_by_username(s, "ada")
        assert user is not None and user.roles == {"operator"}
        (exchange,) = list_exchanges(s, 7)
        assert exchange.id == 9 and exchange.prompt == "hi" and exchange.response == "hello"
        assert exchange.sampling == {"temperature": 0.5}
        assert exchange.ttft_ms == 12.5
        # Columns added by 0002 get their defaults on old rows.
        assert exchange.review_status == "none"
        assert exchange.prompt_action is None
        assert get_exchange(s, 9) is exchange


def test_downgrading_to_0001_and_upgrading_again_works(empty_db: Database) -> None:
    from alembic import command

    from db.database import alembic_config

    empty_db.migrate()
    with empty_db.engine.connect() as conn:
        command.downgrade(alembic_config(empty_db.config.url, conn), "0001_core")
        conn.commit()
    assert empty_db.current_revision() == "0001_core"
    assert _tables(empty_db) == CORE_TABLES
    assert "review_status" not in {c["name"] for c in inspect(empty_db.engine).get_columns("exchanges")}
    empty_db.migrate()
    assert _tables(empty_db) == CORE_TABLES | SAFETY_TABLES | LIFECYCLE_TABLES | RELEASE_TABLES | AUDIT_TABLES | METRICS_TABLES | SESSION_TABLES


def test_audit_events_table_has_exactly_the_pinned_columns(empty_db: Database) -> None:
    empty_db.migrate()
    columns = [c["name"] for c in inspect(empty_db.engine).get_columns("audit_events")]
    assert columns == [
        "id",
        "seq",
        "ts",
        "actor",
        "actor_id",
        "action",
        "object_type",
        "object_id",
        "details",
        "prev_hash",
        "hash",
        "details_hash",
        "erased_at",
    ]


def test_sqlite_connections_use_wal_foreign_keys_and_busy_timeout(empty_db: Database) -> None:
    empty_db.migrate()
    with empty_db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one().lower() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() == 30000


def test_foreign_keys_are_enforced(empty_db: Database) -> None:
    empty_db.migrate()
    with pytest.raises(IntegrityError), empty_db.engine.begin() as conn:
        conn.execute(text("INSERT INTO user_roles (user_id, role) VALUES (4242, 'admin')"))


def test_importing_db_pulls_in_neither_streamlit_nor_vllm_nor_the_console() -> None:
    code = (
        "import sys\n"
        "import importlib, pkgutil, db\n"
        "for m in pkgutil.walk_packages(db.__path__, 'db.'):\n"
        "    if not m.name.startswith('db.migrations'):  # Alembic runs env.py itself, in its own context\n"
        "        importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] in {'streamlit', 'vllm', 'console', 'torch', 'bench'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""


def test_db_code_reads_no_environment_variables() -> None:
    sources = [p for p in (ROOT / "db").rglob("*.py")]
    assert sources
    offenders = [p.name for p in sources if "os.environ" in p.read_text() or "getenv" in p.read_text()]
    assert offenders == []


def test_upgrading_from_0003_makes_the_live_model_the_production_alias(empty_db: Database) -> None:
    empty_db.migrate("0003_review_queue")
    with empty_db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO model_versions (id, name, source, engine_args, status, created_at) "
                "VALUES (3, 'demo-v2', '/models/demo-v2', '{}', 'registered', '2026-01-02 03:04:05.000000')"
            )
        )
        conn.execute(
            text("INSERT INTO app_state (key, value, updated_at) "
                 "VALUES ('live_model', '\"demo-v2\"', '2026-01-02 03:04:05.000000')")
        )
    empty_db.migrate()
    assert {"model_aliases", "model_alias_moves"} <= _tables(empty_db)
    from db.model_versions import PRODUCTION, alias_moves, version_for_alias

    with empty_db.session(readonly=True) as s:
        version = version_for_alias(s, PRODUCTION)
        assert version is not None and version.name == "demo-v2" and version.retired_at is None
        assert [(m.alias, m.to_version_id, m.actor) for m in alias_moves(s)] == [("production", 3, "migration")]


def _old_format_events(database: Database, n: int) -> list[str]:
    """Append ``n`` events as the chain before 0009 hashed them (seq and the details themselves in the hash)."""
    import hashlib
    import json
    from datetime import UTC, datetime, timedelta

    prev, hashes = "0" * 64, []
    start = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    with database.engine.begin() as conn:
        for seq in range(1, n + 1):
            ts = start + timedelta(seconds=seq)
            details = {"i": seq, "email": f"p{seq}@example.com"}
            payload = [seq, ts.isoformat(), "ada", 1, "test.old", "user", "1", details, prev]
            digest = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":"),
                                               ensure_ascii=False).encode()).hexdigest()
            conn.execute(text("INSERT INTO audit_events (seq, ts, actor, actor_id, action, object_type, object_id, "
                              "details, prev_hash, hash) VALUES (:seq, :ts, 'ada', 1, 'test.old', 'user', '1', "
                              ":details, :prev, :hash)"),
                         {"seq": seq, "ts": ts.strftime("%Y-%m-%d %H:%M:%S.%f"), "details": json.dumps(details),
                          "prev": prev, "hash": digest})
            prev = digest
            hashes.append(digest)
        conn.execute(text("UPDATE audit_head SET seq = :n, hash = :h"), {"n": n, "h": prev})
    return hashes


@pytest.mark.parametrize("tampered", [False, True], ids=["intact", "tampered-before-upgrade"])
def test_0009_rechains_an_old_log_and_records_what_the_old_chain_said(empty_db: Database, tampered: bool) -> None:
    from db.audit import iter_events, verify_chain

    empty_db.migrate("0008_lora_adapters")
    old = _old_format_events(empty_db, 5)
    if tampered:
        with empty_db.engine.begin() as conn:
            conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 3"))
    empty_db.migrate()
    assert verify_chain(empty_db).ok  # the new chain holds from here on...
    with empty_db.session(readonly=True) as s:
        events = list(iter_events(s))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6] and all(e.details_hash for e in events)
    upgrade = events[-1]
    # ...and the event that closes the upgrade says whether the old one was intact, and where it was not.
    assert upgrade.action == "audit.chain_upgraded" and upgrade.details["events"] == 5
    assert upgrade.details["old_chain_intact"] is (not tampered)
    assert upgrade.details["old_first_bad_seq"] == (3 if tampered else None)
    assert upgrade.details["old_head_hash"] == old[-1]
