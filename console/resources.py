"""The process-wide objects, built once per server process with ``st.cache_resource``.

vLLM does not give memory back when a second engine is made, so the engine host must only ever be built here.
"""

from __future__ import annotations

import atexit
import logging
from concurrent.futures import Future, ThreadPoolExecutor

import streamlit as st

from console.services.context import Services
from console.settings import Settings
from db.config import DbConfig
from db.database import Database

log = logging.getLogger(__name__)


@st.cache_resource(show_spinner=False)
def settings() -> Settings:
    return Settings.from_env()


@st.cache_resource(show_spinner=False)
def database() -> Database:
    cfg = settings()
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(DbConfig(url=cfg.database_url))
    db.migrate()
    return db


@st.cache_resource(show_spinner=False)
def engine_host():  # noqa: ANN201 - EngineHost | None; vLLM is imported lazily
    """Start serving the live version in the background; pages render while it loads."""
    from console.services import models as models_svc
    from engine.host import EngineHost
    from engine.types import HostConfig

    cfg = settings()
    if not cfg.engine_autostart:
        return None
    svc = Services(cfg, database())
    name = models_svc.live_version_name(svc)
    try:
        spec = models_svc.spec_for(svc, name)
    except Exception:
        log.exception("cannot resolve the live model version %s", name)
        return None
    host = EngineHost.start(spec, HostConfig(kv_cache_gib=cfg.kv_cache_gib), wait=False)
    atexit.register(host.shutdown)
    return host


@st.cache_resource(show_spinner=False)
def safety_loader() -> Future | None:
    """Start loading the scanners (spaCy, Detoxify or its fallback: seconds) in the background, once."""
    from console.services import moderation

    cfg = settings()
    if not cfg.safety_enabled:
        return None
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="safety-load")
    future = executor.submit(moderation.build_safety_stack, cfg, database())
    executor.shutdown(wait=False)
    return future


def safety_notice() -> str | None:
    """A short line for the sidebar while the scanners load, fail, or run on a fallback; never blocks."""
    future = safety_loader()
    if future is None:
        return "Safety scanning is off."
    if not future.done():
        return "Safety scanners are loading…"
    if future.exception() is not None:
        return "Safety scanners failed to load: chat is paused."
    stack = future.result()
    return "Toxicity: offline fallback (profanity only)." if stack.notice else None


def safety_stack():  # noqa: ANN201 - console.services.moderation.SafetyStack | None
    """The loaded scanners and policy; waits for the background load. Fails closed if it failed."""
    from console.services.errors import ConsoleError

    future = safety_loader()
    if future is None:
        return None
    try:
        return future.result()
    except Exception as exc:
        log.exception("the safety scanners failed to load")
        raise ConsoleError(f"The safety scanners failed to load ({exc}); chat is paused until they do.") from exc


def services() -> Services:
    return Services(settings(), database(), host_factory=engine_host, safety_factory=safety_stack)
