"""Switching between managed vLLM servers through the reconciler, under concurrent chats (engine/switching.py).

One throwaway database with three managed-server versions of the tiny model (the same weights under three names;
``bg-bad`` asks for a context the model does not have, so its server exits at start-up). A ``SwitchingEngine``
serves ``bg-v1``; the production alias is moved the way a shell command with ``--break-glass`` moves it, and the
reconciler switches (``run_once``, as its thread would). The tests run in file order on the one engine:

1. v1 -> v2 blue-green while chats stream in a loop: none fails, chats sent during the switch are answered by v1,
   every chat sent after the switch returned by v2 on v2's server; a request left open over the switch finishes
   on v1; v1's server process is gone after the drain; ``model.switch`` is audited with its seconds.
2. v2 -> bg-bad: the server never comes up; v2 keeps serving every chat, ``model.switch_failed`` is audited and
   ``last_switch_problem`` shows it.
3. v2 -> v1 with stop-then-load (``ServerOptions.blue_green`` off): chats sent meanwhile wait and are answered by
   v1 (none fails), and the page's status says they wait and why.

Three real server starts (v1, v2, v1 again) and one that fails at once; no assertion on how long anything took.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from console.services import registry, serving
from console.services.access import Principal
from console.services.context import AppContext
from console.settings import Settings
from db import audit as audit_q
from db.config import DbConfig
from db.database import Database
from engine.switching import SwitchingEngine
from engine.types import ChatMessage, GenerationResult, HostConfig, SamplingSettings, ServerOptions
from tests.conftest import console_env

pytestmark = pytest.mark.engine  # every test here drives real vLLM servers

HELLO = [ChatMessage("user", "Where is my order?")]
SHORT = SamplingSettings(temperature=0.0, max_tokens=12, ignore_eos=True)
WAIT_S = 600.0  # generous: other tests load engines beside these on the shared machine


@dataclass
class Served:
    ctx: AppContext
    shell: Principal
    engine: SwitchingEngine
    reconciler: serving.Reconciler

    def move_production(self, name: str, why: str) -> None:
        serving.serve(self.ctx, self.shell, name, why, break_glass="blue-green test (throwaway database)")


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, migrated_db_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("blue-green")
    settings = Settings.from_env(console_env(root))
    shutil.copy(migrated_db_file, root / "console.db")
    db = Database(DbConfig(url=settings.database_url))
    ctx = AppContext(settings, db)
    shell = Principal.shell(ctx, "blue-green test")
    for name, max_model_len in (("bg-v1", 512), ("bg-v2", 512), ("bg-bad", 100_000)):
        source = shutil.copytree(tiny_model_dir, root / name)
        registry.register(ctx, shell, name=name, source=str(source), backend="managed-server", dtype="float32",
                          max_model_len=max_model_len, description="blue-green test")
    serving.serve(ctx, shell, "bg-v1", "blue-green test: start")
    # Drain time long enough that a request left open over a switch is never cut off on a busy machine.
    engine = SwitchingEngine.start(registry.loadable_spec(ctx, "bg-v1"),
                                   HostConfig(kv_cache_gib=0.25, drain_timeout_s=WAIT_S),
                                   ServerOptions(log_dir=str(root / "servers"), start_timeout_s=WAIT_S), wait=True)
    ctx.host_factory = lambda: engine
    try:
        yield Served(ctx, shell, engine, serving.Reconciler(ctx, engine, interval_s=0.1))
    finally:
        engine.shutdown()
        db.dispose()


class Load:
    """``n`` chat loops on their own threads until stopped; each result with the time its request was sent."""

    def __init__(self, engine: SwitchingEngine, n: int = 3) -> None:
        self.engine = engine
        self.results: list[tuple[float, GenerationResult]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(n)]

    def _loop(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                stream = self.engine.stream_chat(HELLO, SHORT)
                for _ in stream:
                    pass
                with self._lock:
                    self.results.append((sent, stream.result))
            except BaseException as exc:  # noqa: BLE001 - every failure is what the test looks for
                with self._lock:
                    self.errors.append(exc)

    def wait_for(self, count: int, sent_after: float = 0.0) -> None:
        """Until ``count`` requests sent after ``sent_after`` were answered (by count, not by time)."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not self.errors:
            with self._lock:
                if sum(1 for sent, _ in self.results if sent > sent_after) >= count:
                    return
            time.sleep(0.05)

    def sent(self, when: Callable[[float], bool]) -> list[GenerationResult]:
        with self._lock:
            return [result for sent, result in self.results if when(sent)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(WAIT_S)


def gone(pid: int | None) -> bool:
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def newest_event(ctx: AppContext, action: str):  # noqa: ANN201 - db.tables.AuditEvent
    with ctx.db.session(readonly=True) as s:
        return audit_q.events_about(s, (action,), limit=1)[0]


def test_a_blue_green_switch_under_concurrent_chats_fails_none_and_moves_new_chats_to_v2(served: Served) -> None:
    engine = served.engine
    v1 = engine.current
    v1_url, v1_pid = v1.urls[0], v1.server.pid  # type: ignore[union-attr]
    left_open = engine.stream_chat(HELLO, SamplingSettings(temperature=0.0, max_tokens=64, ignore_eos=True))
    next(left_open)  # in flight on v1 over the whole switch
    with Load(engine) as load:
        load.wait_for(3)
        asked = time.monotonic()
        served.move_production("bg-v2", "blue-green test: switch")
        outcome = served.reconciler.run_once()
        returned = time.monotonic()
        load.wait_for(6, sent_after=returned)
    for _ in left_open:
        pass

    assert outcome is not None and (outcome.action, outcome.ok, outcome.to_version) == ("switch", True, "bg-v2")
    assert load.errors == []
    v2_url = engine.current.urls[0]  # type: ignore[union-attr]
    assert v2_url != v1_url
    # Sent while v2 started: answered by v1 meanwhile (the ones sent in the last instant, by v2).
    during = load.sent(lambda sent: asked < sent < returned)
    assert any(r.model_version == "bg-v1" for r in during), "no chat was answered while v2 started"
    after = load.sent(lambda sent: sent > returned)
    assert len(after) >= 6 and {(r.model_version, r.server) for r in after} == {("bg-v2", v2_url)}
    result = left_open.result
    assert (result.model_version, result.server, result.aborted, result.output_tokens) == ("bg-v1", v1_url, False, 64)
    assert engine.wait_retired(timeout=WAIT_S) and gone(v1_pid), "v1's server still runs after the drain"
    event = newest_event(served.ctx, "model.switch")
    assert (event.details["from"], event.details["to"]) == ("bg-v1", "bg-v2")
    assert isinstance(event.details["seconds"], float) and event.details["seconds"] > 0
    assert serving.serving_status(served.ctx).model_version == "bg-v2"


def test_a_version_whose_server_never_starts_leaves_v2_serving_and_is_shown(served: Served) -> None:
    engine = served.engine
    with Load(engine, n=2) as load:
        load.wait_for(2)
        served.move_production("bg-bad", "blue-green test: a version that cannot start")
        outcome = served.reconciler.run_once()
        returned = time.monotonic()
        load.wait_for(2, sent_after=returned)

    assert outcome is not None and (outcome.ok, outcome.to_version) == (False, "bg-bad")
    assert load.errors == []
    assert {r.model_version for _, r in load.results} == {"bg-v2"}
    status = engine.status()
    assert (status.state, status.model_version, status.switching_to) == ("ready", "bg-v2", None)
    event = newest_event(served.ctx, "model.switch_failed")
    assert (event.details["to"], event.details["serving"]) == ("bg-bad", "bg-v2")
    problem = serving.last_switch_problem(served.ctx)
    assert problem is not None and (problem.action, problem.version) == ("switch", "bg-bad")
    assert "bg-bad" in problem.error and "max_model_len" in problem.error  # the server's own reason, from its log


def test_stop_then_load_holds_chats_and_answers_them_with_the_new_version(served: Served) -> None:
    engine = served.engine
    engine.options = dataclasses.replace(engine.options, blue_green=False)
    v2_pid = engine.current.server.pid  # type: ignore[union-attr]
    seen: list[serving.ServingView] = []
    switched = threading.Event()

    def watch() -> None:
        while not switched.is_set():
            view = serving.serving_status(served.ctx)
            if view.state == "switching":
                seen.append(view)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    with Load(engine) as load:
        load.wait_for(3)
        asked = time.monotonic()
        served.move_production("bg-v1", "blue-green test: back to v1, stopping v2 first")
        watcher.start()
        outcome = served.reconciler.run_once()
        returned = time.monotonic()
        switched.set()
        load.wait_for(3, sent_after=returned)
    watcher.join()

    assert outcome is not None and (outcome.ok, outcome.to_version) == (True, "bg-v1")
    assert load.errors == []
    waited = load.sent(lambda sent: asked < sent < returned)
    assert any(r.model_version == "bg-v1" for r in waited), "no chat sent during the switch was held for v1"
    assert {r.model_version for r in load.sent(lambda sent: sent > returned)} == {"bg-v1"}
    assert gone(v2_pid)
    assert seen and all(v.switching_to == "bg-v1" and v.ready for v in seen)
    assert seen[-1].message == ("Switching to bg-v1: the old engine is stopped first (the switch mode is "
                                "stop-then-load); chats wait until bg-v1 has loaded.")
