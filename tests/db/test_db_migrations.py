"""Migrations: from an empty database, from the older 0001 schema with data, and the pinned audit columns."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import IntegrityError

from db import Database, DbConfig
from db.tables import Base

ROOT = Path(__file__).resolve().parents[2]
HEAD = "0030_alert_resolved"
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
ERASURE_TABLES = {"erasure_requests"}  # 0016_erasure
FOUR_EYES_TABLES = {"protected_aliases", "emergency_moves"}  # 0015_four_eyes
EXPORT_FILE_TABLES = {"export_files"}  # 0017_export_files
REPLICA_TABLES = {"job_runs", "canary_checks"}  # 0020_replicas_canary


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
    assert _tables(empty_db) == CORE_TABLES | SAFETY_TABLES | LIFECYCLE_TABLES | RELEASE_TABLES | AUDIT_TABLES | METRICS_TABLES | SESSION_TABLES | ERASURE_TABLES | FOUR_EYES_TABLES | EXPORT_FILE_TABLES | REPLICA_TABLES | {"feedback"} | {"spot_checks"} | {"quota_limits", "quota_counters"} | {"policy_change_requests"} | {"webhooks", "alerts", "alert_deliveries", "alert_attempts"} | {"audit_verifications"}


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
    assert _tables(empty_db) == CORE_TABLES | SAFETY_TABLES | LIFECYCLE_TABLES | RELEASE_TABLES | AUDIT_TABLES | METRICS_TABLES | SESSION_TABLES | ERASURE_TABLES | FOUR_EYES_TABLES | EXPORT_FILE_TABLES | REPLICA_TABLES | {"feedback"} | {"spot_checks"} | {"quota_limits", "quota_counters"} | {"policy_change_requests"} | {"webhooks", "alerts", "alert_deliveries", "alert_attempts"} | {"audit_verifications"}


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
        "remains_hash",
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


# ---- 0013_flagged_by_policy: the buckets' "flagged" becomes the policy's action --------------------------------

# (id, synthetic, status, prompt action, output action, hour offset): every exchange has a finding (a toxicity
# score under its threshold), as the detectors store for every message.
_0013_EXCHANGES = [
    (1, False, "ok", "allow", "allow", 0),
    (2, False, "ok", "flag", "allow", 0),
    (3, False, "ok", "allow", "flag", 0),
    (4, False, "blocked", "block", None, 0),
    (5, False, "ok", "flag", "block", 0),
    (6, False, "ok", "redact", "allow", 0),
    (7, True, "ok", "allow", "flag", 0),
    (8, False, "pending", "flag", None, 0),  # not finished: in no bucket
    (9, False, "error", "allow", None, 2),
]


def _0013_tables():
    import sqlalchemy as sa

    from db.types import UTCDateTime

    buckets = sa.table("latency_buckets", *(sa.column(c) for c in (
        "resolution_s", "model_version", "synthetic", "status", "requests", "flagged", "blocked", "prompt_tokens",
        "output_tokens", "ttft_sum_ms", "itl_sum_ms", "e2e_sum_ms", "queue_sum_ms", "scan_before_sum_ms",
        "scan_after_sum_ms", "store_sum_ms", "hist")), sa.column("bucket_start", UTCDateTime()))
    exchanges = sa.table("exchanges", *(sa.column(c) for c in (
        "id", "conversation_id", "user_id", "model_version", "prompt", "response", "sampling", "status",
        "prompt_action", "output_action", "synthetic")), sa.column("created_at", UTCDateTime()))
    return buckets, exchanges


def _seed_0012_buckets_as_the_old_code_counted(database: Database) -> None:
    """Exchanges with findings, and their buckets as the code before 0013 wrote them: flagged = any finding."""
    from datetime import UTC, datetime, timedelta

    import sqlalchemy as sa

    buckets, exchanges = _0013_tables()
    start = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    old: dict[tuple, dict] = {}
    with database.engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, username, disabled, failed_login_count, created_at, updated_at) "
                          "VALUES (1, 'ada', false, 0, '2026-01-02 03:04:05.000000', '2026-01-02 03:04:05.000000')"))
        conn.execute(text("INSERT INTO conversations (id, user_id, title, created_at, updated_at) "
                          "VALUES (7, 1, 'c', '2026-01-02 03:04:05.000000', '2026-01-02 03:04:05.000000')"))
        for xid, synthetic, status, prompt_action, output_action, hours in _0013_EXCHANGES:
            created = start + timedelta(hours=hours, seconds=xid)
            conn.execute(sa.insert(exchanges).values(
                id=xid, conversation_id=7, user_id=1, model_version="v1", prompt="p", response="r", sampling="{}",
                status=status, prompt_action=prompt_action, output_action=output_action, synthetic=synthetic,
                created_at=created))
            conn.execute(text("INSERT INTO findings (exchange_id, direction, detector, label, score, action) "
                              "VALUES (:x, 'prompt', 'detoxify', 'insult', 0.01, 'allow')"), {"x": xid})
            if status == "pending":
                continue
            for res in (60, 3600):
                bucket = datetime.fromtimestamp(created.timestamp() // res * res, UTC)
                row = old.setdefault((res, bucket, synthetic, status), {
                    "resolution_s": res, "bucket_start": bucket, "model_version": "v1", "synthetic": synthetic,
                    "status": status, "requests": 0, "flagged": 0, "blocked": 0, "prompt_tokens": 0,
                    "output_tokens": 0, "ttft_sum_ms": 0.0, "itl_sum_ms": 0.0, "e2e_sum_ms": 0.0,
                    "queue_sum_ms": 0.0, "scan_before_sum_ms": 0.0, "scan_after_sum_ms": 0.0,
                    "store_sum_ms": 0.0, "hist": b""})
                row["requests"] += 1
                row["flagged"] += 1  # it has a finding
                row["blocked"] += int(status == "blocked" or "block" in (prompt_action, output_action))
                row["store_sum_ms"] += 2.5  # the console's overhead: exchanges do not keep it, the rebuild must
        # A bucket whose exchanges are gone counts no flags any more.
        old[("orphan",)] = {**next(iter(old.values())), "model_version": "gone", "store_sum_ms": 9.0}
        conn.execute(sa.insert(buckets), list(old.values()))


def _0013_counters(database: Database, columns: str) -> dict[tuple, tuple]:
    with database.engine.connect() as conn:
        rows = conn.execute(text(f"SELECT resolution_s, model_version, synthetic, status, {columns} "  # noqa: S608
                                 "FROM latency_buckets")).all()
    return {(r[0], r[1], bool(r[2]), r[3]): tuple(r[4:]) for r in rows}


def test_0013_recounts_old_buckets_flagged_by_the_policy_and_by_direction(empty_db: Database) -> None:
    empty_db.migrate("0012_browser_sessions")
    _seed_0012_buckets_as_the_old_code_counted(empty_db)
    _check_0013(empty_db)


def test_0013_recounts_old_buckets_on_postgresql(pg_db: Database) -> None:
    from alembic import command

    from db.database import alembic_config

    with pg_db.engine.connect() as conn:  # down through 0013's own downgrade, then up again with old buckets
        command.downgrade(alembic_config(pg_db.config.url, conn), "0012_browser_sessions")
        conn.commit()
    _seed_0012_buckets_as_the_old_code_counted(pg_db)
    _check_0013(pg_db)


def _check_0013(database: Database) -> None:
    from datetime import UTC, datetime

    from db import latency as latency_q
    from db import latency_report

    # Before: every finished exchange counts as flagged (each has a finding), the page showed 100 %.
    assert _0013_counters(database, "requests, flagged")[(60, "v1", False, "ok")] == (5, 5)
    database.migrate("0013_flagged_by_policy")

    after = _0013_counters(database, "requests, flagged, prompt_flagged, output_flagged, blocked, store_sum_ms")
    for res in (60, 3600):
        # ok, real: 2 (prompt flag), 3 (answer flag), 5 (prompt flag, answer block); 1 allowed, 6 only redacted.
        assert after[(res, "v1", False, "ok")] == (5, 3, 2, 2, 1, 12.5)
        assert after[(res, "v1", False, "blocked")] == (1, 1, 1, 0, 1, 2.5)
        assert after[(res, "v1", True, "ok")] == (1, 1, 0, 1, 0, 2.5)
        assert after[(res, "v1", False, "error")] == (1, 0, 0, 0, 0, 2.5)
    assert after[(60, "gone", False, "ok")] == (5, 0, 0, 0, 1, 9.0)  # nothing left to count: no flags

    # The page reads 4 flagged of 7 real requests (prompt 3, answer 2), not 100 %.
    with database.session(readonly=True) as s:
        report = latency_q.bucket_report(s, latency_report.MetricsQuery(
            since=datetime(2026, 1, 2, tzinfo=UTC), until=datetime(2026, 1, 3, tzinfo=UTC), versions=("v1",)))
    (total,) = [t for t in report.totals if t["model_version"] is None]
    assert (total["requests"], total["flagged"], total["prompt_flagged"], total["output_flagged"]) == (7, 4, 3, 2)

    # The same counts as rebuilding from the exchanges with today's code (db.flags), but the overhead is kept.
    migrated = {k: v[:4] for k, v in after.items() if k[1] != "gone"}
    with database.session() as s:
        latency_q.rebuild_buckets(s)
    assert _0013_counters(database, "requests, flagged, prompt_flagged, output_flagged") == migrated


def test_0013_downgrade_restores_the_old_count(empty_db: Database) -> None:
    from alembic import command

    from db.database import alembic_config

    empty_db.migrate("0012_browser_sessions")
    _seed_0012_buckets_as_the_old_code_counted(empty_db)
    before = _0013_counters(empty_db, "requests, flagged, blocked")
    empty_db.migrate("0013_flagged_by_policy")
    assert _0013_counters(empty_db, "requests, flagged, blocked") != before
    with empty_db.engine.connect() as conn:
        command.downgrade(alembic_config(empty_db.config.url, conn), "0012_browser_sessions")
        conn.commit()
    columns = {c["name"] for c in inspect(empty_db.engine).get_columns("latency_buckets")}
    assert "prompt_flagged" not in columns and "output_flagged" not in columns
    # Any finding, again (the orphan bucket has no exchanges to count any more).
    assert {k: v for k, v in _0013_counters(empty_db, "requests, flagged, blocked").items() if k[1] != "gone"} == {
        k: v for k, v in before.items() if k[1] != "gone"}


# --- 0014: one review item waiting for a reviewer per exchange ------------------------------------------------

BEFORE_0014 = "0013_flagged_by_policy"
AT = {"at": "2026-01-02 03:04:05.000000"}


def _seed_duplicate_items(database: Database) -> None:
    """What an older console could leave: exchange 9 sent to review three times (two waiting, one decided),
    exchange 10 with one waiting item."""
    with database.engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, username, disabled, failed_login_count, created_at, updated_at) "
                          "VALUES (1, 'ada', false, 0, :at, :at)"), AT)
        conn.execute(text("INSERT INTO conversations (id, user_id, title, created_at, updated_at) "
                          "VALUES (7, 1, 'old chat', :at, :at)"), AT)
        for exchange_id in (9, 10):
            conn.execute(text(
                "INSERT INTO exchanges (id, conversation_id, user_id, model_version, prompt, response, sampling, "
                "status, review_status, created_at) VALUES (:id, 7, 1, 'demo-v1', 'hi', 'hello', '{}', 'ok', "
                "'pending', :at)"), {"id": exchange_id, **AT})
        for item_id, exchange_id, status, note in [(1, 9, "decided", "old one"), (2, 9, "open", "first"),
                                                   (3, 9, "claimed", None), (4, 9, "open", "second"),
                                                   (5, 10, "open", "alone")]:
            conn.execute(text("INSERT INTO review_items (id, exchange_id, reason, severity, status, note, created_at) "
                              "VALUES (:id, :ex, 'manual', 1, :status, :note, :at)"),
                         {"id": item_id, "ex": exchange_id, "status": status, "note": note, **AT})


def _add_item(conn: Connection, item_id: int, status: str) -> None:
    # Ids given: PostgreSQL's sequence does not know the seeded ones.
    conn.execute(text("INSERT INTO review_items (id, exchange_id, reason, severity, status, created_at) "
                      "VALUES (:id, 9, 'manual', 1, :status, :at)"), {"id": item_id, "status": status, **AT})


def _check_0014(database: Database) -> None:
    with database.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, exchange_id, status, note FROM review_items ORDER BY id")).all()
    # The oldest waiting item of exchange 9 keeps every waiting item's note; the decided one is untouched.
    assert [tuple(r) for r in rows] == [(1, 9, "decided", "old one"), (2, 9, "open", "first\n\nsecond"),
                                        (5, 10, "open", "alone")]
    with pytest.raises(IntegrityError), database.engine.begin() as conn:
        _add_item(conn, 20, "claimed")
    with database.engine.begin() as conn:  # a decided or escalated item beside the waiting one is allowed
        _add_item(conn, 21, "escalated")


def test_0014_merges_the_duplicate_waiting_items_an_older_console_left(empty_db: Database) -> None:
    empty_db.migrate(BEFORE_0014)
    _seed_duplicate_items(empty_db)
    empty_db.migrate()
    assert empty_db.current_revision() == HEAD
    _check_0014(empty_db)


def test_0014_merges_the_duplicate_waiting_items_on_postgresql(pg_db: Database) -> None:
    from alembic import command

    from db.database import alembic_config

    with pg_db.engine.connect() as conn:
        command.downgrade(alembic_config(pg_db.config.url, conn), BEFORE_0014)
        conn.commit()
    _seed_duplicate_items(pg_db)
    pg_db.migrate()
    _check_0014(pg_db)
    indexes = {ix["name"]: ix for ix in inspect(pg_db.engine).get_indexes("review_items")}
    assert indexes["uq_review_items_open_exchange"]["unique"]


# --- 0016: erasure keeps what remains under the chain; erasure requests ---------------------------------------

BEFORE_0016 = "0015_four_eyes"


def _seed_old_chain_with_an_erased_event(database: Database) -> None:
    """Three events in the format before 0016 (no remains_hash); the second erased the old way and recorded."""
    import json
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from db import audit as audit_q

    events = sa.table("audit_events", *(sa.column(c) for c in (
        "seq", "ts", "actor", "actor_id", "action", "object_type", "object_id", "details", "details_hash",
        "prev_hash", "hash", "erased_at")))
    rows = [("promotion.request", {"reason": "faster", "version": "v2"}),
            ("promotion.approve", {"note": "ring Ann", "failed_gates": ["latency_p95"], "version": "v2"}),
            (audit_q.ERASURE_ACTION, {"audit_seqs": [2]})]
    prev = audit_q.GENESIS_HASH
    with database.engine.begin() as conn:
        for seq, (action, details) in enumerate(rows, start=1):
            ts = datetime(2026, 1, 2, 3, 4, seq, tzinfo=UTC)
            dh = audit_q.details_digest(details)
            digest = audit_q.compute_hash(ts=ts, actor="ada", actor_id=1, action=action, object_type="promotion",
                                          object_id="7", details_hash=dh, prev_hash=prev)
            stored = {**details, "note": "[erased]"} if seq == 2 else details
            conn.execute(sa.insert(events).values(
                seq=seq, ts=ts.strftime("%Y-%m-%d %H:%M:%S.%f"), actor="ada", actor_id=1, action=action,
                object_type="promotion", object_id="7", details=json.dumps(stored), details_hash=dh,
                prev_hash=prev, hash=digest, erased_at="2026-01-03 00:00:00.000000" if seq == 2 else None))
            prev = digest
        conn.execute(text("UPDATE audit_head SET seq = 3, hash = :h WHERE id = 1"), {"h": prev})


def test_0016_seals_what_remains_of_events_erased_before_it(empty_db: Database) -> None:
    from db import audit as audit_q

    empty_db.migrate(BEFORE_0016)
    _seed_old_chain_with_an_erased_event(empty_db)
    empty_db.migrate()
    with empty_db.session(readonly=True) as s:
        [sealed] = list(audit_q.iter_events(s, action=audit_q.ERASURE_SEALED_ACTION))
    assert sealed.seq == 4 and set(sealed.details["remains"]) == {"2"}
    assert audit_q.verify_chain(empty_db).ok
    with empty_db.engine.begin() as conn:  # a writer changes a structural field of the erased event
        conn.execute(text("DROP TRIGGER audit_events_append_only_update"))
        conn.execute(text("UPDATE audit_events SET details = :d WHERE seq = 2"),
                     {"d": '{"note": "[erased]", "failed_gates": [], "version": "v2"}'})
    report = audit_q.verify_chain(empty_db)
    assert not report.ok and report.first_bad_seq == 2 and report.kind == audit_q.EDITED


def test_0016_triggers_keep_an_erased_event_as_it_was_erased(empty_db: Database) -> None:
    from sqlalchemy.exc import DatabaseError

    empty_db.migrate(BEFORE_0016)
    _seed_old_chain_with_an_erased_event(empty_db)
    empty_db.migrate()
    for statement in ("UPDATE audit_events SET details = '{}', erased_at = '2026-02-01 00:00:00' WHERE seq = 2",
                      "UPDATE audit_events SET remains_hash = 'x', erased_at = '2026-02-01 00:00:00' WHERE seq = 1"):
        with pytest.raises(DatabaseError, match="append-only"), empty_db.engine.begin() as conn:
            conn.execute(text(statement))


def test_0016_downgrades_and_upgrades_again(empty_db: Database) -> None:
    empty_db.migrate()
    from alembic import command

    from db.database import alembic_config

    with empty_db.engine.connect() as conn:
        command.downgrade(alembic_config(empty_db.config.url, conn), BEFORE_0016)
        conn.commit()
    assert "erasure_requests" not in _tables(empty_db)
    assert "remains_hash" not in [c["name"] for c in inspect(empty_db.engine).get_columns("audit_events")]
    empty_db.migrate()
    assert empty_db.current_revision() == HEAD and "erasure_requests" in _tables(empty_db)


# --- 0015_four_eyes ---------------------------------------------------------------------------------------------

BEFORE_0015 = "0014_one_open_review_item"


def test_0015_adds_protected_aliases_and_emergency_moves_to_an_older_database(empty_db: Database) -> None:
    from db import model_versions as versions_q

    empty_db.migrate(BEFORE_0015)
    with empty_db.engine.begin() as conn:  # an installation with a production version before the upgrade
        conn.execute(text("INSERT INTO model_versions (name, source, engine_args, status, created_at, "
                          "fingerprint_files) VALUES ('v1', '/m/v1', '{}', 'registered', '2026-01-01 00:00:00', "
                          "'[]')"))
        conn.execute(text("INSERT INTO model_aliases (alias, version_id, updated_at) VALUES ('production', 1, "
                          "'2026-01-01 00:00:00')"))
    assert not FOUR_EYES_TABLES & _tables(empty_db)
    empty_db.migrate()
    assert FOUR_EYES_TABLES <= _tables(empty_db)
    with empty_db.session() as s:
        assert versions_q.is_protected(s, "production") and not versions_q.is_protected(s, "staging")
        versions_q.protect_alias(s, "staging", actor="cli", actor_id=None, reason="QA")
        v1 = versions_q.get_model_version_by_name(s, "v1")
        versions_q.record_emergency(s, kind="rollback", alias="production", from_version=v1, to_version=v1,
                                    actor="cli", actor_id=None, reason="test", break_glass=False)
    with empty_db.session(readonly=True) as s:
        assert versions_q.is_protected(s, "staging")
        [move] = versions_q.unacknowledged_emergencies(s)
        assert move.break_glass is False and move.acknowledged_at is None


def test_0015_downgrades_and_upgrades_again(empty_db: Database) -> None:
    from alembic import command

    from db.database import alembic_config

    empty_db.migrate("0015_four_eyes")
    with empty_db.engine.connect() as conn:
        command.downgrade(alembic_config(empty_db.config.url, conn), BEFORE_0015)
        conn.commit()
    assert not FOUR_EYES_TABLES & _tables(empty_db)
    empty_db.migrate()
    assert empty_db.current_revision() == HEAD and FOUR_EYES_TABLES <= _tables(empty_db)


# --- 0017_export_files ------------------------------------------------------------------------------------------

BEFORE_0017 = "0016_erasure"


def _export_file_row(database: Database) -> None:
    with database.engine.begin() as conn:
        conn.execute(text("INSERT INTO export_files (path, what, format, raw_text, rows, size, created_by, "
                          "created_at, expires_at) VALUES ('/x/e.csv', 'events', 'csv', false, 3, 10, 'cli', "
                          "'2026-12-06 12:00:00', '2026-12-07 12:00:00')"))


def test_0017_adds_export_files_to_an_older_database_and_downgrades(empty_db: Database) -> None:
    from alembic import command

    from db.database import alembic_config

    empty_db.migrate(BEFORE_0017)
    assert "export_files" not in _tables(empty_db)
    empty_db.migrate()
    assert empty_db.current_revision() == HEAD and "export_files" in _tables(empty_db)
    columns = [c["name"] for c in inspect(empty_db.engine).get_columns("export_files")]
    assert {"expires_at", "downloaded_at", "deleted_at", "deleted_reason", "raw_text", "rows"} <= set(columns)
    _export_file_row(empty_db)
    with empty_db.engine.connect() as conn:
        command.downgrade(alembic_config(empty_db.config.url, conn), BEFORE_0017)
        conn.commit()
    assert "export_files" not in _tables(empty_db)
    empty_db.migrate()
    assert "export_files" in _tables(empty_db)


def test_0017_export_files_on_postgresql(pg_db: Database) -> None:
    from alembic import command

    from db.database import alembic_config

    pg_db.migrate()
    _export_file_row(pg_db)
    with pg_db.engine.connect() as conn:
        command.downgrade(alembic_config(pg_db.config.url, conn), BEFORE_0017)
        conn.commit()
    assert "export_files" not in _tables(pg_db)
    pg_db.migrate()
    assert "export_files" in _tables(pg_db)


# --- 0018_exchange_owner ----------------------------------------------------------------------------------------

BEFORE_0018 = "0017_export_files"


def _owner_round_trip(database: Database) -> None:
    from alembic import command

    from db.database import alembic_config

    database.migrate(BEFORE_0018)
    with database.engine.begin() as conn:
        at = {"at": "2026-12-06 12:00:00"}
        conn.execute(text("INSERT INTO users (id, username, disabled, failed_login_count, created_at, updated_at) "
                          "VALUES (1, 'olivia', false, 0, :at, :at)"), at)
        conn.execute(text("INSERT INTO conversations (id, user_id, title, created_at, updated_at) "
                          "VALUES (1, 1, 't', :at, :at)"), at)
        conn.execute(text("INSERT INTO exchanges (id, conversation_id, user_id, model_version, prompt, response, "
                          "sampling, status, created_at) VALUES (1, 1, 1, 'v1', 'p', '', '{}', 'pending', :at)"),
                     at)
    database.migrate()
    assert database.current_revision() == HEAD
    assert "owner" in {c["name"] for c in inspect(database.engine).get_columns("exchanges")}
    with database.engine.begin() as conn:
        # An exchange from before 0018 has no owner (swept as before); a new one records its process.
        assert conn.execute(text("SELECT owner, status FROM exchanges WHERE id = 1")).one() == (None, "pending")
        conn.execute(text("UPDATE exchanges SET owner = 'host:1' WHERE id = 1"))
    with database.engine.connect() as conn:
        command.downgrade(alembic_config(database.config.url, conn), BEFORE_0018)
        conn.commit()
    assert "owner" not in {c["name"] for c in inspect(database.engine).get_columns("exchanges")}
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM exchanges WHERE id = 1")).scalar_one() == "pending"
    database.migrate()
    assert database.current_revision() == HEAD


def test_0018_adds_the_exchange_owner_to_an_older_database_and_downgrades(empty_db: Database) -> None:
    _owner_round_trip(empty_db)


def test_0018_exchange_owner_on_postgresql(pg_db: Database) -> None:
    _owner_round_trip(pg_db)


# --- 0019_server_backends ---------------------------------------------------------------------------------------

BEFORE_0019 = "0018_exchange_owner"


def _server_backends_round_trip(database: Database) -> None:
    from alembic import command

    from db.database import alembic_config

    database.migrate(BEFORE_0019)
    with database.engine.begin() as conn:
        at = {"at": "2026-12-06 12:00:00"}
        conn.execute(text("INSERT INTO model_versions (id, name, source, engine_args, status, created_at) "
                          "VALUES (1, 'v1', '/models/v1', '{}', 'registered', :at)"), at)
    database.migrate()
    assert database.current_revision() == HEAD
    columns = {c["name"] for c in inspect(database.engine).get_columns("model_versions")}
    assert {"backend", "server_urls", "server_model", "server_info"} <= columns
    assert "engine_server" in {c["name"] for c in inspect(database.engine).get_columns("exchanges")}
    assert {"server", "queue_ms"} <= {c["name"] for c in inspect(database.engine).get_columns("engine_health")}
    with database.engine.begin() as conn:
        # A version from before 0019 runs in-process, as it always did.
        assert conn.execute(text("SELECT backend, server_urls FROM model_versions WHERE id = 1")).one() == (
            "in-process", None)
    with database.engine.connect() as conn:
        command.downgrade(alembic_config(database.config.url, conn), BEFORE_0019)
        conn.commit()
    assert "backend" not in {c["name"] for c in inspect(database.engine).get_columns("model_versions")}
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM model_versions WHERE id = 1")).scalar_one() == "v1"
    database.migrate()
    assert database.current_revision() == HEAD


def test_0019_adds_server_backends_to_an_older_database_and_downgrades(empty_db: Database) -> None:
    _server_backends_round_trip(empty_db)


def test_0019_server_backends_on_postgresql(pg_db: Database) -> None:
    _server_backends_round_trip(pg_db)


# --- 0030_alert_resolved ----------------------------------------------------------------------------------------

BEFORE_0030 = "0029_webhook_secrets"


def _alert_resolved_round_trip(database: Database) -> None:
    from alembic import command

    from db.database import alembic_config

    database.migrate(BEFORE_0030)
    at = {"at": "2026-12-07 09:00:00"}
    with database.engine.begin() as conn:
        conn.execute(text("INSERT INTO alerts (id, kind, key, title, details, state, raised_at) "
                          "VALUES (1, 'slo_breach', 'ttft_ms/p95', 'SLO missed', '{}', 'firing', :at)"), at)
        conn.execute(text("INSERT INTO alert_deliveries (id, alert_id, webhook_name, status, attempts, created_at) "
                          "VALUES (1, 1, 'ops', 'delivered', 1, :at)"), at)
    database.migrate()
    assert database.current_revision() == HEAD
    with database.engine.begin() as conn:
        # A delivery from before 0030 carried the firing notice (the only one there was).
        assert conn.execute(text("SELECT event FROM alert_deliveries WHERE id = 1")).scalar_one() == "firing"
        conn.execute(text("INSERT INTO alert_deliveries (id, alert_id, webhook_name, status, attempts, created_at, "
                          "event) VALUES (2, 1, 'ops', 'pending', 1, :at, 'resolved')"), at)
        conn.execute(text("INSERT INTO alert_attempts (delivery_id, attempt, at, status_code, duration_ms, ok) "
                          "VALUES (2, 1, :at, 500, 3.5, false)"), at)
    with pytest.raises(IntegrityError), database.engine.begin() as conn:
        conn.execute(text("INSERT INTO alert_deliveries (id, alert_id, webhook_name, status, attempts, created_at, "
                          "event) VALUES (3, 1, 'ops', 'pending', 0, :at, 'cleared')"), at)
    with database.engine.connect() as conn:
        command.downgrade(alembic_config(database.config.url, conn), BEFORE_0030)
        conn.commit()
    assert "event" not in {c["name"] for c in inspect(database.engine).get_columns("alert_deliveries")}
    with database.engine.connect() as conn:
        # The resolved notice (and its attempt) is gone: the old code would take it for a firing one.
        assert conn.execute(text("SELECT id, status FROM alert_deliveries")).all() == [(1, "delivered")]
        assert conn.execute(text("SELECT count(*) FROM alert_attempts")).scalar_one() == 0
    database.migrate()
    assert database.current_revision() == HEAD


def test_0030_adds_the_delivery_event_to_an_older_database_and_downgrades(empty_db: Database) -> None:
    _alert_resolved_round_trip(empty_db)


def test_0030_alert_resolved_on_postgresql(pg_db: Database) -> None:
    _alert_resolved_round_trip(pg_db)
