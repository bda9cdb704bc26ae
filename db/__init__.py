"""The console's store: schema, migrations, the audit chain and query functions.

Never imports Streamlit, vLLM or the console; it gets a typed ``DbConfig``.
"""

from __future__ import annotations

from db.config import DbConfig
from db.database import Database, ReadOnlySessionError

__all__ = ["Database", "DbConfig", "ReadOnlySessionError"]
