"""Desired state and the reconciler: serve, aliases, retire, restart, fingerprints; real tiny engines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from console.services import registry, serving
from console.services.access import Principal
from console.services.errors import AccessDenied, InvalidInput, ModelUnavailable, NotFound
from db import audit as audit_q
from db import model_versions as versions_q
from engine.fingerprint import changed_files, fingerprint_dir
from engine.host import EngineHost
from engine.types import ChatMessage, HostConfig, HostStatus, ModelSpec, SamplingSettings


def _register(ctx, name: str, source: Path, *, fingerprint: bool = True) -> None:  # noqa: ANN001
    fp = fingerprint_dir(source) if fingerprint else None
    with ctx.db.session() as s:
        versions_q.register_model_version(
            s, name=name, source=str(source), actor="test", dtype="float32",
            fingerprint=fp.sha256 if fp else None, fingerprint_files=fp.as_records() if fp else None,
        )


@pytest.fixture
def versions(ctx, tiny_model_dir: Path, tmp_path: Path) -> dict[str, Path]:  # noqa: ANN001
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny-b"))
    _register(ctx, "tiny-a", tiny_model_dir)
    _register(ctx, "tiny-b", copy)
    serving.serve(ctx, Principal.shell(ctx), "tiny-a", "first version")
    return {"tiny-a": tiny_model_dir, "tiny-b": copy}


def _events(ctx, action: str) -> list[dict]:  # noqa: ANN001
    with ctx.db.session() as s:
        return [e.details for e in audit_q.iter_events(s, action=action)]


def test_fingerprint_names_the_file_that_changed(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "m"))
    fp = fingerprint_dir(copy)
    assert len(fp.sha256) == 64 and any(f.path == "config.json" for f in fp.files)
    assert changed_files(fp.files, copy) == []
    config = json.loads((copy / "config.json").read_text())
    config["rms_norm_eps"] = 1e-3
    (copy / "config.json").write_text(json.dumps(config))
    assert changed_files(fp.as_records(), copy) == ["config.json"]
    assert fingerprint_dir(copy).sha256 != fp.sha256


def test_an_approved_promotion_moves_production_and_records_who_and_why(ctx, versions, make_user) -> None:  # noqa: ANN001
    from console.services import promotion

    ada, bob = make_user("ada", "admin"), make_user("bob", "admin")
    assert serving.desired_state(ctx).version == "tiny-a"
    with pytest.raises(AccessDenied, match="approved promotion"):  # one admin alone (issue 21)
        serving.serve(ctx, ada, "tiny-b", "better answers")
    request = promotion.request_promotion(ctx, ada, "tiny-b", "production", "better answers")
    promotion.approve(ctx, bob, request.id, "ok", "no evaluation in this test")
    desired = serving.desired_state(ctx)
    assert desired.version == "tiny-b"
    history = registry.alias_history(ctx, ada)
    assert (history[0].alias, history[0].from_version, history[0].to_version) == ("production", "tiny-a", "tiny-b")
    assert history[0].actor == "bob" and history[0].reason == f"promotion #{request.id}: better answers"
    assert _events(ctx, "model.alias")[-1] == {"alias": "production", "from": "tiny-a", "to": "tiny-b",
                                               "reason": f"promotion #{request.id}: better answers"}


@pytest.mark.parametrize(
    ("name", "reason", "error", "message"),
    [
        pytest.param("tiny-b", "", InvalidInput, "reason", id="no-reason"),
        pytest.param("tiny-b", "x" * 1001, InvalidInput, "the limit is 1,000", id="reason-too-long"),
        pytest.param("nope", "why", NotFound, "nope", id="unknown-version"),
    ],
)
def test_serve_refuses_bad_requests_and_stores_nothing(ctx, versions, name, reason, error, message) -> None:  # noqa: ANN001
    before = serving.desired_state(ctx)
    with pytest.raises(error, match=message):
        serving.serve(ctx, Principal.shell(ctx), name, reason)
    assert serving.desired_state(ctx) == before


class _ServingHost:
    """A stand-in host at our own seam that reports serving one version."""

    def __init__(self, name: str) -> None:
        self.name = name

    def status(self) -> HostStatus:
        return HostStatus("ready", self.name, f"Serving {self.name}")


def test_serving_the_production_version_again_retries_only_when_it_is_not_served(ctx, versions) -> None:  # noqa: ANN001
    ctx.host_factory = lambda: _ServingHost("tiny-a")
    with pytest.raises(InvalidInput, match="already holds the production alias and is being served"):
        serving.serve(ctx, Principal.shell(ctx), "tiny-a", "again")
    ctx.host_factory = lambda: _ServingHost("tiny-b")  # the switch to tiny-a failed; tiny-b still serves
    before = serving.desired_state(ctx)
    serving.serve(ctx, Principal.shell(ctx), "tiny-a", "retry the switch")
    after = serving.desired_state(ctx)
    assert after.version == "tiny-a" and after.move_id != before.move_id  # a new move: the reconciler retries


def test_only_admins_serve(ctx, versions, make_user) -> None:  # noqa: ANN001
    for role in ("operator", "reviewer", "analyst"):
        with pytest.raises(AccessDenied):
            serving.serve(ctx, make_user(f"u-{role}", role), "tiny-b", "why")
    assert serving.desired_state(ctx).version == "tiny-a"


def test_a_version_whose_files_changed_is_refused_naming_the_file(ctx, versions) -> None:  # noqa: ANN001
    (versions["tiny-b"] / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelUnavailable, match="tokenizer.json"):
        serving.serve(ctx, Principal.shell(ctx), "tiny-b", "try")
    with pytest.raises(ModelUnavailable, match="tokenizer.json"):
        registry.loadable_spec(ctx, "tiny-b")


def test_aliases_move_and_a_retired_version_cannot_be_served(ctx, versions, make_user) -> None:  # noqa: ANN001
    admin = make_user("ada", "admin")
    registry.set_alias(ctx, admin, "tiny-b", "staging", "for QA")
    with ctx.db.session() as s:
        assert versions_q.version_for_alias(s, "staging").name == "tiny-b"
    with pytest.raises(InvalidInput, match="lower-case"):
        registry.set_alias(ctx, admin, "tiny-b", "Bad Alias!", "x")
    with pytest.raises(InvalidInput, match="production alias moves"):
        registry.set_alias(ctx, admin, "tiny-b", "production", "x")
    with pytest.raises(InvalidInput, match="production version"):
        registry.retire(ctx, admin, "tiny-a", "old")
    registry.retire(ctx, admin, "tiny-b", "superseded")
    with ctx.db.session() as s:
        assert versions_q.get_alias(s, "staging") is None
    with pytest.raises(InvalidInput, match="retired"):
        serving.serve(ctx, admin, "tiny-b", "again")


class _EmptyHost:
    """A stand-in host that serves nothing yet and records the versions it is asked to switch to."""

    def __init__(self) -> None:
        self.switched: list[str] = []

    def status(self) -> HostStatus:
        name = self.switched[-1] if self.switched else None
        return HostStatus("ready" if name else "stopped", name, "No model loaded." if name is None else "ready")

    def switch(self, spec: ModelSpec) -> None:
        self.switched.append(spec.name)


def test_reconciler_waits_quietly_for_the_default_version_until_it_is_registered_and_served(
    ctx, tiny_model_dir: Path  # noqa: ANN001
) -> None:
    host = _EmptyHost()
    reconciler = serving.Reconciler(ctx, host)  # type: ignore[arg-type]
    assert reconciler.run_once() is None  # support-demo-v1 is still being built: nothing to switch to, no failure
    assert _events(ctx, "model.switch_failed") == [] and serving.last_switch_problem(ctx) is None
    _register(ctx, ctx.settings.default_model, tiny_model_dir)  # the background build registers it ...
    assert serving.ensure_production(ctx) == ctx.settings.default_model  # ... and gives it production
    outcome = reconciler.run_once()
    assert outcome is not None and outcome.ok and host.switched == [ctx.settings.default_model]


HELLO = [ChatMessage("user", "hi")]


@pytest.mark.engine
def test_reconciler_switches_a_running_host_records_it_and_does_not_retry_a_failed_load(
    ctx, versions, tmp_path: Path  # noqa: ANN001
) -> None:
    host = EngineHost.start(registry.loadable_spec(ctx, "tiny-a"), HostConfig(kv_cache_gib=0.25), wait=True)
    try:
        reconciler = serving.Reconciler(ctx, host)
        assert reconciler.run_once() is None  # already serving what is desired

        serving.serve(ctx, Principal.shell(ctx), "tiny-b", "new weights", break_glass="the test moves production from the shell")
        outcome = reconciler.run_once()
        assert outcome is not None and outcome.ok and (outcome.from_version, outcome.to_version) == ("tiny-a", "tiny-b")
        assert host.serving is not None and host.serving.name == "tiny-b"
        switch = _events(ctx, "model.switch")[-1]
        assert (switch["from"], switch["to"], switch["requested_by"], switch["reason"]) == (
            "tiny-a", "tiny-b", Principal.shell(ctx).username, "new weights")
        assert switch["seconds"] > 0

        # A version whose config vLLM cannot read: the switch fails, tiny-b keeps serving, no retry loop.
        broken = Path(shutil.copytree(versions["tiny-a"], tmp_path / "broken"))
        _register(ctx, "broken", broken, fingerprint=False)
        (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
        serving.serve(ctx, Principal.shell(ctx), "broken", "try it", break_glass="the test moves production from the shell")
        failed = reconciler.run_once()
        assert failed is not None and not failed.ok and "broken" in (failed.error or "")
        assert host.serving is not None and host.serving.name == "tiny-b"
        stream = host.stream_chat(HELLO, SamplingSettings(temperature=0.0, max_tokens=3, ignore_eos=True))
        list(stream)
        assert stream.result.model_version == "tiny-b"
        assert _events(ctx, "model.switch_failed")[-1]["serving"] == "tiny-b"
        problem = serving.last_switch_problem(ctx)
        assert problem is not None and problem.action == "switch" and problem.version == "broken"
        assert reconciler.run_once() is None

        serving.request_restart(ctx, Principal.shell(ctx), "engine looks stuck")
        restarted = reconciler.run_once()
        assert restarted is not None and restarted.action == "restart" and restarted.ok
        assert _events(ctx, "model.restart")[-1]["to"] == "tiny-b"
        assert _events(ctx, "model.restart")[-1]["reason"] == "engine looks stuck"
        assert serving.last_switch_problem(ctx) is None
        with ctx.db.session() as s:
            assert audit_q.verify_chain(s).ok
    finally:
        host.shutdown()


def test_spec_of_passes_engine_arguments_through(ctx, versions) -> None:  # noqa: ANN001
    spec = registry.loadable_spec(ctx, "tiny-a")
    assert isinstance(spec, ModelSpec) and spec.name == "tiny-a" and spec.dtype == "float32"


@pytest.mark.engine
def test_eight_chats_through_a_switch_none_fails_and_each_is_stored_with_the_version_that_answered(
    ctx, versions, make_user  # noqa: ANN001
) -> None:
    import threading
    import time

    from console.services import chat as chat_svc
    from db import chat as chat_q

    host = EngineHost.start(registry.loadable_spec(ctx, "tiny-a"), HostConfig(kv_cache_gib=0.25), wait=True)
    ctx.host_factory = lambda: host
    operator = make_user("olivia", "operator")
    outcomes, errors = [], []
    stop = threading.Event()

    def chat() -> None:
        while not stop.is_set():
            try:
                turn = chat_svc.start_turn(ctx, operator, None, "Where is my order?", temperature=0.0, top_p=1.0,
                                           max_tokens=24)
                "".join(turn.deltas())
                outcomes.append(turn.outcome)
            except Exception as exc:  # noqa: BLE001 - every failure is what the test looks for
                errors.append(exc)

    threads = [threading.Thread(target=chat) for _ in range(8)]
    try:
        reconciler = serving.Reconciler(ctx, host)
        for t in threads:
            t.start()
        time.sleep(1.0)
        serving.serve(ctx, Principal.shell(ctx), "tiny-b", "switch under load", break_glass="the test switches from the shell")
        switched = reconciler.run_once()
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(120)
    finally:
        stop.set()
        host.shutdown()
    assert switched is not None and switched.ok
    assert errors == []
    assert {o.model_version for o in outcomes} == {"tiny-a", "tiny-b"}
    with ctx.db.session() as s:
        stored = {o.exchange_id: chat_q.get_exchange(s, o.exchange_id) for o in outcomes}
        assert audit_q.verify_chain(s).ok
    assert all(stored[o.exchange_id].model_version == o.model_version for o in outcomes)
    assert all(stored[o.exchange_id].status in ("ok", "aborted") for o in outcomes)


def test_a_lora_adapter_registers_on_a_base_and_serves_through_it(ctx, versions, tmp_path: Path) -> None:  # noqa: ANN001
    from engine.demo.tiny import build_tiny_lora

    adapter = build_tiny_lora(versions["tiny-a"], tmp_path / "adapter", rank=8)
    view = registry.register(ctx, Principal.shell(ctx), name="tiny-a-lora", source=str(adapter), revision=None, dtype=None,
                                   max_model_len=None, engine_args={}, description="tuned", base="tiny-a")
    assert view.base == "tiny-a" and view.fingerprint is not None
    spec = registry.loadable_spec(ctx, "tiny-a-lora")
    assert spec.source == str(versions["tiny-a"]) and spec.lora is not None and spec.lora.rank == 8
    assert spec.lora.path == str(adapter) and spec.name == "tiny-a-lora"
    listed = {v.name: v for v in registry.list_versions(ctx, Principal.shell(ctx))}
    assert listed["tiny-a-lora"].base == "tiny-a"
    (adapter / "adapter_model.safetensors").write_bytes(b"changed")
    with pytest.raises(ModelUnavailable, match="adapter_model.safetensors"):
        registry.loadable_spec(ctx, "tiny-a-lora")


@pytest.mark.parametrize(
    ("make", "base", "message"),
    [
        pytest.param(lambda d: d, "tiny-a", "not a LoRA adapter", id="no-adapter-config"),
        pytest.param(lambda d: (d / "adapter_config.json").write_text('{"peft_type": "PREFIX"}') or d, "tiny-a",
                     "no peft_type LORA", id="not-lora"),
        pytest.param(lambda d: (d / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4096}') or d,
                     "tiny-a", "rank 4096", id="rank-too-high"),
        pytest.param(lambda d: (d / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}') or d,
                     "nope", "No model version named", id="unknown-base"),
    ],
)
def test_bad_lora_registrations_are_refused_and_nothing_is_stored(ctx, versions, tmp_path, make, base,  # noqa: ANN001
                                                                  message) -> None:

    folder = tmp_path / "adapter"
    folder.mkdir()
    make(folder)
    with pytest.raises(InvalidInput, match=message):
        registry.register(ctx, Principal.shell(ctx), name="bad-lora", source=str(folder), revision=None, dtype=None,
                                max_model_len=None, engine_args={}, description=None, base=base)
    assert "bad-lora" not in {v.name for v in registry.list_versions(ctx, Principal.shell(ctx))}
