"""Privacy: notes stored redacted, bound values kept out of errors, passwords out of printed URLs, owner-only files,
NUL bytes out of the store, and links in model text that nobody can click."""

from __future__ import annotations

import os
import stat
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from console import cli
from console.services import chat as chat_svc
from console.services import moderation, review
from console.settings import Settings
from console.textsafe import defang_links, escape_markdown, escape_stream
from db import audit as audit_q
from db import chat as chat_q
from db.config import DbConfig
from db.database import Database, make_private_dir
from db.tables import Exchange
from tests.conftest import console_env
from tests.review_fixtures import flag

PII_NOTE = "Customer jane.doe@example.com, phone +1 212-555-0123, card 4111 1111 1111 1111"
PII_NOTE_REDACTED = "Customer <EMAIL_ADDRESS>, phone <PHONE_NUMBER>, card <CREDIT_CARD>"


@pytest.fixture(scope="module")
def presidio_stack():
    from engine.safety.pii import PresidioScanner
    from engine.safety.policy import DEFAULT_POLICY_PATH, Policy
    from engine.safety.runner import ScannerRunner

    return moderation.SafetyStack(ScannerRunner([PresidioScanner()]), Policy.load(DEFAULT_POLICY_PATH), 1)


@pytest.fixture(params=["presidio", "patterns-only", "scanners-failed"])
def scanners(request, ctx, presidio_stack):
    """The three ways notes are redacted: the loaded scanners, none (safety off), or scanners that failed to load."""
    from console.services.errors import ConsoleError

    if request.param == "presidio":
        ctx.safety_factory = lambda: presidio_stack
    elif request.param == "scanners-failed":
        def failed():
            raise ConsoleError("The safety scanners failed to load (test); chat is paused until they do.")

        ctx.safety_factory = failed
    return request.param


@pytest.fixture
def people(make_user):
    return {"op": make_user("olga", "operator"), "alice": make_user("alice", "reviewer"),
            "bob": make_user("bob", "reviewer"), "admin": make_user("ada", "admin")}


# --- notes and reasons are stored with personal data cut ---------------------------------------------------------


def test_an_operators_note_is_redacted_and_reaches_the_reviewers_item_view(ctx, people, scanners):
    flagged = flag(ctx, people["op"])
    exchange_id = review.item_view(ctx, people["alice"], flagged).exchange_id
    manual = chat_svc.send_to_review(ctx, people["op"], exchange_id, PII_NOTE)
    assert review.item_view(ctx, people["alice"], manual).operator_note == PII_NOTE_REDACTED


def test_a_name_in_a_note_is_cut_when_the_scanners_are_loaded(ctx, people, presidio_stack):
    ctx.safety_factory = lambda: presidio_stack
    item = flag(ctx, people["op"])
    review.decide(ctx, people["alice"], item, "escalate", note="John Smith wrote this, ask him")
    [escalation] = review.escalation_view(ctx, people["admin"], item).decisions
    assert "John Smith" not in escalation.note and "<PERSON>" in escalation.note


def test_decision_escalation_and_correction_notes_are_stored_redacted(ctx, people, scanners):
    escalated, bulk1, bulk2, decided = (flag(ctx, people["op"]) for _ in range(4))
    review.decide(ctx, people["alice"], escalated, "escalate", note=PII_NOTE)
    review.decide_bulk(ctx, people["alice"], [bulk1, bulk2], "false_positive", note=PII_NOTE)
    review.decide(ctx, people["alice"], decided, "false_positive", note="ok")
    review.correct(ctx, people["bob"], decided, "violation", category="pii_leak", note=PII_NOTE)
    review.decide_escalation(ctx, people["admin"], escalated, "violation", category="pii_leak", note=PII_NOTE)
    notes = [note for item in (escalated, bulk1, bulk2, decided) for note in _notes(ctx, item)]
    assert [n for n in notes if n != "ok"] == [PII_NOTE_REDACTED] * 5


def _notes(ctx, item_id: int) -> list[str | None]:
    from db.review import decisions as decisions_q

    with ctx.db.session(readonly=True) as s:
        return [d.note for d in decisions_q.list_decisions(s, item_id)]


def test_a_reveal_reason_is_audited_with_personal_data_cut(ctx, people, scanners):
    item = flag(ctx, people["op"], raw_prompt="mail me at ada@example.com")
    review.reveal_raw(ctx, people["alice"], item, "prompt", "customer jane.doe@example.com asked")
    with ctx.db.session(readonly=True) as s:
        (event,) = audit_q.iter_events(s, action="review.reveal_reason")
    assert event.details["reason"] == "customer <EMAIL_ADDRESS> asked"


# --- bound values never reach error messages or logs ------------------------------------------------------------


def test_a_failing_statement_does_not_show_the_prompt_it_was_storing(ctx, make_user):
    op = make_user("olga", "operator")
    secret = f"my secret prompt {uuid.uuid4().hex}"
    with pytest.raises(IntegrityError) as raised, ctx.db.session() as s:
        # No such conversation: the foreign key refuses the row, with the prompt among the bound values.
        s.add(Exchange(conversation_id=999_999, user_id=op.user_id, model_version="m", prompt=secret))
        s.flush()
    logged = "".join(traceback.format_exception(raised.value))  # what logger.exception would write
    assert secret not in logged and "hide_parameters" in str(raised.value)


# --- database URLs are printed without their password -----------------------------------------------------------


def test_the_settings_command_masks_the_database_password(tmp_path, monkeypatch, capsys):
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LLM_CONSOLE_DATABASE_URL", "postgresql+psycopg://console:hunter2@db.internal:5432/console")
    assert cli.main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "postgresql+psycopg://console:***@db.internal:5432/console" in out


def test_init_prints_the_database_url_without_its_password(tmp_path, monkeypatch, capsys):
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LLM_CONSOLE_DATABASE_URL", "postgresql+psycopg://console:hunter2@db.internal:5432/console")
    real_services = cli.open_context

    def on_sqlite(settings: Settings):  # our own seam: the PostgreSQL server is stood in for by a SQLite file
        return real_services(Settings.from_env(console_env(tmp_path)))

    monkeypatch.setattr(cli, "open_context", on_sqlite)
    assert cli.main(["init", "--skip-models"]) == 0
    out = capsys.readouterr().out
    assert "database ready: postgresql+psycopg://console:***@db.internal:5432/console" in out
    assert "hunter2" not in out


# --- the data directory and the SQLite files are owner-only -----------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Create files as a permissive umask would (0o000): only an explicit mode keeps them private."""
    old = os.umask(0)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_database_file_its_wal_and_shm_and_their_directory_are_owner_only(tmp_path, open_umask):
    path = tmp_path / "new" / "console.db"
    db = Database(DbConfig(url=f"sqlite:///{path}"))
    try:
        db.migrate()
        with db.engine.connect() as conn:  # a write, so the WAL and shared-memory files exist
            conn.execute(text("CREATE TABLE probe (x INTEGER)"))
            conn.commit()
            assert _mode(path.parent) == 0o700
            for name in ("console.db", "console.db-wal", "console.db-shm"):
                assert _mode(path.parent / name) == 0o600, name
    finally:
        db.dispose()


def test_the_cli_creates_the_data_directory_owner_only(tmp_path, open_umask):
    settings = Settings.from_env(console_env(tmp_path / "data"))
    ctx = cli.open_context(settings)
    try:
        assert _mode(settings.data_dir) == 0o700 and _mode(settings.data_dir / "console.db") == 0o600
    finally:
        ctx.db.dispose()


def test_the_console_creates_the_data_directory_owner_only(tmp_path, monkeypatch, open_umask):
    from console import resources

    for key, value in console_env(tmp_path / "data").items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    try:
        db = resources.database()
        assert _mode(tmp_path / "data") == 0o700 and _mode(tmp_path / "data" / "console.db") == 0o600
        db.dispose()
    finally:
        st.cache_resource.clear()


def test_an_existing_data_directory_open_to_others_is_made_owner_only_but_other_directories_are_not(tmp_path):
    data, other = tmp_path / "data", tmp_path / "shared"
    for d in (data, other):
        d.mkdir()
        d.chmod(0o755)
    make_private_dir(data, tighten=True)
    make_private_dir(other)
    assert _mode(data) == 0o700 and _mode(other) == 0o755


# --- NUL bytes ------------------------------------------------------------------------------------------------


def _store_with_nul(db: Database) -> tuple[str, str]:
    from db.users import create_user

    with db.session() as s:
        user = create_user(s, f"nul-{uuid.uuid4().hex[:6]}", "hash", ["operator"])
        conv = chat_q.create_conversation(s, user_id=user.id, actor=user.username, system_prompt="be\x00brief")
        ex = chat_q.store_turn(s, chat_q.TurnRecord(conversation_id=conv.id, user_id=user.id, actor=user.username,
                                                    model_version="m", prompt="hello\x00", response="bye\x00",
                                                    error="boom\x00"))
        return ex.prompt, conv.system_prompt or ""


def test_a_nul_byte_is_stored_as_a_replacement_character_keeping_offsets_on_sqlite(ctx):
    assert _store_with_nul(ctx.db) == ("hello\ufffd", "be\ufffdbrief")
    with ctx.db.session(readonly=True) as s:
        [ex] = s.query(Exchange).all()
        assert (ex.response, ex.error) == ("bye\ufffd", "boom\ufffd")
    assert audit_q.verify_chain(ctx.db).ok




def test_a_nul_byte_is_stored_as_a_replacement_character_on_postgresql(pg_db):
    assert _store_with_nul(pg_db) == ("hello\ufffd", "be\ufffdbrief")
    assert audit_q.verify_chain(pg_db).ok


# --- links in model text are never clickable --------------------------------------------------------------------

LINKS = [
    ("https", "see https://evil.example/?q=secret", "see https[:]//evil.example/?q=secret"),
    ("http upper case", "HTTP://evil.example", "HTTP[:]//evil.example"),
    ("www", "www.evil.example/x", "www[.]evil.example/x"),
    ("www after underscore", "_www.evil.example", "_www[.]evil.example"),
    ("other scheme", "ftp://evil.example", "ftp[:]//evil.example"),
    ("image", "![x](https://evil.example/p.png)", "![x](https[:]//evil.example/p.png)"),
    ("plain words", "a www page, http: and // alone", "a www page, http: and // alone"),
]


@pytest.mark.parametrize("name,raw,shown", LINKS, ids=[c[0] for c in LINKS])
def test_link_starts_are_defanged(name, raw, shown):
    assert defang_links(raw) == shown
    assert escape_markdown(raw).replace("\\", "") == shown  # escaping adds backslashes, nothing else


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_a_streamed_link_split_over_deltas_is_defanged_like_the_whole_text(size):
    whole = "Visit https://evil.example/?q=secret or www.evil.example now, HTTP://x.y"
    chunks = [whole[i:i + size] for i in range(0, len(whole), size)]
    assert "".join(escape_stream(chunks)) == escape_markdown(whole)
