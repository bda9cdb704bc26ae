"""The console's served engine: :class:`SwitchingEngine`, an engine client that can move to another model version
on any backend (in-process, ``server``, ``managed-server``) while chats go on.

It holds the engine client serving now and routes every request to it, remembering which client each live request
went to (so ``cancel`` finds it, and a switch knows what is still running on the old engine). A switch is one of:

- **in-process to in-process**: the one :class:`~engine.host.EngineHost` of the process switches itself (vLLM's
  per-process state forbids a second engine beside the first): the old engine is stopped first, requests wait and
  are answered by the new version;
- **blue-green** (the old or the new version runs in another process, ``ServerOptions.blue_green``): the new engine
  is brought up beside the old one (a managed server started and healthy, an external server checked, or an
  in-process engine loaded while a server serves) and answers one warm-up request, then new requests go to it
  while in-flight ones finish on the old one, which is drained in the background (up to ``HostConfig.drain_timeout_s``, then the rest end with
  ``finish_reason == "switch"``) and stopped. No request waits for a load. If the new engine never comes up,
  nothing changes and the error is raised;
- **stop-then-load** (``blue_green`` off, or a managed server that failed to start for lack of memory): new
  requests are held (up to ``HostConfig.switch_wait_s``), the old engine is drained and stopped, the new one
  started; if it fails the old one is started again.

**A canary** (:meth:`SwitchingEngine.start_canary`): a second version brought up beside the current one with the same
bring-up and warm-up as blue-green (an in-process candidate in a child process, since the current engine may be the
process's host), serving only the requests that ask for it (``stream_chat(..., arm="candidate")``); a request that
asks for it while it is not up, or finds it dead, is answered by the current engine instead. A switch to the version
the canary serves adopts its engine (no second start) and retires the old one; :meth:`~SwitchingEngine.stop_canary`
drains and stops it in the background.

One ``EngineHost`` object per process, ever: when serving moves to a server the in-process engine is stopped and
the host kept for a later in-process version (vLLM does not give all of an engine's memory back).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from engine import backends
from engine.client import EngineClient, ResponseStream
from engine.errors import (
    EmptyPromptError,
    EngineDeadError,
    EngineError,
    EngineNotReadyError,
    ModelLoadError,
    ServerStartError,
)
from engine.types import (
    ChatMessage,
    EngineHealth,
    GenerationResult,
    HostConfig,
    HostStatus,
    ModelSpec,
    SamplingSettings,
    ServerOptions,
)

if TYPE_CHECKING:
    from engine.host import EngineHost

logger = logging.getLogger(__name__)

DRAIN_POLL_S = 0.1  # how often a drain looks at the old engine's in-flight requests (it is also woken at each end)


@runtime_checkable
class ServedEngine(EngineClient, Protocol):
    """The console's live engine: an :class:`~engine.client.EngineClient` plus the lifecycle the serving side
    (:class:`console.services.serving.Reconciler`) drives. :class:`SwitchingEngine` is the console's;
    :class:`~engine.host.EngineHost` (in-process only) is one too."""

    @property
    def config(self) -> HostConfig:
        """How the engine runs (drain and switch-wait times, KV cache)."""

    @property
    def switching_to(self) -> ModelSpec | None:
        """The version a switch under way moves to, or None."""

    def switch(self, spec: ModelSpec, *, drain: bool = True) -> float:
        """Serve ``spec`` instead of the current version; returns the seconds it took. Raises ModelLoadError (or
        a subclass) and keeps serving the old version when ``spec`` cannot be served."""

    def restart(self, *, wait: bool = True) -> None:
        """Start the current version's engine again (after it died or failed)."""

    def wait_ready(self, timeout: float | None = None) -> HostStatus:
        """Block until the engine serves; ModelLoadError if it failed, EngineNotReadyError on timeout."""


Arm = Literal["live", "candidate"]
ARMS: tuple[Arm, ...] = ("live", "candidate")


@runtime_checkable
class CanaryEngine(Protocol):
    """A served engine that can run a canary: a second version beside the current one for the requests that ask for
    it (:class:`SwitchingEngine`; a bare :class:`~engine.host.EngineHost` cannot: one engine per process)."""

    @property
    def canary(self) -> ModelSpec | None:
        """The version the canary slot serves now (up and warmed), or None."""

    def start_canary(self, spec: ModelSpec) -> float:
        """Bring ``spec`` up beside the current engine as the canary; returns the seconds it took."""

    def stop_canary(self, *, drain: bool = True) -> bool:
        """Stop the canary (drained in the background); False when none was up."""

    def canary_status(self) -> HostStatus | None:
        """The canary's engine state, or None when the slot is empty."""

    def stream_chat(self, messages: Sequence[ChatMessage], sampling: SamplingSettings, *,
                    request_id: str | None = None, arm: Arm = "live") -> ResponseStream:
        """Submit a chat to the current engine, or to the canary (``arm="candidate"``) when it is up."""


def switch_message(mode: str, target: str, old: str | None = None, detail: str = "") -> str:
    """What the pages show while a switch runs (``HostStatus.message``); says whether chats wait, and why.

    ``mode``: ``blue-green``, ``in-process`` (two in-process versions), ``setting`` (the switch mode is
    stop-then-load) or ``memory`` (a managed server could not start beside the old engine).
    """
    tail = f" ({detail})" if detail else ""
    if mode == "blue-green":
        return (f"Switching to {target}: it starts beside {old or 'the old version'}, which answers chats meanwhile "
                f"(no chat waits){tail}.")
    why = {"in-process": "two in-process engines cannot share one process",
           "setting": "the switch mode is stop-then-load",
           "memory": "not enough memory for both"}.get(mode, mode)
    return f"Switching to {target}: the old engine is stopped first ({why}); chats wait until {target} has loaded{tail}."


@dataclasses.dataclass(eq=False)
class _Route:
    """One live request: the client it went to, and why the switching engine cut it off (if it did)."""

    request_id: str
    client: EngineClient
    cut: str | None = None
    canary: bool = False  # sent to the canary slot


class RoutedStream(Iterator[str]):
    """A request's stream as the :class:`SwitchingEngine` hands it out: the backend client's stream, which tells
    the switching engine when it ended (so a drain knows what still runs on an old engine). A request a switch cut
    off ends with ``finish_reason == "switch"``, whatever the backend called it."""

    def __init__(self, inner: ResponseStream, route: _Route, release: Callable[[_Route], None]) -> None:
        self._inner = inner
        self._route = route
        self.request_id = inner.request_id
        self.model_version = inner.model_version
        # Dropped unfinished: the inner stream aborts itself when collected; the route must go too.
        self._finalizer = weakref.finalize(self, release, route)
        self._finalizer.atexit = False

    @property
    def done(self) -> bool:
        """True once the request finished, was aborted or failed."""
        return self._inner.done

    @property
    def result(self) -> GenerationResult:
        """The backend's result (a request a switch cut off says ``finish_reason == "switch"``)."""
        result = self._inner.result
        if self._route.cut is not None and result.aborted:
            return dataclasses.replace(result, finish_reason=self._route.cut)
        return result

    def __iter__(self) -> RoutedStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._inner)
        except BaseException:  # StopIteration (it ended) or the request's failure: either way it no longer runs
            self._finalizer()
            raise

    def cancel(self) -> GenerationResult:
        """Abort the request (no-op once it ended) and return its result."""
        self._inner.cancel()
        self._finalizer()
        return self.result

    def close(self) -> None:
        """Abort the request if it still runs."""
        self._inner.close()
        self._finalizer()

    def __enter__(self) -> RoutedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SwitchingEngine:
    """The console's served engine on any backend; an :class:`~engine.client.EngineClient` and a
    :class:`ServedEngine`, safe to share across threads (see the module docstring for how a switch runs).

    Build it with :meth:`start` (serves a first version) or the constructor (serves nothing until :meth:`switch`).
    ``host`` is the process's one :class:`~engine.host.EngineHost`, if one exists already.
    """

    def __init__(self, config: HostConfig | None = None, options: ServerOptions | None = None, *,
                 host: EngineHost | None = None) -> None:
        self._config = config or HostConfig()
        self._options = options or ServerOptions()
        self._host: EngineHost | None = host
        self._current: EngineClient | None = host
        self._current_spec: ModelSpec | None = None
        self._incoming: EngineClient | None = None  # the engine a switch or first start brings up, for status()
        self._switching_to: ModelSpec | None = None
        self._switch_note = ""  # the status message while a switch runs
        self._holding = False  # stop-then-load: new requests wait
        self._failure: HostStatus | None = None  # why nothing serves (a first start that failed)
        self._closed = False
        self._lifecycle = threading.Lock()  # one switch, restart or shutdown at a time
        self._changed = threading.Condition()  # guards the fields above and _routes; woken at each change
        self._routes: dict[str, _Route] = {}
        self._retiring: dict[int, threading.Thread] = {}  # old engines being drained and stopped, by id(client)
        self._starter: threading.Thread | None = None
        self._canary: EngineClient | None = None  # the canary slot's engine, once up and warmed
        self._canary_spec: ModelSpec | None = None
        self._canary_incoming: EngineClient | None = None  # a canary being brought up (shutdown stops it too)
        self._canary_starting: ModelSpec | None = None

    @classmethod
    def start(cls, spec: ModelSpec, config: HostConfig | None = None, options: ServerOptions | None = None, *,
              wait: bool = False) -> SwitchingEngine:
        """Serve ``spec`` on its backend. Starts in the background unless ``wait`` (then raises what the start
        raised: ModelLoadError, ServerStartError, ServerUnavailableError)."""
        engine = cls(config, options)
        if spec.backend == "in-process":
            from engine.host import EngineHost

            engine._host = engine._current = EngineHost.start(spec, engine._config, wait=False)
            engine._current_spec = spec
            if wait:
                engine.wait_ready()
            return engine
        if wait:
            engine.switch(spec)
            return engine

        def first_start() -> None:
            try:
                engine.switch(spec)
            except EngineError as exc:
                logger.warning("could not start %s: %s", spec.name, exc)

        with engine._changed:
            engine._switching_to = spec  # status() says loading until the thread took over
        engine._starter = threading.Thread(target=first_start, name=f"engine-start[{spec.name}]", daemon=True)
        engine._starter.start()
        return engine

    # -- what the serving side reads --

    @property
    def config(self) -> HostConfig:
        """How engines run (drain and switch-wait times, KV cache)."""
        return self._config

    @property
    def options(self) -> ServerOptions:
        """How vLLM servers are reached and run (blue-green or stop-then-load, API key, logs); a new value applies
        from the next switch or restart."""
        return self._options

    @options.setter
    def options(self, options: ServerOptions) -> None:
        self._options = options

    @property
    def host(self) -> EngineHost | None:
        """The process's one in-process engine host, once an in-process version was served."""
        return self._host

    @property
    def current(self) -> EngineClient | None:
        """The engine client new requests go to (None while nothing serves or a stop-then-load switch holds)."""
        return self._current

    @property
    def switching_to(self) -> ModelSpec | None:
        """The version a switch under way moves to, or None."""
        return self._switching_to

    @property
    def serving(self) -> ModelSpec | None:
        """The version that answers requests now; None while loading, stopped, failed, dead or held."""
        current = self._current
        if current is None or self._holding:
            return None
        return current.serving

    @property
    def canary(self) -> ModelSpec | None:
        """The version the canary slot serves (up and warmed: requests asking for the candidate go to it), or None."""
        with self._changed:
            return self._canary_spec if self._canary is not None and not self._closed else None

    @property
    def canary_starting(self) -> ModelSpec | None:
        """The version a :meth:`start_canary` under way brings up, or None."""
        return self._canary_starting

    def canary_status(self) -> HostStatus | None:
        """The canary slot's engine state (up, or being brought up), or None when the slot is empty."""
        with self._changed:
            client = self._canary or self._canary_incoming
            starting = self._canary_starting
        if client is not None:
            return client.status()
        if starting is not None:
            return HostStatus("loading", starting.name, f"Starting {starting.name} beside the live version")
        return None

    def canary_health(self) -> EngineHealth | None:
        """The canary engine's load (as :meth:`health` for the current one), or None when no canary is up."""
        client = self._canary
        return client.health() if client is not None else None

    def status(self) -> HostStatus:
        """The current engine's state; while a switch runs, with ``switching_to`` and a message saying whether
        chats wait (see :func:`switch_message`). ``canary`` names the version the canary slot serves (the message
        never mentions it: chat users do not see a canary)."""
        status = self._status()
        canary = self.canary
        return dataclasses.replace(status, canary=canary.name) if canary is not None else status

    def _status(self) -> HostStatus:
        with self._changed:
            if self._closed:
                return HostStatus("stopped", None, "The engine has been shut down.")
            current, incoming, target = self._current, self._incoming, self._switching_to
            note, holding, failure = self._switch_note, self._holding, self._failure
            served_before = self._current_spec
        if target is not None and current is None and not holding and served_before is None:
            # A first start: nothing served before, so it is loading, not switching.
            if incoming is not None:
                return incoming.status()
            return HostStatus("loading", target.name, f"Starting {target.name}")
        if target is not None:
            if holding or current is None:
                base = incoming.status() if incoming is not None else HostStatus("loading", target.name, "")
                return dataclasses.replace(base, state="loading", model_version=target.name,
                                           message=note or base.message, switching_to=target.name)
            base = current.status()
            progress = incoming.status().progress if incoming is not None else base.progress
            return dataclasses.replace(base, message=note or base.message, switching_to=target.name,
                                       progress=progress)
        if current is None:
            return failure or HostStatus("stopped", None, "No model loaded.")
        status = current.status()
        if current is self._host and status.switching_to is not None:  # the host's own (in-process) switch
            if served_before is None:  # its first version: loading, not switching
                return dataclasses.replace(status, switching_to=None)
            return dataclasses.replace(status, message=switch_message("in-process", status.switching_to,
                                                                      detail=status.message))
        return status

    def health(self) -> EngineHealth:
        """The current engine's load (a server backend's per-server figures in ``servers``)."""
        current = self._current or self._incoming
        if current is None:
            status = self.status()
            return EngineHealth(status.state, status.model_version, error=status.error, at=time.time())
        return current.health()

    def wait_ready(self, timeout: float | None = None) -> HostStatus:
        """Block until a version serves (a first start in the background included); ModelLoadError if it
        failed, EngineNotReadyError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        starter = self._starter
        if starter is not None:
            starter.join(timeout)
            if starter.is_alive():
                raise EngineNotReadyError(f"The engine is still starting after {timeout or 0:.0f} s.")
        current = self._current
        if current is None:
            failure = self._failure
            if failure is not None:
                raise ModelLoadError(f"Model version {failure.model_version} failed to start: {failure.error}")
            raise EngineNotReadyError("No model version is being loaded.")
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        return backends.wait_ready(current, left)

    # -- requests --

    def stream_chat(self, messages: Sequence[ChatMessage], sampling: SamplingSettings, *,
                    request_id: str | None = None, arm: Arm = "live") -> RoutedStream:
        """Submit a chat to the engine serving now (during a stop-then-load switch: once the new one serves).

        ``arm="candidate"``: to the canary's engine when it is up; when it is not (or it refuses the request as
        not ready or dead) to the engine serving now, so a canary that is down never fails a chat. The stream's
        ``model_version`` says which version answers."""
        if not messages or not messages[-1].content.strip():
            raise EmptyPromptError()
        if arm not in ARMS:
            raise ValueError(f"arm must be one of {', '.join(ARMS)}, got {arm!r}")
        rid = request_id or f"chat-{uuid.uuid4().hex[:16]}"
        return self._submit(lambda client: client.stream_chat(messages, sampling, request_id=rid), rid, arm)

    def stream_prompt(self, prompt: str, sampling: SamplingSettings, *,
                      request_id: str | None = None) -> RoutedStream:
        """Submit a raw prompt (no chat template) to the engine serving now."""
        if not prompt.strip():
            raise EmptyPromptError()
        rid = request_id or f"cmpl-{uuid.uuid4().hex[:16]}"
        return self._submit(lambda client: client.stream_prompt(prompt, sampling, request_id=rid), rid)

    def check_chat(self, messages: Sequence[ChatMessage]) -> None:
        """What the engine serving now would refuse (empty, no template, too long); nothing while none serves."""
        if not messages or not messages[-1].content.strip():
            raise EmptyPromptError()
        current = self._current
        if current is not None and not self._holding:
            current.check_chat(messages)

    def cancel(self, request_id: str) -> None:
        """Abort a running request on whichever engine it went to; unknown ids are ignored."""
        with self._changed:
            route = self._routes.get(request_id)
        if route is not None:
            route.client.cancel(request_id)

    def in_flight(self, client: EngineClient | None = None) -> int:
        """Requests running now (on ``client`` only, when given)."""
        with self._changed:
            return sum(1 for r in self._routes.values() if client is None or r.client is client)

    def _submit(self, send: Callable[[EngineClient], ResponseStream], request_id: str,
                arm: Arm = "live") -> RoutedStream:
        # A request that raced a switch to the old engine (it stopped taking requests between our look and our
        # submit) goes to the engine that serves now.
        attempt = 0
        while True:
            route = self._route(request_id, arm)
            try:
                inner = send(route.client)
            except (EngineNotReadyError, EngineDeadError) as exc:
                self._release(route)
                if route.canary:  # the canary is down: the engine serving now answers
                    logger.warning("canary engine refused request %s (%s); sending it to the live version",
                                   request_id, exc)
                    arm = "live"
                    continue
                with self._changed:
                    moved = self._current is not route.client or self._holding or self._switching_to is not None
                if attempt == 2 or not moved:
                    raise
                attempt += 1
                continue
            except BaseException:
                self._release(route)
                raise
            return RoutedStream(inner, route, self._release)

    def _route(self, request_id: str, arm: Arm = "live") -> _Route:
        """The client a new request goes to, recorded before it is submitted (so a drain waits for it)."""
        deadline = time.monotonic() + self._config.switch_wait_s
        with self._changed:
            if arm == "candidate" and self._canary is not None and not self._closed:
                route = _Route(request_id, self._canary, canary=True)
                self._routes[request_id] = route
                return route
            while True:
                if self._closed:
                    raise EngineNotReadyError("The engine has been shut down.")
                if not self._holding:
                    break
                left = deadline - time.monotonic()
                target = self._switching_to
                if left <= 0:
                    raise EngineNotReadyError(
                        f"The switch to {target.name if target else 'the new version'} is taking longer than "
                        f"{self._config.switch_wait_s:.0f} s; try again in a moment.")
                self._changed.wait(min(left, 1.0))
            client = self._current
            if client is None:
                raise self._not_serving()
            route = _Route(request_id, client)
            self._routes[request_id] = route
            return route

    def _release(self, route: _Route) -> None:
        with self._changed:
            if self._routes.get(route.request_id) is route:
                del self._routes[route.request_id]
                self._changed.notify_all()

    def _not_serving(self) -> EngineError:
        incoming, failure, target = self._incoming, self._failure, self._switching_to
        if incoming is not None or target is not None:
            name = target.name if target is not None else "The model"
            return EngineNotReadyError(f"{name} is starting; try again in a moment.")
        if failure is not None:
            return EngineNotReadyError(f"Model version {failure.model_version} failed to start: {failure.error}")
        return EngineNotReadyError("No model version is loaded.")

    # -- switching --

    def switch(self, spec: ModelSpec, *, drain: bool = True) -> float:
        """Serve ``spec`` instead of the current version; returns the seconds until it served.

        In-process to in-process: the host's own switch (requests wait). Otherwise blue-green when
        ``options.blue_green`` (no request waits), falling back to stop-then-load when a managed server cannot
        start beside the old engine for lack of memory, or when blue-green is off. Raises ModelLoadError (or
        ServerStartError / ServerUnavailableError) when ``spec`` cannot be served; the old version keeps serving
        (blue-green) or is started again (stop-then-load).
        """
        started = time.monotonic()
        with self._lifecycle:
            self._check_open()
            old, old_spec = self._current, self._current_spec
            try:
                if self._adopt_canary(spec, old, drain):
                    pass  # the canary's engine serves it already: no second start
                elif spec.backend == "in-process" and (old is None or old is self._host):
                    self._switch_in_process(spec, drain)
                elif old is None:
                    self._start_first(spec)
                else:
                    # Fall back only to a version that was serving; never start one again that had failed or died.
                    fallback = old_spec if old.status().state == "ready" else None
                    if not self._options.blue_green:
                        self._stop_then_load(old, fallback, spec, drain, "setting")
                    else:
                        try:
                            self._blue_green(old, spec, drain)
                        except ServerStartError as exc:
                            if not exc.out_of_memory:
                                raise
                            logger.warning("%s cannot start beside %s (out of memory); stopping the old engine "
                                           "first", spec.name, old_spec.name if old_spec else "?")
                            self._stop_then_load(old, fallback, spec, drain, "memory")
            finally:
                with self._changed:
                    self._switching_to, self._switch_note, self._holding, self._incoming = None, "", False, None
                    self._changed.notify_all()
        seconds = time.monotonic() - started
        logger.info("now serving %s on %s (switch took %.1f s)", spec.name, spec.backend, seconds)
        return seconds

    def start_canary(self, spec: ModelSpec) -> float:
        """Bring ``spec`` up beside the engine serving now as the canary, with the same bring-up and warm-up as a
        blue-green switch (a managed server started, an external server checked, an in-process version in a child
        process); returns the seconds it took. From then on requests asking for the candidate go to it.

        A canary of another version is stopped first; the same version already up is left as it is (0 s). Raises
        ModelLoadError (or ServerStartError / ServerUnavailableError) when ``spec`` cannot start or answer: the
        slot stays empty and nothing else changes. Raises EngineNotReadyError when ``spec`` is the version serving
        now (it cannot be its own canary) or the engine was shut down."""
        started = time.monotonic()
        with self._lifecycle:
            self._check_open()
            with self._changed:
                up, up_spec = self._canary, self._canary_spec
            if up is not None and up_spec == spec:
                return 0.0
            if self._current_spec == spec and self._current is not None:
                raise EngineNotReadyError(f"{spec.name} is the version serving now; it cannot be its own canary.")
            if up is not None:
                self._drop_canary(drain=True)
            self._set(_canary_starting=spec)
            try:
                client = backends.start_client(spec, self._config, self._options, wait=False, in_process="child")
                self._set(_canary_incoming=client)
                self._await_ready(client, spec, warm_up=True)
                with self._changed:
                    closed = self._closed
                    if not closed:
                        self._canary, self._canary_spec = client, spec
                        self._changed.notify_all()
                if closed:
                    client.shutdown()
                    raise EngineNotReadyError("The engine has been shut down.")
            finally:
                self._set(_canary_starting=None, _canary_incoming=None)
        seconds = time.monotonic() - started
        logger.info("canary %s up beside %s (took %.1f s)", spec.name,
                    self._current_spec.name if self._current_spec else "nothing", seconds)
        return seconds

    def stop_canary(self, *, drain: bool = True) -> bool:
        """Empty the canary slot: requests asking for the candidate go to the engine serving now from this moment,
        and the canary's engine is drained (``drain``, up to ``drain_timeout_s``) and stopped in the background
        (:meth:`wait_retired` waits for it). Returns False when no canary was up."""
        with self._lifecycle:
            return self._drop_canary(drain=drain)

    def restart(self, *, wait: bool = True) -> None:
        """Start the current version's engine again: in-process, the host's restart; a managed server, a fresh one
        brought up beside (blue-green, or after stopping the old one when blue-green is off); an external server,
        a new client once the server answers again. Server backends always wait (the old serves meanwhile)."""
        with self._lifecycle:
            self._check_open()
            current, spec = self._current, self._current_spec
            if current is None or spec is None:
                raise EngineNotReadyError("No model version to restart.")
            if current is self._host:
                self._host.restart(wait=wait)
                return
            try:
                if self._options.blue_green or spec.backend == "server":
                    self._blue_green(current, spec, drain=current.serving is not None, note="restart")
                else:
                    self._stop_then_load(current, spec, spec, False, "setting")
            finally:
                with self._changed:
                    self._switching_to, self._switch_note, self._holding, self._incoming = None, "", False, None
                    self._changed.notify_all()

    def wait_retired(self, timeout: float | None = None) -> bool:
        """Wait until every old engine a switch left draining has stopped; True if none is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self._retiring.values()):
            thread.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        return not any(t.is_alive() for t in self._retiring.values())

    def shutdown(self) -> None:
        """Abort what is in flight and stop every engine (the in-process one, managed servers; external servers'
        clients are closed); safe to call more than once."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
            current, incoming, self._current, self._incoming = self._current, self._incoming, None, None
            canary, canary_incoming, self._canary, self._canary_spec = self._canary, self._canary_incoming, None, None
            self._changed.notify_all()
        for client in (canary_incoming, canary, incoming, current):
            if client is not None and client is not self._host:
                client.shutdown()
        if self._host is not None:
            self._host.shutdown()
        self.wait_retired(timeout=60)

    # -- internals --

    def _drop_canary(self, *, drain: bool) -> bool:
        with self._changed:
            client, self._canary, self._canary_spec = self._canary, None, None
            self._changed.notify_all()
        if client is None:
            return False
        self._retire(client, drain=drain)
        return True

    def _adopt_canary(self, spec: ModelSpec, old: EngineClient | None, drain: bool) -> bool:
        """A switch to the version the canary serves: its engine becomes the current one (no second start) and
        ``old`` is retired. False (nothing changed) when the canary serves another version or is not up; a canary
        of ``spec`` that died is stopped, and the switch starts ``spec`` the usual way."""
        with self._changed:
            canary, canary_spec = self._canary, self._canary_spec
        if canary is None or canary_spec != spec:
            return False
        if canary.status().state != "ready":
            logger.warning("the canary of %s is not ready (%s); starting %s afresh", spec.name,
                           canary.status().state, spec.name)
            self._drop_canary(drain=False)
            return False
        with self._changed:
            self._canary, self._canary_spec = None, None
        self._adopt(canary, spec)
        if old is not None:
            self._retire(old, drain=drain)
        logger.info("switch to %s adopted the canary's engine", spec.name)
        return True

    def _check_open(self) -> None:
        if self._closed:
            raise EngineNotReadyError("The engine has been shut down.")

    def _set(self, **fields: object) -> None:
        with self._changed:
            for name, value in fields.items():
                setattr(self, name, value)
            self._changed.notify_all()

    def _switch_in_process(self, spec: ModelSpec, drain: bool) -> None:
        """The one host switches itself (it holds requests); the host is made on the first in-process version."""
        if self._host is None:
            from engine.host import EngineHost

            self._host = EngineHost(self._config)
        self._set(_current=self._host, _failure=None)
        try:
            self._host.switch(spec, drain=drain)
        finally:
            served = self._host.serving
            with self._changed:
                self._current_spec = served if served is not None else self._current_spec
                if self._current_spec is None:  # the first version failed: the host says so
                    self._current_spec = spec

    def _bring_up(self, spec: ModelSpec) -> EngineClient:
        """Start (or connect) ``spec``'s engine beside whatever serves; returns it once it serves."""
        if spec.backend == "in-process":
            from engine.host import EngineHost

            if self._host is None:
                self._host = EngineHost(self._config)
            self._set(_incoming=self._host)
            self._host.switch(spec)  # its old engine (if any) was stopped when serving moved to a server
            return self._host
        client = backends.start_client(spec, self._config, self._options, wait=False)
        self._set(_incoming=client)
        self._await_ready(client, spec)
        return client

    def _await_ready(self, client: EngineClient, spec: ModelSpec, *, warm_up: bool = False) -> None:
        """Wait until a freshly started ``client`` serves (and, with ``warm_up``, answers one warm-up request); on
        any failure it is stopped, and one that never became ready raises :class:`ServerStartError`."""
        try:
            backends.wait_ready(client, self._options.start_timeout_s)
            if warm_up:
                self._warm_up(client, spec)
        except EngineNotReadyError as exc:
            client.shutdown()
            raise ServerStartError(f"{spec.name} did not start within {self._options.start_timeout_s:.0f} s: "
                                   f"{exc}") from None
        except BaseException:
            client.shutdown()
            raise

    @staticmethod
    def _warm_up(client: EngineClient, spec: ModelSpec) -> None:
        """One short request before any chat goes to a freshly started engine: the first request of an engine pays
        for cold caches, and one that cannot answer at all must not take over (ModelLoadError: nothing changes)."""
        try:
            stream = client.stream_prompt("Hello", SamplingSettings(temperature=0.0, max_tokens=1))
            for _ in stream:
                pass
        except EngineError as exc:
            raise ModelLoadError(f"Model version {spec.name} started but could not answer a first request: "
                                 f"{exc}") from None

    def _blue_green(self, old: EngineClient, spec: ModelSpec, drain: bool, note: str = "") -> None:
        old_name = self._current_spec.name if self._current_spec else None
        message = (f"Restarting {spec.name}: a fresh engine starts beside the old one, which answers chats "
                   f"meanwhile (no chat waits)." if note == "restart" else switch_message("blue-green", spec.name,
                                                                                          old_name))
        self._set(_switching_to=spec, _switch_note=message)
        new = self._bring_up(spec)  # raises: nothing changed, the old engine keeps serving
        try:
            self._warm_up(new, spec)
        except EngineError:
            if new is not self._host:
                new.shutdown()
            else:
                self._host.stop_engine(drain=False)
            raise
        self._adopt(new, spec)
        self._retire(old, drain=drain)

    def _stop_then_load(self, old: EngineClient, old_spec: ModelSpec | None, spec: ModelSpec, drain: bool,
                        why: str) -> None:
        self._set(_switching_to=spec, _switch_note=switch_message(why, spec.name), _holding=True)
        self._stop(old, drain=drain)
        self._set(_current=None)
        try:
            new = self._bring_up(spec)
        except EngineError as exc:
            if old_spec is None:
                self._set(_failure=HostStatus("failed", spec.name, f"{spec.name} failed to start", error=str(exc)))
                raise
            logger.warning("could not start %s (%s); starting %s again", spec.name, exc, old_spec.name)
            try:
                again = self._bring_up(old_spec)
            except EngineError as again_exc:
                self._set(_failure=HostStatus("failed", old_spec.name, f"{old_spec.name} failed to start",
                                              error=str(again_exc)))
                raise ModelLoadError(f"Model version {spec.name} failed to start ({exc}), and starting "
                                     f"{old_spec.name} again failed too ({again_exc}).") from None
            self._adopt(again, old_spec)
            raise ModelLoadError(f"Model version {spec.name} failed to start ({exc}); still serving "
                                 f"{old_spec.name}.") from None
        self._adopt(new, spec)

    def _start_first(self, spec: ModelSpec) -> None:
        """Nothing serves yet (or a first start failed): start ``spec``."""
        self._set(_switching_to=spec, _switch_note="")
        try:
            new = self._bring_up(spec)
        except EngineError as exc:
            self._set(_failure=HostStatus("failed", spec.name, f"{spec.name} failed to start", error=str(exc)),
                      _current_spec=spec)
            raise
        self._adopt(new, spec)

    def _adopt(self, new: EngineClient, spec: ModelSpec) -> None:
        """New requests go to ``new`` from now on (unless the engine was shut down meanwhile: then it is ended)."""
        with self._changed:
            closed = self._closed
            if not closed:
                self._current, self._current_spec, self._incoming, self._failure = new, spec, None, None
                self._switching_to = None
                self._changed.notify_all()
        if closed:
            if new is not self._host:
                new.shutdown()
            raise EngineNotReadyError("The engine has been shut down.")

    def _retire(self, old: EngineClient, *, drain: bool) -> None:
        """Drain and stop ``old`` in the background (requests already go elsewhere)."""
        thread = threading.Thread(target=self._stop, args=(old,), kwargs={"drain": drain},
                                  name="engine-retire", daemon=True)
        self._retiring[id(old)] = thread
        thread.start()

    def _stop(self, client: EngineClient, *, drain: bool) -> None:
        """Let ``client``'s in-flight requests finish (``drain``, up to ``drain_timeout_s``), cut the rest with
        ``finish_reason == "switch"``, then stop it: the in-process engine is stopped (its host kept), a managed
        server's process ended, an external server's client closed."""
        try:
            if client is self._host:
                self._host.stop_engine(drain=drain, reason="switch")
                return
            if drain:
                deadline = time.monotonic() + self._config.drain_timeout_s
                with self._changed:
                    while any(r.client is client for r in self._routes.values()):
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._changed.wait(min(left, DRAIN_POLL_S))
            with self._changed:
                cut = [r for r in self._routes.values() if r.client is client]
                for route in cut:
                    route.cut = "switch"
            if cut:
                logger.warning("cutting %d in-flight requests off the old engine", len(cut))
            for route in cut:
                client.cancel(route.request_id)
            client.shutdown()
        except Exception:
            logger.exception("stopping the old engine failed")


if TYPE_CHECKING:  # the type checker proves that both served engines satisfy the protocol; nothing at run time
    from engine.host import EngineHost as _Host

    _SERVED: tuple[type[ServedEngine], ...] = (SwitchingEngine, _Host)
    _CLIENTS: tuple[type[EngineClient], ...] = (SwitchingEngine,)
