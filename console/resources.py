"""The process-wide objects, built once per server process with ``st.cache_resource``.

vLLM does not give memory back when a second engine is made, so the served engine (and the one in-process engine
host it keeps) must only ever be built here.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import streamlit as st

from console.services.context import AppContext
from console.services.errors import ConsoleError
from console.settings import Settings, SettingsError
from db.config import DbConfig
from db.database import Database, make_private_dir

if TYPE_CHECKING:
    from console.services.compare import CandidatePool
    from console.services.moderation import SafetyStack
    from console.services.telemetry import MetricsEndpoint
    from engine.safety.toxicity import ToxicityScanner
    from engine.switching import SwitchingEngine
    from engine.types import HostConfig, ServerOptions

logger = logging.getLogger(__name__)

# When this server process started (this module is imported before any page or turn runs in it).
STARTED_AT = datetime.now(UTC)


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


def host_config(cfg: Settings) -> HostConfig:
    """The engine host's typed config from the installation's settings (trust_remote_code included)."""
    from engine.types import HostConfig

    return HostConfig(kv_cache_gib=cfg.kv_cache_gib, drain_timeout_s=cfg.drain_seconds,
                      trust_remote_code=cfg.trust_remote_code)


def server_options(cfg: Settings) -> ServerOptions:
    """How engines reach and run vLLM servers (``Settings.server_options``). An unreadable API key file does not
    stop the console: the options then carry no key, and an external server that wants one refuses (and says so)."""
    try:
        return cfg.server_options()
    except SettingsError as exc:
        logger.warning("no API key for vLLM servers: %s", exc)
        from engine.types import ServerOptions

        return ServerOptions(log_dir=str(cfg.servers_dir), blue_green=cfg.switch_mode == "blue-green",
                             start_timeout_s=cfg.server_start_seconds)


@st.cache_resource(show_spinner=False)
def engine_host() -> SwitchingEngine | None:  # vLLM is imported lazily
    """Start serving the desired version in the background on its backend (in-process, a vLLM server, a managed
    server: :class:`engine.switching.SwitchingEngine`), and its reconciler; pages render while it loads.

    ``llm-console run`` calls this before the first browser connects, so the model loads at server start.
    First, exchanges left pending by an earlier process (it stopped while the model answered) are marked
    interrupted: every turn asks for the host, so none of this process's can be pending before that.
    """
    from console.services import canary, chat, registry, serving, watch
    from engine.switching import SwitchingEngine

    cfg = settings()
    ctx = AppContext(cfg, database())
    try:
        chat.mark_interrupted(ctx, before=STARTED_AT)
    except ConsoleError:  # the database is busy or full: the next start sweeps them; the console starts regardless
        logger.exception("could not mark the exchanges left pending by an earlier process as interrupted")
    from console.services import audit

    # Registered first, so it stops last: its shutdown checkpoint covers everything the other jobs wrote.
    atexit.register(audit.Checkpointer(ctx).start().stop)
    from console.services import audit_watch

    verifier = audit_watch.start(ctx)  # every audit_verify_minutes, one replica per round; None when off
    if verifier is not None:
        atexit.register(verifier.stop)
    from console.services.retention import RetentionTask

    atexit.register(RetentionTask(ctx).start().stop)  # every retention_check_seconds, engine or not
    from console.services.spot_checks import SpotCheckTask

    atexit.register(SpotCheckTask(ctx).start().stop)  # every spot_check_seconds, one replica per round
    from console.services import secret_box
    from console.services.alerts import AlertDispatcher, AlertEvaluator

    try:  # webhooks stored in plaintext before 0029: encrypted once, whichever replica starts first
        secret_box.encrypt_stored_secrets(ctx)
    except ConsoleError as exc:  # a missing secrets key: deliveries and the Alerts page say so; the console starts
        logger.error("webhook secrets: %s", exc)
    atexit.register(AlertEvaluator(ctx).start().stop)  # every alert_check_seconds, one replica per round
    atexit.register(AlertDispatcher(ctx).start().stop)  # every alert_check_seconds, every replica
    metrics_endpoint()  # once per process, engine or not (its engine gauges start when the host does)
    if not cfg.engine_autostart:
        return None
    config = host_config(cfg)
    options = server_options(cfg)
    name = serving.desired_state(ctx).version
    nothing_to_load = False
    try:
        host = SwitchingEngine.start(registry.loadable_spec(ctx, name), config, options, wait=False)
    except ConsoleError as exc:
        # Serve nothing for now; the reconciler still runs, so serving another version starts it (or the
        # background demo build giving its first version the production alias).
        logger.warning("cannot serve the desired model version %s yet: %s", name, exc)
        host = SwitchingEngine(config, options)
        nothing_to_load = True
    reconciler = serving.Reconciler(ctx, host, interval_s=cfg.reconcile_seconds)
    if nothing_to_load:
        # Import vLLM now, while the served version is still being built, not when it is ready; the reconciler
        # starts after it, so the engine's own import never runs beside this one (concurrent imports of one
        # package can deadlock).
        threading.Thread(target=_import_vllm_then, args=(reconciler.start,), name="vllm-import",
                         daemon=True).start()
    else:
        reconciler.start()
    from console.services import engine_health, telemetry

    atexit.register(engine_health.HealthSampler(ctx, host, interval_s=cfg.health_sample_seconds).start().stop)
    telemetry.watch_host(host)
    atexit.register(watch.Watcher(ctx, interval_s=cfg.watch_check_seconds).start().stop)
    atexit.register(canary.CanaryJudge(ctx, interval_s=cfg.canary_check_seconds).start().stop)
    atexit.register(host.shutdown)
    atexit.register(reconciler.stop)
    return host


def _import_vllm_then(then: Callable[[], object]) -> None:
    """Import the vLLM modules an engine needs (tens of seconds on a busy CPU), then call ``then``.

    It waits for the safety scanners' load first: that imports transformers too (for Detoxify), and transformers'
    lazy module is not safe to import from two threads at once. Both together take well under v1's training time.
    """
    loading = safety_loader()
    if loading is not None:
        try:
            loading.result(timeout=300)
        except Exception:  # noqa: BLE001 - the page reports a failed scanner load; the import goes on regardless
            logger.warning("the safety scanners did not load; importing vLLM anyway")
    started = time.monotonic()
    try:
        import vllm  # noqa: F401
        import vllm.engine.arg_utils  # noqa: F401
        import vllm.v1.engine.llm_engine  # noqa: F401
        logger.info("vLLM imported ahead of the first model in %.1f s", time.monotonic() - started)
    except Exception:  # the engine reports its own failure when it loads a model
        logger.exception("importing vLLM ahead of the first model failed")
    then()


@st.cache_resource(show_spinner=False)
def metrics_endpoint() -> MetricsEndpoint | None:
    """The Prometheus /metrics endpoint, once per process; None while LLM_CONSOLE_METRICS_PORT is 0 (off)."""
    from console.services import telemetry

    endpoint = telemetry.start_endpoint(settings())
    if endpoint is not None:
        atexit.register(endpoint.stop)
    return endpoint


@st.cache_resource(show_spinner=False)
def safety_loader() -> Future[SafetyStack] | None:
    """Start loading the scanners (spaCy, Detoxify or its fallback: seconds) in the background, once."""
    from console.services import moderation

    cfg = settings()
    if not cfg.safety_enabled:
        return None
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="safety-load")
    db = database()
    future = executor.submit(moderation.build_safety_stack, cfg, db)
    executor.shutdown(wait=False)
    future.add_done_callback(lambda done: _follow_policy(cfg, db, done))
    return future


def _follow_policy(cfg: Settings, db: Database, done: Future[SafetyStack]) -> None:
    """Once the scanners are loaded, follow the newest stored policy version (a change approved on any replica)."""
    if done.cancelled() or done.exception() is not None:
        return
    from console.services.policy import PolicyFollower

    stack = done.result()
    ctx = AppContext(cfg, db, safety_factory=lambda: stack)
    atexit.register(PolicyFollower(ctx, interval_s=cfg.reconcile_seconds).start().stop)


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
    if not stack.notice:
        return None
    scanner = _toxicity_scanner(stack)
    if scanner is not None and scanner.kind == "offline":
        return "Toxicity: offline model (Detoxify's weights are missing)."
    return "Toxicity: offline fallback (profanity only)."


def _toxicity_scanner(stack: SafetyStack) -> ToxicityScanner | None:
    """The scanner that judges toxicity: Detoxify, the offline model or the profanity fallback (it has a ``kind``)."""
    from engine.safety.toxicity import toxicity_scanner_of  # loaded with the stack already

    return toxicity_scanner_of(stack.runner.scanners)


def toxicity_judge() -> str | None:
    """Which detector judges toxicity, for the sidebar ("offline model tox-block 0.1.2"); None while the scanners
    load, when they failed or when scanning is off. Never blocks."""
    future = safety_loader()
    if future is None or not future.done() or future.exception() is not None:
        return None
    scanner = _toxicity_scanner(future.result())
    return None if scanner is None else scanner.display_name


def safety_stack() -> SafetyStack | None:
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
def candidate_pool() -> CandidatePool:
    """Child-process engines for candidate versions (side-by-side chats); at most one, ended when idle."""
    from console.services.compare import CandidatePool

    cfg = settings()
    pool = CandidatePool(kv_cache_gib=min(cfg.kv_cache_gib, 0.5), log_dir=cfg.data_dir,
                         trust_remote_code=cfg.trust_remote_code, options=server_options(cfg)).start_reaper()
    atexit.register(pool.shutdown)
    return pool


def app_context() -> AppContext:
    return AppContext(settings(), database(), host_factory=engine_host, safety_factory=safety_stack,
                      candidates_factory=candidate_pool)
