"""Canary serving: the candidate beside the live version, sticky per conversation, kept by every console's reconciler
(engine/switching.py canary slot, console/services/serving.py Reconciler, console/services/chat.py routing).

Real engines: the live version and the candidate are two ``server`` versions on the session's shared vLLM server
(the tiny model under two names), so nothing starts an engine of its own; a canary is a row of
``promotion_requests`` in the ``canary`` state, written here as H6's approval writes it. The tests of the first part
run in file order on one SwitchingEngine:

1. a running canary: the reconciler brings the candidate up beside the live version (audited once), and chat turns
   follow ``conversation_arm`` -- every turn of a conversation on the same version, some conversations on each;
2. the candidate's engine down: a turn of a candidate-arm conversation is answered by the live version; the next
   round brings the candidate up again;
3. the canary rolled back: the reconciler stops the candidate (drained, audited), every turn goes to live;
4. a new canary promoted (the alias moved to the candidate): the switch adopts the canary's engine, no second start;
5. an in-process candidate runs in a child process beside the live engine (the one real engine start here).

The second part uses stand-in servers at our own seam (``engine.backends.start_client``), for what a real engine
cannot be made to do on demand: a candidate that cannot start (audited once, retried after the back-off, not every
round), one that dies while serving, and one that fails a request (recorded against the candidate); chat reads the
running canary once per few seconds, and not at all while no candidate is up; an engine without a canary slot (a
bare in-process host) is audited once.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from console.services import chat as chat_svc
from console.services import registry, serving
from console.services.access import Principal
from console.services.canary import CanaryPlan, conversation_arm
from console.services.context import AppContext
from console.services.errors import ModelUnavailable
from console.settings import Settings
from db import audit as audit_q
from db import chat as chat_q
from db import model_versions as versions_q
from db import users as users_q
from db.config import DbConfig
from db.database import Database
from db.model_versions import PRODUCTION
from db.tables import PromotionRequest
from engine import backends
from engine.errors import EngineDeadError, EngineError, ServerStartError
from engine.switching import SwitchingEngine
from engine.types import ChatMessage, HostConfig, HostStatus, ModelSpec, SamplingSettings, ServerOptions
from tests.conftest import console_env

WAIT_S = 600.0
TURN = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 4}
HELLO = [ChatMessage("user", "Where is my order?")]
GREEDY = SamplingSettings(temperature=0.0, max_tokens=4, ignore_eos=True)


@pytest.fixture(autouse=True)
def no_canary_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chat reads the running canary at most every few seconds; these tests change it between turns."""
    monkeypatch.setattr(chat_svc, "CANARY_CACHE_S", 0.0)


def make_user(ctx: AppContext, username: str, *roles: str) -> Principal:
    with ctx.db.session() as s:
        user = users_q.create_user(s, username, "not-a-real-hash", roles, actor="system")
        return Principal(user.id, user.username, frozenset(user.roles))


def open_canary(ctx: AppContext, candidate: str, requester: Principal, share: float = 0.5) -> int:
    """A running canary of ``candidate`` as an approval leaves it (status ``canary``, started a minute ago)."""
    now = datetime.now(UTC)
    with ctx.db.session() as s:
        version = versions_q.get_model_version_by_name(s, candidate)
        live = versions_q.version_for_alias(s, PRODUCTION)
        assert version is not None and live is not None
        request = PromotionRequest(alias=PRODUCTION, version_id=version.id, from_version_id=live.id,
                                   reason="canary serving test", requested_by_id=requester.user_id, status="canary",
                                   canary_plan=CanaryPlan(share=share, minutes=60).to_dict(),
                                   canary_started_at=now - timedelta(minutes=1),
                                   canary_ends_at=now + timedelta(minutes=59), decided_at=now)
        s.add(request)
        s.flush()
        return request.id


def end_canary(ctx: AppContext, request_id: int, status: str, *, promote_to: str | None = None) -> None:
    with ctx.db.session() as s:
        request = s.get(PromotionRequest, request_id)
        assert request is not None
        request.status = status
        if promote_to is not None:
            version = versions_q.get_model_version_by_name(s, promote_to)
            assert version is not None
            versions_q.move_alias(s, PRODUCTION, version, actor="system", actor_id=None,
                                  reason=f"canary #{request_id}: shown no worse")


def events(ctx: AppContext, action: str) -> list[dict[str, Any]]:
    with ctx.db.session(readonly=True) as s:
        return [e.details for e in audit_q.events_about(s, (action,), limit=50)]


def chat_turn(ctx: AppContext, user: Principal, conversation_id: int | None, prompt: str) -> chat_svc.TurnOutcome:
    turn = chat_svc.start_turn(ctx, user, conversation_id, prompt, **TURN)
    "".join(turn.deltas())
    assert turn.outcome is not None
    return turn.outcome


def stored_version(ctx: AppContext, exchange_id: int | None) -> str:
    assert exchange_id is not None
    with ctx.db.session(readonly=True) as s:
        exchange = chat_q.get_exchange(s, exchange_id)
        assert exchange is not None
        return exchange.model_version


def conversation_created_at(ctx: AppContext, conversation_id: int) -> datetime:
    with ctx.db.session(readonly=True) as s:
        conversation = chat_q.get_conversation(s, conversation_id)
        assert conversation is not None
        return conversation.created_at


def answer(engine: SwitchingEngine, arm: str = "live") -> str:
    stream = engine.stream_chat(HELLO, GREEDY, arm=arm)  # type: ignore[arg-type]
    for _ in stream:
        pass
    return stream.result.model_version


# --- real engines: two server versions on the session's vLLM server --------------------------------------------


@dataclass
class Site:
    ctx: AppContext
    engine: SwitchingEngine
    reconciler: serving.Reconciler
    admin: Principal
    user: Principal
    starts: list[Any]  # every engine client backends.start_client returned


@pytest.fixture(scope="module")
def site(vllm_server, migrated_db_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("canary-serving")
    settings = Settings.from_env(console_env(root, LLM_CONSOLE_SERVER_API_KEY=vllm_server.api_key))
    shutil.copy(migrated_db_file, root / "console.db")
    db = Database(DbConfig(url=settings.database_url))
    ctx = AppContext(settings, db)
    shell = Principal.shell(ctx, "canary serving test")
    for name in ("cs-live", "cs-cand"):
        registry.register(ctx, shell, name=name, backend="server", server_urls=[vllm_server.url],
                          server_model="tiny-server", description="a version on the shared test server")
    serving.serve(ctx, shell, "cs-live", "canary serving test: start")
    starts: list[Any] = []
    real_start = backends.start_client

    def counted(*args: Any, **kwargs: Any) -> Any:
        client = real_start(*args, **kwargs)
        starts.append(client)
        return client

    patch = pytest.MonkeyPatch()
    patch.setattr(backends, "start_client", counted)
    engine = SwitchingEngine.start(registry.loadable_spec(ctx, "cs-live"),
                                   HostConfig(kv_cache_gib=0.25, drain_timeout_s=WAIT_S),
                                   settings.server_options(), wait=True)
    ctx.host_factory = lambda: engine
    try:
        yield Site(ctx, engine, serving.Reconciler(ctx, engine, interval_s=0.1), make_user(ctx, "ada", "admin"),
                   make_user(ctx, "olga", "operator"), starts)
    finally:
        patch.undo()
        engine.shutdown()
        db.dispose()
    assert vllm_server.alive(), "closing a server version's clients must not stop the server"


def test_a_running_canary_brings_the_candidate_up_and_each_conversation_sticks_to_its_arm(site: Site) -> None:
    ctx, engine = site.ctx, site.engine
    request_id = open_canary(ctx, "cs-cand", site.admin, share=0.5)
    assert site.reconciler.run_once() is None  # production is served already: no switch
    outcome = site.reconciler.canary_outcome
    assert outcome is not None and (outcome.action, outcome.version, outcome.ok) == ("start", "cs-cand", True)
    assert engine.canary is not None and engine.canary.name == "cs-cand"
    status = engine.status()
    assert (status.model_version, status.canary) == ("cs-live", "cs-cand")
    assert "cs-cand" not in status.message and "canary" not in status.message.lower()  # chat users see nothing
    started = events(ctx, "model.canary_started")
    assert len(started) == 1 and (started[0]["to"], started[0]["request_id"], started[0]["live"]) == (
        "cs-cand", request_id, "cs-live")
    site.reconciler.run_once()
    assert site.reconciler.canary_outcome is None and len(events(ctx, "model.canary_started")) == 1  # converged

    seen: dict[str, int] = {"cs-live": 0, "cs-cand": 0}
    for n in range(12):
        first = chat_turn(ctx, site.user, None, f"Question {n}: where is my order?")
        with ctx.db.session(readonly=True) as s:
            exchange = chat_q.get_exchange(s, first.exchange_id)  # type: ignore[arg-type]
            assert exchange is not None
            conversation_id = exchange.conversation_id
        second = chat_turn(ctx, site.user, conversation_id, "And when will it arrive?")
        on_candidate = conversation_arm(_canary(ctx), conversation_id, conversation_created_at(ctx, conversation_id))
        expected = "cs-cand" if on_candidate else "cs-live"
        assert (first.status, second.status) == ("ok", "ok")
        assert (first.model_version, second.model_version) == (expected, expected)
        assert stored_version(ctx, first.exchange_id) == stored_version(ctx, second.exchange_id) == expected
        seen[expected] += 1
    assert seen["cs-live"] > 0 and seen["cs-cand"] > 0, seen  # a share of 0.5 over 12 conversations
    assert answer(engine, "candidate") == "cs-cand" and answer(engine, "live") == "cs-live"


def _canary(ctx: AppContext):  # noqa: ANN202 - ActiveCanary | None
    from console.services.canary import active_canary

    with ctx.db.session(readonly=True) as s:
        return active_canary(s)


def _candidate_conversation(ctx: AppContext, user: Principal) -> int:
    """A new conversation on the candidate's arm (found by asking, as a user would start one)."""
    canary = _canary(ctx)
    for n in range(40):
        outcome = chat_turn(ctx, user, None, f"Looking for the candidate's arm ({n})")
        with ctx.db.session(readonly=True) as s:
            exchange = chat_q.get_exchange(s, outcome.exchange_id)  # type: ignore[arg-type]
            assert exchange is not None
            conversation_id = exchange.conversation_id
        if conversation_arm(canary, conversation_id, conversation_created_at(ctx, conversation_id)):
            return conversation_id
    raise AssertionError("no conversation landed on the candidate's arm in 40 tries")


def test_a_conversation_on_the_candidate_arm_is_answered_by_live_while_the_candidate_is_down(site: Site) -> None:
    ctx, engine = site.ctx, site.engine
    conversation_id = _candidate_conversation(ctx, site.user)
    assert engine.stop_canary() and engine.canary is None and engine.wait_retired(timeout=WAIT_S)
    outcome = chat_turn(ctx, site.user, conversation_id, "Is anyone there?")
    assert (outcome.status, outcome.model_version) == ("ok", "cs-live")
    assert answer(engine, "candidate") == "cs-live"
    site.reconciler.run_once()  # the canary still runs: the candidate comes up again
    assert site.reconciler.canary_outcome is not None and site.reconciler.canary_outcome.ok
    assert chat_turn(ctx, site.user, conversation_id, "And now?").model_version == "cs-cand"


def test_a_rolled_back_canary_stops_the_candidate_and_every_turn_goes_to_live(site: Site) -> None:
    ctx, engine = site.ctx, site.engine
    conversation_id = _candidate_conversation(ctx, site.user)
    canary = _canary(ctx)
    assert canary is not None
    end_canary(ctx, canary.request_id, "rolled_back")
    assert site.reconciler.run_once() is None
    outcome = site.reconciler.canary_outcome
    assert outcome is not None and (outcome.action, outcome.version, outcome.ok) == ("stop", "cs-cand", True)
    assert engine.canary is None and engine.status().canary is None and engine.wait_retired(timeout=WAIT_S)
    stopped = events(ctx, "model.canary_stopped")
    assert stopped and (stopped[0]["to"], stopped[0]["request_id"]) == ("cs-cand", canary.request_id)
    assert chat_turn(ctx, site.user, conversation_id, "Still there?").model_version == "cs-live"
    site.reconciler.run_once()
    assert site.reconciler.canary_outcome is None  # nothing to converge


def test_a_promoted_canary_is_served_by_the_canary_engine_without_a_second_start(site: Site) -> None:
    ctx, engine = site.ctx, site.engine
    request_id = open_canary(ctx, "cs-cand", site.admin, share=0.3)
    site.reconciler.run_once()
    assert engine.canary is not None and engine.canary.name == "cs-cand"
    candidate_client, starts = site.starts[-1], len(site.starts)
    old_live = engine.current
    end_canary(ctx, request_id, "approved", promote_to="cs-cand")
    outcome = site.reconciler.run_once()
    assert outcome is not None and (outcome.action, outcome.ok, outcome.to_version) == ("switch", True, "cs-cand")
    assert len(site.starts) == starts and engine.current is candidate_client  # adopted, not started again
    assert site.reconciler.canary_outcome is None and engine.canary is None
    assert engine.wait_retired(timeout=WAIT_S) and engine.current is not old_live
    assert answer(engine) == "cs-cand" and answer(engine, "candidate") == "cs-cand"
    assert serving.serving_status(ctx).model_version == "cs-cand"
    assert events(ctx, "model.switch")[0]["to"] == "cs-cand"


def test_an_in_process_candidate_runs_in_a_child_process_beside_the_live_engine(site: Site,
                                                                                 tiny_model_dir: Path) -> None:
    """The console's live engine may be the process's one in-process host: an in-process candidate starts in a
    child process (one real child start), answers only the candidate's requests, and is gone once stopped."""
    from engine.child_client import ChildEngineClient

    ctx, engine = site.ctx, site.engine
    registry.register(ctx, Principal.shell(ctx, "canary serving test"), name="cs-local", source=str(tiny_model_dir),
                      dtype="float32", max_model_len=512, engine_args={"enforce_eager": True},
                      description="an in-process candidate")
    engine.start_canary(registry.loadable_spec(ctx, "cs-local"))
    child = site.starts[-1]
    assert isinstance(child, ChildEngineClient) and backends.backend_of(child) == "separate process"
    assert engine.canary is not None and engine.canary.name == "cs-local" and engine.host is None
    assert answer(engine, "candidate") == "cs-local" and answer(engine) == "cs-cand"
    assert engine.stop_canary() and engine.wait_retired(timeout=WAIT_S)
    assert child.status().state == "stopped" and answer(engine, "candidate") == "cs-cand"


# --- stand-in servers at our own seam ---------------------------------------------------------------------------


class FakeStream:
    def __init__(self, spec: ModelSpec, request_id: str, fail: bool) -> None:
        from engine.types import GenerationResult

        self.request_id, self.model_version, self._fail = request_id, spec.name, fail
        self._result = GenerationResult(request_id, spec.name, "hi", "length", 3, 1, None, 0.01, None, 0.01, fail)
        self._left = ["hi"]

    @property
    def done(self) -> bool:
        return not self._left

    @property
    def result(self):  # noqa: ANN201
        return self._result

    def __iter__(self) -> FakeStream:
        return self

    def __next__(self) -> str:
        if not self._left:
            raise StopIteration
        if self._fail:
            self._left = []
            raise EngineDeadError("The candidate stopped working mid-answer.")
        return self._left.pop()

    def cancel(self):  # noqa: ANN201
        self._left = []
        return self._result

    def close(self) -> None:
        self._left = []


class FakeServer:
    """A server backend's client that answers at once; ``state`` may be set to ``dead``; ``failing`` requests
    fail mid-stream, ``refusing`` ones before anything streams."""

    def __init__(self, spec: ModelSpec, log: list[str]) -> None:
        self.spec, self.log, self.state = spec, log, "ready"
        self.failing = self.refusing = False

    @property
    def serving(self) -> ModelSpec | None:
        return self.spec if self.state == "ready" else None

    def status(self) -> HostStatus:
        return HostStatus(self.state, self.spec.name, f"Serving {self.spec.name}", 1.0,  # type: ignore[arg-type]
                          error="it died" if self.state == "dead" else None)

    def health(self):  # noqa: ANN201
        from engine.types import EngineHealth

        return EngineHealth(self.status().state, self.spec.name)

    def wait_ready(self, timeout: float | None = None) -> HostStatus:
        return self.status()

    def stream_chat(self, messages, sampling, *, request_id=None) -> FakeStream:  # noqa: ANN001
        if self.state == "dead":
            raise EngineDeadError("The model stopped working.")
        if self.refusing:
            raise EngineError("The candidate refused the request.")
        return FakeStream(self.spec, request_id or "r", self.failing)

    def stream_prompt(self, prompt, sampling, *, request_id=None) -> FakeStream:  # noqa: ANN001
        return self.stream_chat([], sampling, request_id=request_id)

    def check_chat(self, messages) -> None:  # noqa: ANN001
        pass

    def cancel(self, request_id: str) -> None:
        pass

    def shutdown(self) -> None:
        if self.state != "stopped":
            self.state = "stopped"
            self.log.append(f"stop {self.spec.name}")


@dataclass
class FakeSite:
    ctx: AppContext
    engine: SwitchingEngine
    reconciler: serving.Reconciler
    admin: Principal
    user: Principal
    log: list[str]
    broken: set[str]
    clients: dict[str, FakeServer]


@pytest.fixture
def fake_site(ctx, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSite]:  # noqa: ANN001
    """Three managed-server versions of the tiny model's files (none started for real); production on fk-live."""
    log: list[str] = []
    broken: set[str] = set()
    clients: dict[str, FakeServer] = {}

    def start_client(spec, config, options, *, wait=True, **_ignored):  # noqa: ANN001, ANN202
        if spec.name in broken:
            log.append(f"fail {spec.name}")
            raise ServerStartError(f"The vLLM server for {spec.name} did not start: it exited at start-up")
        log.append(f"start {spec.name}")
        clients[spec.name] = FakeServer(spec, log)
        return clients[spec.name]

    monkeypatch.setattr(backends, "start_client", start_client)
    shell = Principal.shell(ctx, "canary serving test")
    for name in ("fk-live", "fk-cand"):
        registry.register(ctx, shell, name=name, source=str(tiny_model_dir), backend="managed-server",
                          dtype="float32", max_model_len=512, description="canary serving test")
    serving.serve(ctx, shell, "fk-live", "canary serving test: start")
    engine = SwitchingEngine.start(registry.loadable_spec(ctx, "fk-live"), HostConfig(), ServerOptions(), wait=True)
    ctx.host_factory = lambda: engine
    try:
        yield FakeSite(ctx, engine, serving.Reconciler(ctx, engine), make_user(ctx, "ada", "admin"),
                       make_user(ctx, "olga", "operator"), log, broken, clients)
    finally:
        engine.shutdown()


def test_a_candidate_that_cannot_start_is_audited_once_and_tried_again_after_the_back_off(fake_site) -> None:  # noqa: ANN001
    site = fake_site
    site.broken.add("fk-cand")
    request_id = open_canary(site.ctx, "fk-cand", site.admin)
    site.reconciler.run_once()
    outcome = site.reconciler.canary_outcome
    assert outcome is not None and (outcome.action, outcome.ok) == ("start", False)
    assert "did not start" in (outcome.error or "")
    for _ in range(3):
        site.reconciler.run_once()  # within the back-off: not tried again
    assert site.log == ["start fk-live", "fail fk-cand"] and site.engine.canary is None
    failed = events(site.ctx, "model.canary_failed")
    assert len(failed) == 1 and (failed[0]["to"], failed[0]["request_id"], failed[0]["serving"]) == (
        "fk-cand", request_id, "fk-live")
    assert "did not start" in failed[0]["error"]
    assert answer(site.engine, "candidate") == "fk-live"  # every chat goes to live meanwhile

    site.reconciler.canary_retry_s = 0.0  # the back-off is over
    site.reconciler._canary_retry_at = 0.0
    site.reconciler.run_once()
    assert site.log[-1] == "fail fk-cand" and len(events(site.ctx, "model.canary_failed")) == 1  # still once
    site.broken.clear()
    site.reconciler.run_once()
    assert site.log[-1] == "start fk-cand" and site.engine.canary is not None
    assert len(events(site.ctx, "model.canary_started")) == 1


def test_a_candidate_that_dies_is_stopped_audited_and_its_conversations_answered_by_live(fake_site) -> None:  # noqa: ANN001
    site = fake_site
    open_canary(site.ctx, "fk-cand", site.admin)
    site.reconciler.run_once()
    assert site.engine.canary is not None and answer(site.engine, "candidate") == "fk-cand"
    site.clients["fk-cand"].state = "dead"
    assert answer(site.engine, "candidate") == "fk-live"  # refused as dead: live answers, no error
    site.reconciler.run_once()
    outcome = site.reconciler.canary_outcome
    assert outcome is not None and not outcome.ok and "stopped working" in (outcome.error or "")
    assert site.engine.canary is None and site.engine.wait_retired(timeout=WAIT_S)
    assert "stop fk-cand" in site.log
    assert [e["to"] for e in events(site.ctx, "model.canary_failed")] == ["fk-cand"]


def test_a_candidate_that_fails_a_turn_has_the_error_recorded_against_it(fake_site) -> None:  # noqa: ANN001
    site = fake_site
    open_canary(site.ctx, "fk-cand", site.admin)
    site.reconciler.run_once()
    candidate = site.clients["fk-cand"]
    candidate.failing = True  # mid-stream
    conversation_id = _candidate_conversation_failing(site)
    candidate.failing, candidate.refusing = False, True  # before anything streams
    with pytest.raises(ModelUnavailable, match="refused"):
        chat_svc.start_turn(site.ctx, site.user, conversation_id, "Once more", **TURN)
    with site.ctx.db.session(readonly=True) as s:
        exchanges = chat_q.list_exchanges(s, conversation_id)
    assert [(e.status, e.model_version) for e in exchanges] == [("error", "fk-cand"), ("error", "fk-cand")]


def _candidate_conversation_failing(site: FakeSite) -> int:
    """A conversation on the candidate's arm whose first turn failed mid-stream on the candidate."""
    canary = _canary(site.ctx)
    for n in range(40):
        turn = chat_svc.start_turn(site.ctx, site.user, None, f"Question {n}", **TURN)
        try:
            "".join(turn.deltas())
        except ModelUnavailable:
            assert turn.outcome is not None and turn.outcome.model_version == "fk-cand"
            created = conversation_created_at(site.ctx, turn.conversation_id)
            assert conversation_arm(canary, turn.conversation_id, created)
            return turn.conversation_id
        assert turn.outcome is not None and turn.outcome.model_version == "fk-live"
    raise AssertionError("no conversation landed on the candidate's arm in 40 tries")


def test_chat_reads_the_running_canary_once_per_few_seconds_and_not_at_all_without_a_canary_engine(
        fake_site, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from console.services import canary as canary_svc

    site = fake_site
    reads: list[int] = []
    real = canary_svc.active_canary

    def counted(session):  # noqa: ANN001, ANN202
        reads.append(1)
        return real(session)

    monkeypatch.setattr(canary_svc, "active_canary", counted)
    monkeypatch.setattr(chat_svc, "CANARY_CACHE_S", 60.0)
    open_canary(site.ctx, "fk-cand", site.admin)
    for n in range(3):
        chat_turn(site.ctx, site.user, None, f"Before the candidate is up ({n})")
    assert reads == []  # no canary engine on this console: nothing to decide, nothing read
    site.reconciler.run_once()
    assert site.engine.canary is not None
    reads.clear()
    versions = {chat_turn(site.ctx, site.user, None, f"During the canary ({n})").model_version for n in range(8)}
    assert reads == [1] and versions == {"fk-live", "fk-cand"}  # one read for eight turns, both arms used


def test_a_console_whose_engine_cannot_run_a_canary_says_so_once(ctx, tiny_model_dir: Path) -> None:  # noqa: ANN001
    """A bare in-process host (one engine per process) has no canary slot: audited once, chats stay on live."""

    class BareHost:
        def status(self) -> HostStatus:
            return HostStatus("ready", "fk-live", "Serving fk-live", 1.0)

    shell = Principal.shell(ctx, "canary serving test")
    for name in ("fk-live", "fk-cand"):
        registry.register(ctx, shell, name=name, source=str(tiny_model_dir), dtype="float32", max_model_len=512,
                          description="canary serving test")
    serving.serve(ctx, shell, "fk-live", "canary serving test: start")
    reconciler = serving.Reconciler(ctx, BareHost())  # type: ignore[arg-type]
    request_id = open_canary(ctx, "fk-cand", make_user(ctx, "ada", "admin"))
    for _ in range(3):
        assert reconciler.run_once() is None
    failed = events(ctx, "model.canary_failed")
    assert len(failed) == 1 and (failed[0]["to"], failed[0]["request_id"]) == ("fk-cand", request_id)
    assert "cannot serve a second version" in failed[0]["error"]
