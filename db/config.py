"""Typed configuration of the store; the console builds it from its settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DbConfig:
    """Where the store lives and how connections behave.

    ``url`` is any SQLAlchemy URL (``sqlite:///path/console.db`` by default, ``postgresql+psycopg://...``
    for a shared deployment). ``busy_timeout_ms`` is how long a SQLite writer waits for the write lock
    before giving up; ``echo`` logs every SQL statement.
    """

    url: str
    busy_timeout_ms: int = 30000
    echo: bool = False
