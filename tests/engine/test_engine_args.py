"""Engine arguments cannot run code (issue 21, item 2): one allowlist in engine/, checked when a version is
registered and again whenever a spec is loaded; ``trust_remote_code`` is a setting of the installation."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from console.services import evaluation as evaluation_svc
from console.services import registry
from console.services.access import Principal
from console.services.compare import CandidatePool
from console.services.errors import ConsoleError, InvalidInput
from console.settings import Settings
from db.tables import ModelVersion
from engine import child_wire
from engine.child_client import ChildEngineClient
from engine.errors import EngineArgsError, ModelLoadError
from engine.evals.runner import ChildConfig, EvaluationRunError, run_suite_in_child
from engine.evals.suite import load_builtin
from engine.host import EngineHost
from engine.types import ALLOWED_ENGINE_ARGS, HostConfig, ModelSpec, check_engine_args
from engine.worker import engine_args_for
from tests.conftest import console_env

# The arguments the issue names, each with a value an attacker would give it.
DANGEROUS: dict[str, Any] = {
    "trust_remote_code": True,
    "worker_extension_cls": "evil.module.Extension",
    "logits_processors": ["evil.module:Processor"],
    "otlp_traces_endpoint": "http://collector.example.com:4317",
    "kv_transfer_config": {"kv_connector": "SharedStorageConnector", "kv_connector_extra_config": {}},
    "download_dir": "/tmp/elsewhere",
    "allowed_local_media_path": "/",
}


def _register(ctx: Any, actor: Any, name: str, source: str, engine_args: Any) -> registry.ModelVersionView:
    return registry.register(ctx, actor, name=name, source=source, revision=None, dtype=None, max_model_len=None,
                               engine_args=engine_args, description=None)


def _tamper(ctx: Any, name: str, engine_args: dict[str, Any]) -> None:
    """What a database writer could do: set a registered version's engine arguments without the console."""
    with ctx.db.session() as s:
        s.execute(update(ModelVersion).where(ModelVersion.name == name).values(engine_args=engine_args))


@pytest.fixture
def tampered(ctx: Any, make_user: Any, tiny_model_dir: Path) -> ModelSpec:
    """The spec of a version registered cleanly whose row then got ``trust_remote_code`` written into it."""
    _register(ctx, make_user("ada", "admin"), "tiny-tampered", str(tiny_model_dir), {"max_num_seqs": 4})
    _tamper(ctx, "tiny-tampered", {"max_num_seqs": 4, "trust_remote_code": True})
    return registry.loadable_spec(ctx, "tiny-tampered")


# --- registration ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DANGEROUS), ids=list(DANGEROUS))
def test_registering_with_an_engine_argument_outside_the_allowlist_is_refused_naming_it(
    ctx: Any, make_user: Any, name: str
) -> None:
    admin = make_user("ada", "admin")
    with pytest.raises(InvalidInput) as refused:
        _register(ctx, admin, f"risky-{name.replace('_', '-')}", "org/model", json.dumps({name: DANGEROUS[name]}))
    message = str(refused.value)
    assert name in message and "not allowed" in message
    assert "max_num_seqs" in message and "gpu_memory_utilization" in message  # says which are allowed
    assert registry.list_versions(ctx, Principal.shell(ctx)) == []


def test_trust_remote_code_in_engine_arguments_points_to_the_installation_setting(ctx: Any, make_user: Any) -> None:
    with pytest.raises(InvalidInput, match="LLM_CONSOLE_TRUST_REMOTE_CODE"):
        _register(ctx, make_user("ada", "admin"), "hub-trusting", "org/model", {"trust_remote_code": False})


def test_the_cli_registration_path_refuses_them_too(ctx: Any) -> None:
    with pytest.raises(InvalidInput, match="worker_extension_cls"):
        registry.register(ctx, Principal.shell(ctx), name="cli-risky", source="org/model", revision=None, dtype=None,
                                max_model_len=None, engine_args='{"worker_extension_cls": "x.Y"}', description=None)


def test_allowed_engine_arguments_are_registered_as_given(ctx: Any, make_user: Any) -> None:
    args = {"enforce_eager": True, "max_num_seqs": 8, "gpu_memory_utilization": 0.8, "kv_cache_dtype": "auto",
            "enable_prefix_caching": True, "tensor_parallel_size": 1, "seed": 7}
    view = _register(ctx, make_user("ada", "admin"), "hub-tuned", "org/model", json.dumps(args))
    assert view.engine_args == args


def test_an_allowed_argument_with_a_structured_value_is_refused(ctx: Any, make_user: Any) -> None:
    with pytest.raises(InvalidInput, match="max_num_seqs"):
        _register(ctx, make_user("ada", "admin"), "hub-odd", "org/model", {"max_num_seqs": {"__class__": "x"}})


def test_registering_a_model_that_needs_its_own_code_is_refused_without_running_it(
    ctx: Any, make_user: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "custom-code-model"
    model.mkdir()
    for path in tiny_model_dir.iterdir():
        if path.is_file():
            (model / path.name).write_bytes(path.read_bytes())
    marker = tmp_path / "model-code-ran"
    (model / "configuration_custom.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig\n\nclass CustomConfig(LlamaConfig):\n    model_type = 'custom_llama'\n"
    )
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig"}
    config["model_type"] = "custom_llama"  # an architecture transformers does not ship: only its own code reads it
    (model / "config.json").write_text(json.dumps(config))
    assert not ctx.settings.trust_remote_code
    with pytest.raises(InvalidInput, match="LLM_CONSOLE_TRUST_REMOTE_CODE is off"):
        _register(ctx, make_user("ada", "admin"), "custom-code", str(model), None)
    assert not marker.exists()


# --- the engine's own check --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DANGEROUS), ids=list(DANGEROUS))
def test_the_engine_check_refuses_each_dangerous_argument_by_name(name: str) -> None:
    with pytest.raises(EngineArgsError) as refused:
        check_engine_args({"max_num_seqs": 4, name: DANGEROUS[name]}, version="v1")
    message = str(refused.value)
    assert isinstance(refused.value, ModelLoadError)  # shown as a load failure, like any other
    assert f"not allow: {name}." in message and "Model version v1" in message and "max_num_seqs" in message


def test_the_allowlist_names_only_real_engine_arguments_and_none_of_the_dangerous_ones() -> None:
    from vllm.engine.arg_utils import EngineArgs

    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    assert set(ALLOWED_ENGINE_ARGS) <= fields
    assert not set(ALLOWED_ENGINE_ARGS) & (set(DANGEROUS) | {
        "worker_cls", "scheduler_cls", "distributed_executor_backend", "hf_overrides", "tokenizer", "load_format",
        "speculative_config", "served_model_name", "disable_log_stats", "model_impl", "tokenizer_mode",
        "compilation_config", "model_loader_extra_config", "hf_config_path", "kv_events_config"})
    assert all(why.strip() for why in ALLOWED_ENGINE_ARGS.values())


def test_engine_arguments_for_vllm_take_trust_remote_code_from_the_host_config_only() -> None:
    spec = ModelSpec(name="v1", source="/models/v1", engine_args={"max_num_seqs": 8, "enforce_eager": True})
    off = engine_args_for(spec, HostConfig(), on_cpu=True)
    assert off["trust_remote_code"] is False and off["max_num_seqs"] == 8 and off["enforce_eager"] is True
    assert engine_args_for(spec, HostConfig(trust_remote_code=True), on_cpu=True)["trust_remote_code"] is True
    with pytest.raises(EngineArgsError, match="trust_remote_code"):
        engine_args_for(dataclasses.replace(spec, engine_args={"trust_remote_code": True}), HostConfig(), on_cpu=True)


# --- a row written straight into the database is refused at every load -------------------------------------


def test_a_tampered_row_is_refused_when_the_console_loads_it_and_the_failure_is_shown(tampered: ModelSpec) -> None:
    host = EngineHost.start(tampered, HostConfig(kv_cache_gib=0.25), wait=False)
    try:
        with pytest.raises(ModelLoadError, match="trust_remote_code"):
            host.wait_ready(timeout=120)
        status = host.status()
        assert status.state == "failed" and "trust_remote_code" in (status.error or "")
        assert "Allowed: " in (status.error or "")
    finally:
        host.shutdown()


def test_a_tampered_row_is_refused_by_the_side_by_side_pool_before_a_process_starts(tampered: ModelSpec) -> None:
    pool = CandidatePool(kv_cache_gib=0.25)
    try:
        with pytest.raises(EngineArgsError, match="trust_remote_code"):
            pool.engine_for(tampered)
        with pytest.raises(EngineArgsError, match="trust_remote_code"):
            ChildEngineClient.start(tampered, HostConfig(kv_cache_gib=0.25), python="/nonexistent/python")
    finally:
        pool.shutdown()


def test_the_child_process_refuses_a_bad_spec_on_its_own(tiny_model_dir: Path) -> None:
    """The child's side of the protocol (``python -m engine.child``), run here: its host checks again."""
    from engine import child

    spec = ModelSpec(name="bad-child", source=str(tiny_model_dir),
                     engine_args={"logits_processors": ["evil.module:Processor"]})
    first = child_wire.start_message(spec, HostConfig(kv_cache_gib=0.25))
    out = io.StringIO()
    assert child.main(io.StringIO(json.dumps(first) + "\n"), out) == 1
    event = json.loads(out.getvalue().splitlines()[0])
    assert event["event"] == "failed" and "does not allow: logits_processors" in event["error"]


def test_a_tampered_row_is_refused_by_an_evaluation_and_the_evaluation_fails_with_the_reason(
    ctx: Any, tampered: ModelSpec
) -> None:
    with pytest.raises(ConsoleError, match="trust_remote_code"):
        evaluation_svc.run_evaluation_blocking(ctx, Principal.shell(ctx), "tiny-tampered", compare_latency=False)
    with pytest.raises(EvaluationRunError, match="trust_remote_code"):
        run_suite_in_child(tampered, load_builtin("standard"), ChildConfig())


# --- the installation setting ------------------------------------------------------------------------------


def test_trust_remote_code_is_an_installation_setting_off_by_default_that_reaches_the_engine_config(
    tmp_path: Path,
) -> None:
    from console import resources

    default = Settings.from_env(console_env(tmp_path))
    assert default.trust_remote_code is False
    assert resources.host_config(default).trust_remote_code is False
    assert HostConfig().trust_remote_code is False and ChildConfig().trust_remote_code is False
    on = Settings.from_env(console_env(tmp_path, LLM_CONSOLE_TRUST_REMOTE_CODE="true"))
    assert on.trust_remote_code is True and resources.host_config(on).trust_remote_code is True
    assert "LLM_CONSOLE_TRUST_REMOTE_CODE" in {env for env, _value, _help in on.describe()}


def test_evaluations_take_trust_remote_code_from_the_installation_not_the_caller(
    ctx: Any, make_user: Any, tiny_model_dir: Path
) -> None:
    _register(ctx, make_user("ada", "admin"), "tiny-eval", str(tiny_model_dir), None)
    job, _view = evaluation_svc._queue(ctx, "cli", None, "tiny-eval", None,
                                       ChildConfig(trust_remote_code=True), compare_latency=False)
    assert job.child.trust_remote_code is False


# --- the registration page ---------------------------------------------------------------------------------


def test_the_registration_form_says_which_arguments_are_allowed_and_shows_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctx: Any, make_user: Any
) -> None:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from console import app_pages
    from console.ui import UiSession

    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    at = AppTest.from_file(str(app_pages.PAGES_DIR / "models.py"), default_timeout=60)
    at.session_state["llm_console_session"] = UiSession(principal=make_user("ada", "admin"))
    at.run()
    try:
        assert not at.exception, [e.value for e in at.exception]
        r = at.session_state["llm_console_session"].models.round
        box = at.text_area(key=f"model_engine_args_{r}")
        assert "max_num_seqs" in (box.help or "") and "LLM_CONSOLE_TRUST_REMOTE_CODE" in (box.help or "")
        at.text_input(key=f"model_name_{r}").input("hub-risky")
        at.text_input(key=f"model_source_{r}").input("org/model")
        box.input('{"trust_remote_code": true}')
        at.button(key=f"FormSubmitter:register_model_{r}-Register").click()
        at.run()
        shown = [e.value.replace("\\", "") for e in at.error]  # the page escapes Markdown
        assert any("not allowed: trust_remote_code" in text for text in shown), shown
        assert registry.list_versions(ctx, Principal.shell(ctx)) == []
    finally:
        st.cache_resource.clear()


@pytest.mark.parametrize("trusted", [False, True], ids=["off", "on"])
def test_the_evaluation_child_is_told_the_installation_setting(tmp_path: Path, trusted: bool) -> None:
    """``ChildConfig.python`` is our seam: a stand-in interpreter that reports its command line and the first
    protocol line it was given (the version and its host config) as its failure."""
    import sys

    fake = tmp_path / "python"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nfirst = json.loads(sys.stdin.readline())\n"
                    "print(json.dumps({'event': 'failed', 'error': 'argv: ' + ' '.join(sys.argv[1:]) + ' trust: '"
                    " + json.dumps(first['host']['trust_remote_code']) + ' nice: ' + str(first['nice'])}))\n")
    fake.chmod(0o755)
    spec = ModelSpec(name="v1", source=str(tmp_path), engine_args={"max_num_seqs": 4})
    with pytest.raises(EvaluationRunError) as failed:
        run_suite_in_child(spec, load_builtin("standard"), ChildConfig(python=str(fake), trust_remote_code=trusted))
    assert "argv: -m engine.child" in str(failed.value)
    assert f"trust: {json.dumps(trusted)}" in str(failed.value) and "nice: 5" in str(failed.value)


def test_the_child_process_run_as_a_program_refuses_a_bad_spec_on_its_own(tiny_model_dir: Path) -> None:
    """``python -m engine.child`` given a first line no parent checked: its host refuses before loading, and its
    stdout holds the protocol's lines only."""
    import subprocess
    import sys

    from engine.child_client import PACKAGE_ROOT

    spec = ModelSpec(name="bad-eval", source=str(tiny_model_dir), engine_args={"otlp_traces_endpoint": "http://x:1"})
    first = child_wire.start_message(spec, HostConfig(kv_cache_gib=0.25, trust_remote_code=True))
    done = subprocess.run(  # noqa: S603 - our own module
        [sys.executable, "-m", "engine.child"], input=json.dumps(first) + "\n",
        cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 1
    assert [e["event"] for e in events] == ["failed"]
    assert "does not allow: otlp_traces_endpoint" in events[0]["error"]
