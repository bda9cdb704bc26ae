"""Switching the served version under load: no request fails, each is answered by a version that serves.

Two real tiny engines (the same weights under two version names). A slow engine step, injected at the host's
own seam (``Worker._step``), keeps answers in flight long enough to overlap a switch.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import worker as worker_module
from engine.errors import EngineError, ModelLoadError
from engine.host import EngineHost
from engine.types import ChatMessage, GenerationResult, HostConfig, HostStatus, ModelSpec, SamplingSettings

pytestmark = pytest.mark.engine  # every test here starts real vLLM engines

HELLO = [ChatMessage("user", "Where is my order?")]


def exactly(n: int) -> SamplingSettings:
    return SamplingSettings(temperature=0.0, max_tokens=n, ignore_eos=True)


@pytest.fixture(scope="module")
def two_versions(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelSpec, ModelSpec]:
    other = Path(shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("tiny-b") / "model"))
    return ModelSpec(name="tiny-a", source=str(tiny_model_dir)), ModelSpec(name="tiny-b", source=str(other))


@pytest.fixture
def slow_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    real_step = worker_module.Worker._step

    def slow_step(self: worker_module.Worker, engine: object) -> list[object]:
        time.sleep(0.01)
        return real_step(self, engine)

    monkeypatch.setattr(worker_module.Worker, "_step", slow_step)


def _host(spec: ModelSpec, **config: object) -> EngineHost:
    return EngineHost.start(spec, HostConfig(kv_cache_gib=0.25, **config), wait=True)  # type: ignore[arg-type]


class Load:
    """``n`` chat loops on their own threads until stopped; every result and error is kept."""

    def __init__(self, host: EngineHost, n: int, tokens: int) -> None:
        self.host, self.tokens = host, tokens
        self.results: list[tuple[float, GenerationResult]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(n)]

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                stream = self.host.stream_chat(HELLO, exactly(self.tokens))
                for _ in stream:
                    pass
                with self._lock:
                    self.results.append((started, stream.result))
            except BaseException as exc:  # noqa: BLE001 - every failure is what the test looks for
                with self._lock:
                    self.errors.append(exc)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)


def test_switch_under_eight_streaming_chats_fails_no_request(
    two_versions: tuple[ModelSpec, ModelSpec], slow_steps: None
) -> None:
    a, b = two_versions
    host = _host(a, drain_timeout_s=30.0)
    try:
        with Load(host, 8, tokens=24) as load:
            time.sleep(1.0)
            host.switch(b)
            switched_at = time.monotonic()
            assert host.serving == b
            time.sleep(1.0)
        assert load.errors == []
        versions = {r.model_version for _, r in load.results}
        assert versions == {"tiny-a", "tiny-b"}
        # Nothing was cut: every answer ran to its length, on the version that took it.
        assert all(not r.aborted and r.output_tokens == 24 for _, r in load.results)
        assert all(r.model_version == "tiny-b" for started, r in load.results if started > switched_at)
    finally:
        host.shutdown()


def test_in_flight_answer_past_the_drain_time_is_cut_with_reason_switch(
    two_versions: tuple[ModelSpec, ModelSpec], slow_steps: None
) -> None:
    a, b = two_versions
    host = _host(a, drain_timeout_s=0.3)
    try:
        stream = host.stream_chat(HELLO, exactly(2000))
        first = next(stream)
        host.switch(b)
        rest = list(stream)
        result = stream.result
        assert result.aborted and result.finish_reason == "switch"
        assert result.model_version == "tiny-a"
        assert result.text == first + "".join(rest)
        assert 0 < result.output_tokens < 2000
        after = host.stream_chat(HELLO, exactly(3))
        list(after)
        assert after.result.model_version == "tiny-b"
    finally:
        host.shutdown()


def test_requests_during_a_switch_to_a_broken_version_are_answered_by_the_old_one(
    two_versions: tuple[ModelSpec, ModelSpec], tmp_path: Path, slow_steps: None
) -> None:
    a, _ = two_versions
    host = _host(a)
    try:
        with Load(host, 4, tokens=8) as load:
            time.sleep(0.5)
            with pytest.raises(ModelLoadError, match="still serving tiny-a"):
                host.switch(ModelSpec(name="broken", source=str(tmp_path / "missing")))
            time.sleep(0.5)
        assert load.errors == []
        assert load.results and {r.model_version for _, r in load.results} == {"tiny-a"}
    finally:
        host.shutdown()


def _status_seen_during(host: EngineHost, action: threading.Thread) -> Iterator[str | None]:
    action.start()
    while action.is_alive():
        yield host.status().switching_to
        time.sleep(0.01)


class _GatedWorker:
    """A stand-in engine (at the host's own seam, ``_launch``) whose load ends when the test releases it."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.settled = self  # the host waits on ``settled.wait()``
        self.reached, self.release = threading.Event(), threading.Event()
        self.ready = False

    def wait(self, timeout: float | None = None) -> bool:
        self.reached.set()
        self.release.wait(60)
        self.ready = True
        return True

    def status(self) -> HostStatus:
        if self.ready:
            return HostStatus("ready", self.spec.name, "ready")
        return HostStatus("loading", self.spec.name, "loading weights", progress=0.5)

    def accepts(self) -> bool:
        return self.ready

    def stop(self, **kwargs: object) -> None:
        pass


def test_a_host_that_served_nothing_reports_its_first_version_loading_not_stopped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    host = EngineHost(HostConfig())
    assert (host.status().state, host.status().model_version) == ("stopped", None)
    worker = _GatedWorker(ModelSpec(name="first", source="/nowhere"))
    monkeypatch.setattr(host, "_launch", lambda spec: worker)
    switching = threading.Thread(target=host.switch, args=(worker.spec,))
    switching.start()
    try:
        assert worker.reached.wait(60)
        status = host.status()
        assert (status.state, status.model_version, status.switching_to, status.progress) == (
            "loading", "first", "first", 0.5)
    finally:
        worker.release.set()
        switching.join(60)
    assert (host.status().state, host.status().model_version, host.status().switching_to) == ("ready", "first", None)
    host.shutdown()


def test_status_names_the_target_while_a_switch_is_under_way(two_versions: tuple[ModelSpec, ModelSpec]) -> None:
    a, b = two_versions
    host = _host(a)
    errors: list[EngineError] = []

    def switch() -> None:
        try:
            host.switch(b)
        except EngineError as exc:
            errors.append(exc)

    try:
        seen = set(_status_seen_during(host, threading.Thread(target=switch)))
        assert errors == []
        assert "tiny-b" in seen
        assert host.status().switching_to is None and host.status().model_version == "tiny-b"
    finally:
        host.shutdown()


def test_a_switch_requested_while_the_first_version_still_loads_fails_no_request(
    two_versions: tuple[ModelSpec, ModelSpec],
) -> None:
    a, b = two_versions
    host = EngineHost.start(a, HostConfig(kv_cache_gib=0.25), wait=False)
    try:
        host.switch(b)  # the loading worker is stopped; it must not start taking requests afterwards
        stream = host.stream_chat(HELLO, exactly(3))
        list(stream)
        assert stream.result.model_version == "tiny-b" and not stream.result.aborted
    finally:
        host.shutdown()
