"""The process-wide objects a service needs, handed in explicitly (no globals, no Streamlit)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from console.settings import Settings

if TYPE_CHECKING:
    from db.database import Database
    from engine.client import EngineClient


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class AppContext:
    """Settings, the database, and lazily the served engine and safety stack.

    The served engine and the scanners are slow to build, so they come from factories that the console
    (``console/resources.py``, with ``st.cache_resource``) or a test supplies.
    """

    settings: Settings
    db: Database
    # The engine that answers (engine.switching.SwitchingEngine in the console; an EngineHost or any ServedEngine in
    # tests; a candidate's client in a side-by-side chat's context). Services ask only what an EngineClient offers:
    # the serving side's Reconciler is handed the ServedEngine itself (console/resources.py).
    host_factory: Callable[[], EngineClient | None] = lambda: None
    safety_factory: Callable[[], Any] = lambda: None
    clock: Callable[[], datetime] = field(default=utcnow)
    # Child-process engines for candidate versions (side-by-side chats); console.services.compare.CandidatePool.
    candidates_factory: Callable[[], Any] = lambda: None

    @property
    def host(self) -> EngineClient | None:
        return self.host_factory()

    @property
    def safety(self) -> Any:
        return self.safety_factory()

    @property
    def candidates(self) -> Any:
        return self.candidates_factory()

    def now(self) -> datetime:
        return self.clock()
