"""The throwaway store the benches seed: a migrated SQLite file in a temporary folder, removed afterwards."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from console.settings import Settings
from db.config import DbConfig
from db.database import Database


@contextmanager
def throwaway_store(data_dir: Path | None = None) -> Iterator[tuple[Settings, Database]]:
    """Settings and a migrated database in a new temporary folder under ``data_dir`` (the system's temporary folder
    when None), with the engine's autostart and the safety scanners off: what a bench seeds and times. The
    connections are closed and the folder removed on the way out, whatever happened inside."""
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        settings = Settings.from_env({"LLM_CONSOLE_DATA_DIR": tmp, "LLM_CONSOLE_ENGINE_AUTOSTART": "false",
                                      "LLM_CONSOLE_SAFETY_ENABLED": "false"})
        db = Database(DbConfig(url=settings.database_url))
        try:
            db.migrate()
            yield settings, db
        finally:
            db.dispose()
