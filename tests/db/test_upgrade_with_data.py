"""Upgrades with data: every table of a 0008 database holds rows, and every later migration must keep them.

0009 (exchanges), 0020 (promotion_requests), 0021 (audit_events) and 0022 (review_items) rebuild a table on
SQLite (copy, drop the old one, rename). With foreign keys on, dropping a table that other rows point at counts
each of those rows as a violation: 0009 then failed at its commit and 0022 at its DROP on any database holding a
finding or a review decision. ``Database.migrate`` now runs migrations with foreign keys off and checks them after
each one (``PRAGMA foreign_key_check``), as SQLite's own ALTER TABLE procedure does.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from db import Database, DbConfig
from db.audit import verify_chain
from db.database import ForeignKeyCheckError, alembic_config
from tests.db.test_db_migrations import _old_format_events

BASE = "0008_lora_adapters"
AT = "2026-01-02 03:04:05.000000"
OLD_EVENTS = 5
# The columns 0009 re-chains on purpose (its own test checks how); everything else of an event stays as it was.
RECHAINED = {"audit_events": {"seq", "prev_hash", "hash"}, "audit_head": {"seq", "hash"}}

# One realistic installation at 0008, with rows in every table: three users with roles, a base model and its LoRA
# adapter behind two aliases, an evaluation and two promotion requests, chats whose exchanges were flagged,
# blocked, failed and aborted, their findings and raw texts, review items in every state with decisions (one
# superseding another) and a second-review sample. The audit log is added in the format of its time.
SEED: dict[str, list[dict[str, Any]]] = {
    "users": [{"id": i, "username": name, "email": f"{name}@example.com", "disabled": False,
               "failed_login_count": 0, "created_at": AT, "updated_at": AT}
              for i, name in [(1, "ada"), (2, "bob"), (3, "cy")]],
    "user_roles": [{"user_id": 1, "role": "admin"}, {"user_id": 1, "role": "operator"},
                   {"user_id": 2, "role": "reviewer"}, {"user_id": 3, "role": "analyst"}],
    "app_state": [{"key": "live_model", "value": '"base"', "updated_at": AT}],
    "model_versions": [
        {"id": 1, "name": "base", "source": "/models/base", "engine_args": "{}", "status": "registered",
         "created_at": AT, "created_by_id": 1, "fingerprint": "f" * 64},
        {"id": 2, "name": "base-lora", "source": "/models/lora", "engine_args": '{"enable_lora": true}',
         "status": "registered", "created_at": AT, "created_by_id": 1, "base_version_id": 1},
    ],
    "model_aliases": [{"alias": "production", "version_id": 1, "updated_at": AT, "updated_by_id": 1},
                      {"alias": "staging", "version_id": 2, "updated_at": AT, "updated_by_id": 1}],
    "model_alias_moves": [
        {"id": 1, "alias": "production", "from_version_id": None, "to_version_id": 1, "actor": "ada",
         "actor_id": 1, "reason": "first deployment", "created_at": AT},
        {"id": 2, "alias": "staging", "from_version_id": 1, "to_version_id": 2, "actor": "ada", "actor_id": 1,
         "reason": "try the adapter", "created_at": AT},
    ],
    "evaluations": [{"id": 1, "version_id": 2, "suite": "smoke", "suite_sha256": "a" * 64, "n_prompts": 3,
                     "status": "done", "progress": 1.0, "report": '{"passed": 3}', "created_by_id": 1,
                     "created_at": AT, "finished_at": AT}],
    "promotion_requests": [
        {"id": 1, "alias": "production", "version_id": 2, "from_version_id": 1, "evaluation_id": 1, "gates": "{}",
         "reason": "better answers", "requested_by_id": 1, "status": "pending", "created_at": AT},
        {"id": 2, "alias": "production", "version_id": 2, "from_version_id": 1, "evaluation_id": 1, "gates": "{}",
         "reason": "again", "requested_by_id": 1, "status": "rejected", "decided_by_id": 2,
         "decision_note": "latency", "created_at": AT, "decided_at": AT},
    ],
    "policy_versions": [{"id": 1, "version": 1, "content": "rules: []", "sha256": "b" * 64, "created_at": AT,
                         "created_by_id": 1}],
    "conversations": [{"id": 1, "user_id": 1, "title": "first", "created_at": AT, "updated_at": AT},
                      {"id": 2, "user_id": 3, "title": "second", "system_prompt": "be brief", "created_at": AT,
                       "updated_at": AT}],
    "exchanges": [{"id": i, "conversation_id": 1 + i % 2, "user_id": 1 + 2 * (i % 2), "model_version": "base",
                   "model_version_id": 1, "prompt": f"prompt {i}", "response": f"answer {i}",
                   "sampling": '{"temperature":0.7}', "status": status, "ttft_ms": 10.0 * i, "created_at": AT,
                   "prompt_action": action, "policy_version": 1, "review_status": review}
                  for i, status, action, review in [(1, "ok", "flag", "reviewed"), (2, "blocked", "block", "pending"),
                                                    (3, "error", "allow", "pending"), (4, "aborted", "allow", "none")]],
    "findings": [{"id": i, "exchange_id": 1 + i % 4, "direction": "prompt" if i % 2 else "output",
                  "detector": "presidio", "label": "EMAIL_ADDRESS", "score": 0.5 + i / 100, "start": i, "end": i + 9,
                  "action": "flag"} for i in range(1, 7)],
    "raw_texts": [{"id": i, "exchange_id": i, "direction": "prompt", "text": f"raw text {i}"} for i in (1, 2)],
    "review_items": [{"id": i, "exchange_id": i, "reason": reason, "severity": 2, "status": status,
                      "claimed_by_id": 2 if status == "claimed" else None, "created_at": AT}
                     for i, reason, status in [(1, "flagged", "decided"), (2, "blocked", "claimed"),
                                               (3, "manual", "open")]],
    "review_decisions": [
        {"id": 1, "item_id": 1, "reviewer_id": 2, "decision": "violation", "category": "pii", "note": "an email",
         "second_review": False, "created_at": AT},
        {"id": 2, "item_id": 1, "reviewer_id": 1, "decision": "false_positive", "supersedes_id": 1,
         "second_review": True, "created_at": AT},
    ],
    "review_samples": [{"id": 1, "item_id": 1, "first_decision_id": 1, "first_reviewer_id": 2,
                        "second_decision_id": 2, "created_at": AT}],
}


@pytest.fixture
def populated(tmp_path: Path) -> Iterator[Database]:
    """A database at 0008 with rows in every table (its audit log in the old chain format)."""
    database = Database(DbConfig(f"sqlite:///{tmp_path / 'data' / 'console.db'}"))
    database.migrate(BASE)
    with database.engine.begin() as conn:
        for table, rows in SEED.items():
            for row in rows:
                columns = ", ".join(f'"{c}"' for c in row)
                conn.execute(text(f"INSERT INTO {table} ({columns}) "  # noqa: S608 (names from SEED)
                                  f"VALUES ({', '.join(':' + c for c in row)})"), row)
    _old_format_events(database, OLD_EVENTS)
    yield database
    database.dispose()


def _base_tables(database: Database) -> dict[str, list[str]]:
    inspector = inspect(database.engine)
    return {t: [c["name"] for c in inspector.get_columns(t)]
            for t in sorted(set(inspector.get_table_names()) - {"alembic_version"})}


def _counts(database: Database, tables: dict[str, list[str]]) -> dict[str, int]:
    with database.engine.connect() as conn:
        return {t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one() for t in tables}  # noqa: S608


def _values(database: Database, tables: dict[str, list[str]]) -> dict[str, list[tuple]]:
    """Every row of every 0008 table, in its 0008 columns (less those 0009 re-chains), in a stable order."""
    out = {}
    with database.engine.connect() as conn:
        for table, columns in tables.items():
            kept = ", ".join(f'"{c}"' for c in columns if c not in RECHAINED.get(table, set()))
            rows = conn.execute(text(f'SELECT {kept} FROM "{table}" ORDER BY {kept}')).all()  # noqa: S608
            out[table] = [tuple(r) for r in rows]
    return out


def _dangling(database: Database) -> list[tuple]:
    with database.engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql("PRAGMA foreign_key_check").all()]


def _revisions_after(database: Database, base: str) -> list[str]:
    script = ScriptDirectory.from_config(alembic_config(database.config.url))
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
    return revisions[revisions.index(base) + 1:]


def _schema(database: Database) -> list[tuple]:
    """Every table, index and trigger as SQLite stores it; a table's constraints as a set (a batch rebuild writes
    them in whatever order Alembic reflected them, which is not the order of the migration that made them)."""
    with database.engine.connect() as conn:
        rows = conn.execute(text("SELECT type, name, tbl_name, sql FROM sqlite_master "
                                 "WHERE name NOT LIKE 'sqlite_%' ORDER BY name")).all()
    out = []
    for kind, name, table, sql in rows:
        lines = [line.strip().rstrip(",").strip() for line in (sql or "").splitlines()]
        constraints = frozenset(line for line in lines if line.startswith("CONSTRAINT"))
        out.append((kind, name, table, [line for line in lines if not line.startswith("CONSTRAINT")], constraints))
    return out


def test_the_seed_fills_every_table_that_exists_at_0008(populated: Database) -> None:
    counts = _counts(populated, _base_tables(populated))
    assert {t for t, n in counts.items() if n == 0} == set()
    assert counts["audit_events"] == OLD_EVENTS and _dangling(populated) == []


def test_each_migration_after_0008_keeps_every_row_and_every_reference(populated: Database) -> None:
    tables = _base_tables(populated)
    expected = _counts(populated, tables)
    steps = _revisions_after(populated, BASE)
    assert {"0009_audit_anchor", "0020_replicas_canary", "0021_audit_sequencer", "0022_review_reasons"} <= set(steps)
    changed, dangling = {}, {}
    for revision in steps:  # one at a time, so a failure names the migration
        populated.migrate(revision)
        assert populated.current_revision() == revision
        if revision == "0009_audit_anchor":
            expected["audit_events"] += 1  # its own audit.chain_upgraded event
        counts = _counts(populated, tables)
        changed.update({f"{revision}:{t}": (expected[t], n) for t, n in counts.items() if n != expected[t]})
        if found := _dangling(populated):
            dangling[revision] = found
    assert changed == {} and dangling == {}


def test_upgrading_a_populated_0008_database_to_head_keeps_every_value_and_the_chain(
        populated: Database, tmp_path: Path) -> None:
    tables = _base_tables(populated)
    before_counts, before = _counts(populated, tables), _values(populated, tables)

    populated.migrate()  # in one go, as the console does at start

    assert populated.current_revision() == populated.head_revision()
    assert _counts(populated, tables) == {**before_counts, "audit_events": OLD_EVENTS + 1}
    after = _values(populated, tables)
    upgrade_event = [r for r in after["audit_events"] if "audit.chain_upgraded" in r]
    assert len(upgrade_event) == 1
    assert {**after, "audit_events": [r for r in after["audit_events"] if r not in upgrade_event]} == before
    assert _dangling(populated) == []
    # Tables, columns, constraints, indexes and triggers come out as on a database created at head.
    fresh = Database(DbConfig(f"sqlite:///{tmp_path / 'fresh' / 'console.db'}"))
    try:
        fresh.migrate()
        assert _schema(populated) == _schema(fresh)
    finally:
        fresh.dispose()
    report = verify_chain(populated)
    assert report.ok and report.checked == OLD_EVENTS + 1
    # The migration's connection went back to the pool with foreign keys on again, and they are enforced.
    with populated.engine.connect() as conn:
        assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
    with pytest.raises(IntegrityError), populated.engine.begin() as conn:
        conn.execute(text("INSERT INTO findings (exchange_id, direction, detector, label, score, action) "
                          "VALUES (999, 'prompt', 'presidio', 'EMAIL_ADDRESS', 0.9, 'flag')"))


def test_an_upgrade_that_would_leave_a_dangling_reference_stops_and_keeps_the_database_as_it_was(
        populated: Database) -> None:
    # A finding whose exchange is gone, written behind the console's back (sqlite3 has foreign keys off).
    path = populated.url.database
    assert path is not None
    raw = sqlite3.connect(path)
    try:
        with raw:
            raw.execute("INSERT INTO findings (id, exchange_id, direction, detector, label, score, action) "
                        "VALUES (99, 999, 'prompt', 'presidio', 'EMAIL_ADDRESS', 0.9, 'flag')")
        tables = _base_tables(populated)
        before_counts, before = _counts(populated, tables), _values(populated, tables)

        with pytest.raises(ForeignKeyCheckError, match=r"up to 0009_audit_anchor left 1 rows .*findings rowid 99"):
            populated.migrate()

        # The first migration rolled back entirely: same revision, same schema, same rows.
        assert populated.current_revision() == BASE
        assert "details_hash" not in {c["name"] for c in inspect(populated.engine).get_columns("audit_events")}
        assert _counts(populated, tables) == before_counts and _values(populated, tables) == before
        with populated.engine.connect() as conn:
            assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1

        with raw:  # once the operator removes the orphan, the same upgrade goes through
            raw.execute("DELETE FROM findings WHERE id = 99")
    finally:
        raw.close()
    populated.migrate()
    assert populated.current_revision() == populated.head_revision() and verify_chain(populated).ok
