"""``llm-console db copy``: a SQLite console database into an empty PostgreSQL one, verified, or nothing at all.

The source is built through the console's own services and store functions (users, conversations, exchanges with raw
text, findings and review items, a decision, a model version and a promotion, an erasure, signed checkpoints,
latency buckets); every target is a new, empty database on the server at ``LLM_CONSOLE_TEST_POSTGRES_URL``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from console.services import audit as audit_svc
from console.services import retention
from console.services.access import Principal
from console.services.context import AppContext
from console.settings import Settings
from db import audit as audit_q
from db import chat as chat_q
from db import model_versions as versions_q
from db import promotions as promotions_q
from db import users as users_q
from db.config import DbConfig
from db.copy import CopyError, copy_database
from db.database import Database, scratch_postgres_database
from db.review.decisions import record_decision
from db.review.items import ReviewItemRecord
from db.safety import FindingRecord, RawTextRecord
from db.tables import AuditEvent, Base, ReviewItem, User
from tests.conftest import POSTGRES_URL, console_env


def needs_postgres(test: Any) -> Any:
    """A test on the server at ``LLM_CONSOLE_TEST_POSTGRES_URL`` (the full tier; skipped without it). The refusals
    that stop before any server is reached run in the fast tier too."""
    return pytest.mark.postgres(pytest.mark.skipif(not POSTGRES_URL, reason="set LLM_CONSOLE_TEST_POSTGRES_URL to "
                                                   "run on PostgreSQL")(test))


ROOT = Path(__file__).resolve().parents[2]
NOWHERE = "postgresql+psycopg://console@127.0.0.1:9/console"  # no server listens on port 9
NOW = datetime(2026, 11, 20, 9, 30, 15, 123456, tzinfo=UTC)
BASIS = "court order 2026/77 (art. 17 GDPR)"


@contextmanager
def empty_postgres() -> Iterator[str]:
    """The URL of a new database with nothing in it (not migrated), dropped afterwards."""
    assert POSTGRES_URL is not None
    with scratch_postgres_database(POSTGRES_URL, prefix="llm_console_copy") as url:
        yield url


# --- a realistic source, built once ---------------------------------------------------------------------------------


def _people(ctx: AppContext) -> dict[str, Principal]:
    people = {}
    with ctx.db.session() as s:
        for name, roles in (("ada", ["admin"]), ("abe", ["admin"]), ("olga", ["operator"]),
                            ("otto", ["operator", "analyst"]), ("rita", ["reviewer"])):
            user = users_q.create_user(s, name, "argon2-hash-not-used", roles, email=f"{name}@example.com",
                                       actor="system")
            people[name] = Principal(user.id, user.username, frozenset(user.roles))
    return people


def _build(ctx: AppContext) -> dict[str, Any]:
    people = _people(ctx)
    with ctx.db.session() as s:
        users_q.set_disabled(s, people["otto"].user_id, True, actor="ada")  # a boolean that is True
        v1 = versions_q.register_model_version(s, name="demo-v1", source="/models/v1", actor="ada",
                                               engine_args={"max_num_seqs": 8, "gpu_memory_utilization": 0.9})
        v2 = versions_q.register_model_version(s, name="demo-v2", source="/models/v2", actor="ada", description="ü\n")
        versions_q.move_alias(s, "production", v1, actor="ada", actor_id=people["ada"].user_id, reason="first")
        ids = {"v1": v1.id, "v2": v2.id}
    for who, text in (("olga", "Olga Kuznetsova, olga@example.com"), ("otto", "Grüße aus Köln — «ok» 🚀")):
        owner = people[who]
        with ctx.db.session() as s:
            conv = chat_q.create_conversation(s, user_id=owner.user_id, actor=owner.username, title=f"about {text}",
                                              system_prompt="be brief")
            for n in range(3):
                ex = chat_q.store_turn(s, chat_q.TurnRecord(
                    conversation_id=conv.id, user_id=owner.user_id, actor=owner.username, model_version="demo-v1",
                    model_version_id=ids["v1"], prompt=f"prompt {n} {text}", response=f"answer {n} {text}",
                    sampling={"temperature": 0.7, "top_p": 1.0, "stop": ["\n\n"]}, created_at=NOW - timedelta(hours=n),
                    synthetic=n == 2, timings=chat_q.ExchangeTimings(prompt_tokens=7, output_tokens=9, ttft_ms=12.5,
                                                                     e2e_ms=120.25),
                    findings=(FindingRecord("prompt", "presidio", "EMAIL_ADDRESS", 0.85, "flag", start=0, end=5),),
                    raw_texts=(RawTextRecord("prompt", f"raw prompt {text}"),
                               RawTextRecord("output", f"raw answer {text}")),
                    review=ReviewItemRecord(reason="flagged", severity=2, note=f"note on {text}") if n == 0 else None,
                ))
                ids[f"{who}_ex{n}"] = ex.id
    with ctx.db.session() as s:
        item = s.scalars(sa.select(ReviewItem).order_by(ReviewItem.id)).first()
        assert item is not None
        record_decision(s, item_id=item.id, reviewer_id=people["rita"].user_id, decision="violation", actor="rita",
                        category="pii", note="contains an email")
        promotions_q.create_request(s, alias="production", version_id=ids["v2"], from_version_id=ids["v1"],
                                    evaluation_id=None, report={"flag_rate": 0.01, "n": 40}, baseline_report=None,
                                    gates=[{"name": "flag_rate", "passed": True, "value": 0.01}],
                                    reason="better answers", actor="ada", actor_id=people["ada"].user_id)
    audit_svc.checkpoint(ctx, "test")  # creates the key; one checkpoint before the erasure
    asked = retention.request_erasure(ctx, people["ada"], people["olga"].user_id, "asked in writing by email",
                                      BASIS)
    done = retention.decide_erasure(ctx, people["abe"], asked.id, True)
    assert done.status == "done"
    audit_svc.checkpoint(ctx, "test")
    return ids


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, migrated_db_file: Path) -> Iterator[Path]:
    data = tmp_path_factory.mktemp("copy-source") / "data"
    data.mkdir(mode=0o700)
    shutil.copy(migrated_db_file, data / "console.db")
    settings = Settings.from_env(console_env(data))
    db = Database(DbConfig(url=settings.database_url))
    db.migrate()
    _build(AppContext(settings, db))
    with db.session(readonly=True) as s:
        assert any(e.erased_at is not None for e in s.scalars(sa.select(AuditEvent)))  # an erased event
    db.dispose()
    yield data


def _settings(data: Path) -> Settings:
    return Settings.from_env(console_env(data))


def _copy(data: Path, target: str, **kwargs: Any):  # noqa: ANN202
    settings = _settings(data)
    return copy_database(settings.database_url, target, key_file=settings.audit_key_file,
                         checkpoint_file=settings.audit_checkpoint_file, **kwargs)


def _rows(engine: sa.Engine, table: sa.Table) -> list[tuple[Any, ...]]:
    """Every row, typed (UTC datetimes, decoded JSON, booleans), with each JSON column's stored text beside it."""
    raw = [sa.cast(c, sa.Text).label(f"{c.name}__text") for c in table.columns if isinstance(c.type, sa.JSON)]
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(*table.columns, *raw).order_by(*table.primary_key.columns))]


def _counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                for t in Base.metadata.sorted_tables}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def copied(source: Path) -> Iterator[tuple[Any, Database]]:
    with empty_postgres() as url:
        report = _copy(source, url)
        target = Database(DbConfig(url=url))
        yield report, target
        target.dispose()


# --- the copy -------------------------------------------------------------------------------------------------------


@needs_postgres
def test_the_copy_has_every_row_and_a_chain_that_verifies_against_the_signed_checkpoints(source, copied):
    report, target = copied
    src = Database(DbConfig(url=_settings(source).database_url))
    expected = _counts(src.engine)
    assert report.tables == expected == _counts(target.engine)
    assert report.rows == sum(expected.values())
    for table in ("users", "exchanges", "raw_texts", "findings", "review_items", "review_decisions",
                  "promotion_requests", "erasure_requests", "audit_events", "audit_checkpoints", "latency_buckets",
                  "model_aliases", "model_alias_moves"):
        assert expected[table] > 0, table
    with src.session(readonly=True) as s:
        head = audit_q.head_seq(s)
    assert report.events_verified == head == report.audit_head_seq
    assert report.checkpoints_checked == 2 and report.anchored_seq > 0
    settings = _settings(source)
    anchor = audit_q.AuditAnchor.load(settings.audit_key_file, settings.audit_checkpoint_file, create=False)
    on_pg = audit_q.verify_chain(target, anchor)
    assert on_pg.ok and on_pg.checked == head and on_pg.checkpoints_checked == 2
    src.dispose()


@needs_postgres
def test_every_row_compares_equal_column_by_column_json_text_included(source, copied):
    _, target = copied
    src = Database(DbConfig(url=_settings(source).database_url))
    try:
        for table in Base.metadata.sorted_tables:
            copied_rows, source_rows = _rows(target.engine, table), _rows(src.engine, table)
            assert len(copied_rows) == len(source_rows), table.name
            for a, b in zip(copied_rows, source_rows, strict=True):
                assert a == b, (table.name, [(c.name, x, y) for c, x, y in zip(table.columns, a, b, strict=False)
                                            if x != y])
        with target.session(readonly=True) as s:
            user = s.scalars(sa.select(User).where(User.username == "otto")).one()
            assert user.disabled is True and user.created_at.tzinfo is not None
            erased = s.scalars(sa.select(AuditEvent).where(AuditEvent.erased_at.is_not(None))).all()
            assert erased and all(e.erased_at.tzinfo == UTC for e in erased)
    finally:
        src.dispose()


@needs_postgres
def test_the_copy_goes_on_from_where_the_source_stopped(source, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(source, data)  # the key and the checkpoint file stay with the console: it signs more below
    with empty_postgres() as url:
        _copy(data, url)
        target = Database(DbConfig(url=url))
        try:
            with target.session() as s:
                top = s.scalar(sa.select(sa.func.max(User.id)))
                head = audit_q.head_seq(s)
                user = users_q.create_user(s, "newcomer", "hash", ["operator"], actor="system")
                assert user.id == top + 1
                conv = chat_q.create_conversation(s, user_id=user.id, actor="newcomer", title="t")
                assert conv.id > 0
            settings = _settings(data)
            cp = audit_svc.anchor(AppContext(settings, target)).checkpoint(target, "after the move")
            assert cp.seq > head
            anchor = audit_q.AuditAnchor.load(settings.audit_key_file, settings.audit_checkpoint_file, create=False)
            report = audit_q.verify_chain(target, anchor)
            assert report.ok and report.checked == cp.seq and report.anchored_seq == cp.seq
        finally:
            target.dispose()


@needs_postgres
def test_a_database_the_console_migrated_and_never_used_is_an_empty_target(source):
    with empty_postgres() as url:
        fresh = Database(DbConfig(url=url))
        fresh.migrate()
        fresh.dispose()
        assert _copy(source, url).rows > 0


# --- refusals: nothing written --------------------------------------------------------------------------------------


@needs_postgres
def test_a_target_with_rows_is_refused_by_name_and_left_as_it_was(source):
    with empty_postgres() as url:
        used = Database(DbConfig(url=url))
        used.migrate()
        with used.session() as s:
            users_q.create_user(s, "someone", "hash", ["operator"], actor="system")
        before = _counts(used.engine)
        with pytest.raises(CopyError, match=r"is not empty: .*audit_events \(1 row\).*users \(1 row\)"):
            _copy(source, url)
        assert _counts(used.engine) == before
        used.dispose()


@needs_postgres
def test_a_target_with_tables_that_are_not_the_consoles_is_refused(source):
    with empty_postgres() as url:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE invoices (id integer)"))
        with pytest.raises(CopyError, match=r"not the console's \(invoices\)"):
            _copy(source, url)
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == ["invoices"]  # not migrated either
        engine.dispose()


@needs_postgres
def test_a_target_with_console_tables_the_migrations_did_not_make_is_refused(source):
    with empty_postgres() as url:
        engine = sa.create_engine(url)
        Base.metadata.create_all(engine)
        with pytest.raises(CopyError, match=r"has console tables that the console's migrations did not make"):
            _copy(source, url)
        engine.dispose()


@needs_postgres
def test_a_failure_mid_copy_leaves_the_target_without_rows_and_the_source_untouched(source):
    settings = _settings(source)
    before = _sha256(Path(make_url(settings.database_url).database or ""))

    def fail(table: str, rows: int) -> None:
        if table == "exchanges":
            raise RuntimeError("the disk is full")

    with empty_postgres() as url:
        with pytest.raises(RuntimeError, match="disk is full"):
            _copy(source, url, on_batch=fail, batch_rows=2)
        target = Database(DbConfig(url=url))
        counts = _counts(target.engine)
        assert counts.pop("audit_head") == 1 and not any(counts.values())  # only the migration's genesis head
        assert _copy(source, url).rows > 0  # still empty: a second attempt goes through
        target.dispose()
    assert _sha256(Path(make_url(settings.database_url).database or "")) == before


@needs_postgres
def test_a_row_postgresql_refuses_stops_the_copy_naming_its_table_without_the_value(source, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(source, data)
    long_name = "x" * 151 + "SECRET"  # SQLite keeps what VARCHAR(150) would refuse
    with sqlite3.connect(data / "console.db") as con:
        con.execute("INSERT INTO users (username, disabled, failed_login_count, created_at, updated_at, "
                    "session_epoch) VALUES (?, 0, 0, '2026-11-20 09:00:00.000000', '2026-11-20 09:00:00.000000', 0)",
                    (long_name,))
    con.close()
    with empty_postgres() as url:
        with pytest.raises(CopyError, match=r"PostgreSQL refused a row of users: value too long") as caught:
            _copy(data, url)
        assert "SECRET" not in str(caught.value)
        target = Database(DbConfig(url=url))
        counts = _counts(target.engine)
        assert counts.pop("audit_head") == 1 and not any(counts.values())
        target.dispose()


@needs_postgres
def test_a_copy_whose_chain_does_not_verify_is_rolled_back(source, tmp_path):
    other_key = tmp_path / "other.key"
    audit_q.AuditAnchor.load(other_key)  # a key that signed none of the checkpoints
    settings = _settings(source)
    with empty_postgres() as url:
        with pytest.raises(CopyError, match=r"does not verify \(forged checkpoint.*nothing was copied"):
            copy_database(settings.database_url, url, key_file=other_key,
                          checkpoint_file=settings.audit_checkpoint_file)
        target = Database(DbConfig(url=url))
        counts = _counts(target.engine)
        assert counts.pop("audit_head") == 1 and not any(counts.values())
        target.dispose()


@needs_postgres
def test_a_console_still_running_on_the_source_is_named_when_its_checkpoint_passes_the_copy(source, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(source, data)
    ctx = AppContext(_settings(data), Database(DbConfig(url=_settings(data).database_url)))

    def console_goes_on(table: str, rows: int) -> None:  # after the copy's snapshot was taken
        if table == "audit_events":
            with ctx.db.session() as s:
                audit_q.append_event(s, actor="olga", action="chat.prompt", details={"n": 1})
            audit_svc.checkpoint(ctx, "periodic")

    with empty_postgres() as url:
        with pytest.raises(CopyError, match=r"tail cut.*if a console still runs on the source, stop it and copy again"):
            _copy(data, url, on_batch=console_goes_on)
        assert _copy(data, url).checkpoints_checked == 3  # stopped: the second attempt has it all
    ctx.db.dispose()


BAD_INPUT = {
    "bad-url": ("{src}", "not a url", r"--to: not a database URL"),
    "sqlite-target": ("{src}", "sqlite:///{tmp}/other.db", r"the target must be a PostgreSQL database"),
    "same-database": ("{src}", "{src}", r"the source and the target are the same database"),
    "postgres-source": ("{pg}", "{pg}2", r"the source must be a SQLite console database"),
    "missing-source": ("sqlite:///{tmp}/nothing.db", "{pg}", r"no SQLite database at .*nothing\.db"),
    "not-a-database": ("sqlite:///{tmp}/notes.txt", "{pg}", r"is not a readable SQLite database: file is not a "
                                                            r"database"),
    "not-a-console-database": ("sqlite:///{tmp}/empty.db", "{pg}", r"is not a console database"),
    "older-source": ("sqlite:///{tmp}/old.db", "{pg}", r"is at migration 0019_server_backends, this release at "
                                                       r".*upgrade it first"),
    "unreachable-server": ("{src}", "postgresql+psycopg://bob:hunter2@127.0.0.1:9/console",
                           r"cannot connect to postgresql\+psycopg://bob:\*\*\*@127\.0\.0\.1:9/console: "),
}


@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_is_one_clear_error_and_changes_nothing(source, tmp_path, case):
    src_tmpl, dst_tmpl, message = BAD_INPUT[case]
    (tmp_path / "notes.txt").write_text("not sqlite at all " * 100)
    sqlite3.connect(tmp_path / "empty.db").close()
    if case == "older-source":
        old = Database(DbConfig(url=f"sqlite:///{tmp_path / 'old.db'}"))
        old.migrate("0019_server_backends")
        old.dispose()
    settings = _settings(source)
    before = _sha256(Path(make_url(settings.database_url).database or ""))
    src = src_tmpl.format(src=settings.database_url, tmp=tmp_path, pg=NOWHERE)
    dst = dst_tmpl.format(src=settings.database_url, tmp=tmp_path, pg=NOWHERE)
    with pytest.raises(CopyError, match=message) as caught:
        copy_database(src, dst, key_file=settings.audit_key_file, checkpoint_file=settings.audit_checkpoint_file)
    assert "hunter2" not in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "nothing.db").exists() and not (tmp_path / "other.db").exists()
    assert _sha256(Path(make_url(settings.database_url).database or "")) == before


# --- the command ----------------------------------------------------------------------------------------------------


def _llm_console(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "llm-console"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "console.cli"]
    env = {**os.environ, **console_env(data)}
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


@needs_postgres
def test_the_command_copies_says_so_and_refuses_a_second_copy_into_the_same_database(source):
    with empty_postgres() as url:
        done = _llm_console(source, "db", "copy", "--to", url)
        assert done.returncode == 0, done.stderr
        assert "copied" in done.stdout and "audit chain intact on the target" in done.stdout
        assert "2 signed checkpoint(s) match" in done.stdout and "LLM_CONSOLE_DATABASE_URL" in done.stdout
        again = _llm_console(source, "db", "copy", "--to", url, "--json")
        assert again.returncode == 1
        assert again.stderr.strip().startswith("llm-console: error:") and len(again.stderr.strip().splitlines()) == 1
        assert "is not empty" in again.stderr
        assert json.loads(again.stdout)["ok"] is False
    with empty_postgres() as url:
        result = _llm_console(source, "db", "copy", "--to", url, "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["ok"] is True and report["rows"] == sum(report["tables"].values()) > 0
        assert report["events_verified"] == report["audit_head_seq"] > 0
