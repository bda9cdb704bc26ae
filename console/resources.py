"""The process-wide objects, built once per server process with ``st.cache_resource``.

vLLM does not give memory back when a second engine is made, so the engine host must only ever be built here.
"""

from __future__ import annotations

import atexit
import logging
from concurrent.futures import Future, ThreadPoolExecutor

import streamlit as st

from console.services.context import AppContext
from console.services.errors import ConsoleError
from console.settings import Settings
from db.config import DbConfig
from db.database import Database, make_private_dir

logger = logging.getLogger(__name__)


@st.cache_resource(show_spinner=False)
def settings() -> Settings:
    return Settings.from_env()


@st.cache_resource(show_spinner=False)
def database() -> Database:
    cfg = settings()
    make_private_dir(cfg.data_dir, tighten=True)  # the database, models and logs: owner-only
    db = Database(DbConfig(url=cfg.database_url))
    db.migrate()
    return db


@st.cache_resource(show_spinner=False)
def engine_host():  # noqa: ANN201 - EngineHost | None; vLLM is imported lazily
    """Start serving the desired version in the background, and its reconciler; pages render while it loads.

    ``llm-console run`` calls this before the first browser connects, so the model loads at server start.
    """
    from console.services import promotion, serving
    from engine.host import EngineHost
    from engine.types import HostConfig

    cfg = settings()
    if not cfg.engine_autostart:
        return None
    ctx = AppContext(cfg, database())
    config = HostConfig(kv_cache_gib=cfg.kv_cache_gib, drain_timeout_s=cfg.drain_seconds)
    name = serving.desired_state(ctx).version
    try:
        host = EngineHost.start(serving.loadable_spec(ctx, name), config, wait=False)
    except ConsoleError:
        # Serve nothing for now; the reconciler still runs, so serving another version starts it.
        logger.exception("cannot serve the desired model version %s", name)
        host = EngineHost(config)
    reconciler = serving.Reconciler(ctx, host, interval_s=cfg.reconcile_seconds).start()
    atexit.register(promotion.Watcher(ctx, interval_s=cfg.watch_check_seconds).start().stop)
    atexit.register(host.shutdown)
    atexit.register(reconciler.stop)
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
    future = safety_loader()
    if future is None:
        return None
    try:
        return future.result()
    except Exception as exc:
        logger.exception("the safety scanners failed to load")
        raise ConsoleError(f"The safety scanners failed to load ({exc}); chat is paused until they do.") from exc


@st.cache_resource(show_spinner=False)
def candidate_pool():  # noqa: ANN201 - console.services.compare.CandidatePool
    """Child-process engines for candidate versions (side-by-side chats); at most one, ended when idle."""
    from console.services.compare import CandidatePool

    cfg = settings()
    pool = CandidatePool(kv_cache_gib=min(cfg.kv_cache_gib, 0.5), log_dir=cfg.data_dir).start_reaper()
    atexit.register(pool.shutdown)
    return pool


def app_context() -> AppContext:
    return AppContext(settings(), database(), host_factory=engine_host, safety_factory=safety_stack,
                      candidates_factory=candidate_pool)
