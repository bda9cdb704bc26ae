"""Migration 0003_review_queue: from 0002 with a queued item, and back down."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import inspect, text

from db import Database, DbConfig
from db.database import alembic_config

REVISION = "0003_review_queue"


def test_upgrading_from_0002_keeps_queued_items_and_adds_samples_and_indexes(tmp_path: Path) -> None:
    db = Database(DbConfig(f"sqlite:///{tmp_path / 'console.db'}"))
    try:
        db.migrate("0002_safety_review")
        with db.engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO users (id, username, disabled, failed_login_count, created_at, updated_at) "
                "VALUES (1, 'ada', false, 0, '2026-01-02 03:04:05', '2026-01-02 03:04:05')"))
            conn.execute(text("INSERT INTO conversations (id, user_id, title, created_at, updated_at) "
                              "VALUES (1, 1, '', '2026-01-02 03:04:05', '2026-01-02 03:04:05')"))
            conn.execute(text(
                "INSERT INTO exchanges (id, conversation_id, user_id, model_version, prompt, response, sampling, "
                "status, created_at, review_status) VALUES (1, 1, 1, 'v1', 'hi', 'yo', '{}', 'ok', "
                "'2026-01-02 03:04:05', 'pending')"))
            conn.execute(text(
                "INSERT INTO review_items (id, exchange_id, reason, severity, status, created_at) "
                "VALUES (7, 1, 'flagged', 2, 'open', '2026-01-02 03:04:05')"))
        # To this revision, not head: later migrations have their own tests.
        db.migrate(REVISION)
        assert db.current_revision() == REVISION
        inspector = inspect(db.engine)
        assert "review_samples" in inspector.get_table_names()
        assert {"ix_findings_label", "ix_findings_detector"} <= {i["name"] for i in inspector.get_indexes("findings")}
        assert "ix_review_items_status_due_at" in {i["name"] for i in inspector.get_indexes("review_items")}
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT id, status FROM review_items")).all() == [(7, "open")]
        with db.engine.connect() as conn:
            command.downgrade(alembic_config(db.config.url, conn), "0002_safety_review")
            conn.commit()
        assert db.current_revision() == "0002_safety_review"
        assert "review_samples" not in inspect(db.engine).get_table_names()
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM review_items")).scalar_one() == 1
    finally:
        db.dispose()
