"""The same store tests on PostgreSQL, where appends serialise on the audit_head row lock.

Opt-in: set LLM_CONSOLE_TEST_POSTGRES_URL to a server URL whose user may create databases, e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres`` (needs the ``psycopg`` driver). Each test gets
a fresh database that is dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from db import Database, DbConfig
from tests.test_db_audit import (  # noqa: F401 - collected here again, against PostgreSQL
    test_a_fresh_chain_is_gapless_linked_and_verifies,
    test_an_error_after_the_insert_rolls_back_the_exchange_and_its_audit_event,
    test_details_are_stored_exactly_as_they_were_hashed,
    test_iter_events_filters_by_action_actor_and_time,
    test_the_orm_refuses_to_update_an_audit_event,
    test_timestamps_come_back_timezone_aware_utc,
    test_verify_detects_tampering,
)
from tests.test_db_concurrency import (  # noqa: F401
    test_sixteen_threads_writing_exchanges_lose_nothing_and_the_chain_verifies,
    test_two_reviewers_racing_for_one_item_exactly_one_wins,
)
from tests.test_db_queries import (  # noqa: F401
    test_a_claim_is_exclusive_until_it_expires_or_is_released,
    test_decisions_close_the_item_and_a_second_review_supersedes_without_editing,
    test_failed_logins_lock_the_account_at_the_threshold_and_a_login_resets,
    test_the_queue_orders_by_severity_then_age_and_pages,
)

SERVER_URL = os.environ.get("LLM_CONSOLE_TEST_POSTGRES_URL")

pytestmark = pytest.mark.skipif(
    not SERVER_URL, reason="set LLM_CONSOLE_TEST_POSTGRES_URL to run on PostgreSQL"
)


@pytest.fixture
def db() -> Iterator[Database]:
    assert SERVER_URL is not None
    server = make_url(SERVER_URL)
    name = f"llm_console_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    database = Database(DbConfig(server.set(database=name).render_as_string(hide_password=False)))
    try:
        database.migrate()
        assert database.current_revision() == database.head_revision()
        yield database
    finally:
        database.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
