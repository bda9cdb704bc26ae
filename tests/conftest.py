"""Shared fixtures. Every test builds its own temporary state; nothing touches /work/main/data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from db import Database, DbConfig
from engine.host import EngineHost
from engine.types import HostConfig, ModelSpec

# --- test tiers ---------------------------------------------------------------------------------------------
# `pytest --fast` (scripts/test.sh --fast) is the developers' tier: no browser, no PostgreSQL, no real engine start,
# nothing marked slow. Marks come from the fixtures a test uses, so a new test that takes `engine_host` is left out
# of the fast tier without anyone marking it; a test that starts an engine by other means (a child process, the
# CLI, EngineHost.start in its body) carries `@pytest.mark.engine` itself. The full run (`.ci/run`) runs them all.

FULL_TIER_MARKS = ("e2e", "engine", "postgres", "slow")
MARKS_BY_FIXTURE = {
    "engine_host": "engine",  # a real in-process vLLM engine (module-scoped)
    "vllm_server": "engine",  # a real vLLM OpenAI-compatible server process (session-scoped)
    "pg_db": "postgres",
    "browser": "e2e",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast", action="store_true", default=False,
                     help=f"run the fast tier only: leave out the tests marked {', '.join(FULL_TIER_MARKS)}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, mark in MARKS_BY_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(mark)
        if "e2e" in item.path.parts:
            item.add_marker("e2e")
    if not config.getoption("--fast"):
        return
    kept, left_out = [], []
    for item in items:
        (left_out if any(item.get_closest_marker(m) for m in FULL_TIER_MARKS) else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


# Argon2id at the console's cost (64 MiB, 3 passes) takes about a second a hash on a loaded 2-core machine, and most
# tests make several users. Tests in this process hash with argon2id's cheapest parameters instead: still real
# argon2id hashes, verified by the same code (the parameters travel in each hash). Subprocesses (the CLI, the
# browser tests' server) keep the real cost.
CHEAP_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}


@pytest.fixture(autouse=True, scope="session")
def cheap_password_hashes() -> Iterator[None]:
    from argon2 import PasswordHasher

    from console.services import auth

    cheap = PasswordHasher(**CHEAP_ARGON2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(auth, "_hasher", cheap)
        patch.setattr(auth, "_DUMMY_HASH", cheap.hash("not-a-real-password"))
        yield


# --- engine -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 2-layer Llama with the demo chat template, built once per test session (seconds)."""
    from engine.demo.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def engine_host(tiny_model_dir: Path) -> Iterator[EngineHost]:
    """A real in-process vLLM engine host serving the tiny model, shared by a test module.

    Its spec carries allowed engine arguments (their values are vLLM's CPU defaults), so every engine test also
    shows that arguments on the allowlist pass the host's check and reach vLLM."""
    host = EngineHost.start(
        ModelSpec(name="tiny-test", source=str(tiny_model_dir), engine_args={"enforce_eager": True, "seed": 0}),
        HostConfig(kv_cache_gib=0.25, drain_timeout_s=10.0),
        wait=True,
    )
    yield host
    host.shutdown()


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real vLLM OpenAI-compatible server (``python -m vllm.entrypoints.openai.api_server``) serving the tiny
    model as ``tiny-server`` on a loopback port, with an API key (``.api_key``), started once per test session
    (30-60 s) and stopped at its end. A :class:`tests.server_support.RunningServer`: ``url``, ``api_key``,
    ``log_path``, ``process``. Tests must not stop it or change what it serves."""
    import secrets

    from tests.server_support import start_vllm_server

    server = start_vllm_server(tiny_model_dir, "tiny-server", api_key=secrets.token_urlsafe(16),
                               log_path=tmp_path_factory.mktemp("vllm-server") / "server.log")
    yield server
    server.stop()


# --- console (services over a real SQLite file) -------------------------------------------------------------
# (maintained by the lead; the engine section above is separate)

from datetime import UTC, datetime, timedelta  # noqa: E402

STRONG_PASSWORD = "correct horse battery staple"


class FakeClock:
    """A clock tests can move forward (idle timeouts, lockout expiry) without sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


def console_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    env = {
        "LLM_CONSOLE_DATA_DIR": str(data_dir),
        "LLM_CONSOLE_ENGINE_AUTOSTART": "false",
        "LLM_CONSOLE_SAFETY_ENABLED": "false",
        "LLM_CONSOLE_LOCKOUT_THRESHOLD": "3",
        "LLM_CONSOLE_LOCKOUT_MINUTES": "15",
        "LLM_CONSOLE_SESSION_IDLE_MINUTES": "30",
    }
    env.update(overrides)
    return env


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def migrated_db_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database file migrated once per session; tests copy it instead of migrating again."""
    from db.config import DbConfig
    from db.database import Database

    path = tmp_path_factory.mktemp("template") / "console.db"
    db = Database(DbConfig(url=f"sqlite:///{path}"))
    db.migrate()
    db.dispose()
    return path


@pytest.fixture
def ctx(tmp_path: Path, clock: FakeClock, migrated_db_file: Path):
    """AppContext over a fresh, migrated SQLite file; no engine, no scanners."""
    import shutil

    from console.services.context import AppContext
    from console.settings import Settings
    from db.config import DbConfig
    from db.database import Database

    settings = Settings.from_env(console_env(tmp_path))
    shutil.copy(migrated_db_file, tmp_path / "console.db")
    db = Database(DbConfig(url=settings.database_url))
    yield AppContext(settings, db, clock=clock)
    db.dispose()


@pytest.fixture
def make_user(ctx):
    """Create a user with roles (as the system, like the first admin: no other account is needed) and return their
    principal."""
    from console.services.access import Principal
    from console.services.auth import canonical_email, hash_password
    from db import users as users_q

    def make(
        username: str, *roles: str, password: str = STRONG_PASSWORD, email: str | None = None
    ) -> Principal:
        with ctx.db.session() as s:
            user = users_q.create_user(s, username, hash_password(password), roles,
                                       email=canonical_email(email) or None, actor="system")
            return Principal(user.id, user.username, frozenset(user.roles))

    return make


# --- PostgreSQL (opt-in; scripts/test.sh starts a throwaway cluster when the machine has PostgreSQL) ---------------

POSTGRES_URL = os.environ.get("LLM_CONSOLE_TEST_POSTGRES_URL")


@contextmanager
def postgres_database() -> Iterator[Database]:
    """A fresh database on the server at ``LLM_CONSOLE_TEST_POSTGRES_URL``, migrated to head, dropped afterwards."""
    from db.database import scratch_postgres_database

    assert POSTGRES_URL is not None
    with scratch_postgres_database(POSTGRES_URL, prefix="llm_console_test") as url:
        database = Database(DbConfig(url))
        try:
            database.migrate()
            yield database
        finally:
            database.dispose()


@pytest.fixture
def pg_db() -> Iterator[Database]:
    """:func:`postgres_database` as a fixture; the test is skipped when no server is configured."""
    if not POSTGRES_URL:
        pytest.skip("set LLM_CONSOLE_TEST_POSTGRES_URL to run on PostgreSQL")
    with postgres_database() as database:
        yield database


@pytest.fixture(scope="session")
def offline_scanner():
    """The offline toxicity model where set-up puts it (scripts/setup.sh runs the same `prepare` when it is missing)."""
    from engine.safety import offline_model as om
    from engine.safety.toxicity import OfflineToxicityScanner, ToxicityConfig, load_toxicity

    om.prepare()
    load = load_toxicity(ToxicityConfig(allow_download=False))
    assert isinstance(load.scanner, OfflineToxicityScanner), load.notice
    return load.scanner
