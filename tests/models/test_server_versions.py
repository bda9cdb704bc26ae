"""Versions on vLLM servers (services/registry.py): registering a ``server`` version asks every server whether it
serves the model and records what it reports; a server that later reports another model is refused like a changed
weight file; ``managed-server`` versions are checked like in-process ones. Bad input is one clear line, on the
service, the CLI and the Models page.

The tests that talk to a server use the session's real vLLM server (``vllm_server``: the tiny model served as
``tiny-server`` behind an API key); the others need none (a closed port is a real unreachable server).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import app_pages, cli
from console.services import registry
from console.services.access import Principal
from console.services.errors import AccessDenied, InvalidInput, ModelUnavailable
from console.ui import UiSession
from db import audit as audit_q
from db import model_versions as versions_q
from tests.conftest import console_env

SERVED = "tiny-server"  # the name the session's vLLM server serves the tiny model under
SESSION_KEY = "llm_console_session"


def _closed_port_url() -> str:
    """A loopback URL nothing listens on (the port was free a moment ago): a real unreachable server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _with_key(ctx: Any, key: str | None) -> Any:
    ctx.settings = dataclasses.replace(ctx.settings, server_api_key=key, server_api_key_file=None)
    return ctx


def _register_server(ctx: Any, actor: Principal, name: str = "srv-v1", **fields: Any) -> registry.ModelVersionView:
    return registry.register(ctx, actor, name=name, backend="server", **fields)


def _stored(ctx: Any, name: str) -> Any:
    with ctx.db.session(readonly=True) as s:
        return versions_q.get_model_version_by_name(s, name)


def _events(ctx: Any, action: str) -> list[Any]:
    with ctx.db.session(readonly=True) as s:
        return list(audit_q.iter_events(s, action=action))


# --- refused before any server is asked --------------------------------------------------------------------------

_NINE = "\n".join(f"http://vllm-{i}:8000" for i in range(9))


@pytest.mark.parametrize(("urls", "message"), [
    pytest.param("ftp://vllm-1:8000", "ftp://vllm-1:8000", id="ftp"),
    pytest.param("http://", "http://", id="no-host"),
    pytest.param("http://bob:s3cret-pw@vllm-1:8000", "***@vllm-1:8000", id="credentials"),
    pytest.param("http://vllm-1:8000/?model=x", "http://vllm-1:8000/?model=x", id="query"),
    pytest.param("http://vllm-1:8000#frag", "http://vllm-1:8000#frag", id="fragment"),
    pytest.param("", "The server URL is required", id="empty"),
    pytest.param(" \n \n", "The server URL is required", id="blank-lines"),
    pytest.param(["http://vllm-1:8000", "http://vllm-1:8000/v1/"], "http://vllm-1:8000 is given twice",
                 id="twice"),
    pytest.param(_NINE, "at most 8 server URLs; 9 were given", id="nine"),
    pytest.param("http://vllm-1:8000/" + "x" * 500, "at most 500 characters; one has 519", id="too-long"),
])
def test_a_bad_server_url_is_refused_naming_it_and_nothing_is_registered(ctx, make_user, urls, message) -> None:  # noqa: ANN001
    with pytest.raises(InvalidInput) as refused:
        _register_server(ctx, make_user("ada", "admin"), server_urls=urls)
    text = str(refused.value)
    assert message in text and "\n" not in text
    assert "s3cret-pw" not in text  # a password typed into a URL is not echoed
    assert _stored(ctx, "srv-v1") is None and _events(ctx, "model.register") == []


@pytest.mark.parametrize(("fields", "message"), [
    pytest.param({"engine_args": '{"tensor_parallel_size": 2}'}, "Engine arguments of a server version are set "
                 "where the server starts; leave them empty.", id="engine-args"),
    pytest.param({"engine_args": {"max_num_seqs": 4}}, "Engine arguments of a server version", id="engine-args-dict"),
    pytest.param({"dtype": "bfloat16"}, "The dtype of a server version is set where the server starts",
                 id="dtype"),
    pytest.param({"quantization": "awq"}, "The quantization of a server version", id="quantization"),
    pytest.param({"revision": "abc123"}, "The revision of a server version", id="revision"),
    pytest.param({"max_model_len": 1024}, "The server reports its max length", id="max-context"),
    pytest.param({"source": "org/model"}, "A server version has no source", id="source"),
    pytest.param({"base": "tiny-a"}, "A LoRA adapter of a server version is served by its server", id="lora"),
    pytest.param({"server_model": "two words"}, "The served model name", id="served-name-with-a-space"),
])
def test_what_the_server_owns_is_refused_for_a_server_version(ctx, make_user, fields, message) -> None:  # noqa: ANN001
    fields.setdefault("server_urls", ["http://vllm-1:8000"])
    with pytest.raises(InvalidInput) as refused:
        _register_server(ctx, make_user("ada", "admin"), **fields)
    assert message in str(refused.value)
    assert _stored(ctx, "srv-v1") is None


def test_an_unknown_backend_is_refused_listing_the_three(ctx, make_user) -> None:  # noqa: ANN001
    with pytest.raises(InvalidInput, match=r"Unknown backend 'cluster': choose in-process, managed-server or server\."):
        registry.register(ctx, make_user("ada", "admin"), name="x", source="org/model", backend="cluster")


def test_server_urls_belong_to_a_server_version_only(ctx, make_user) -> None:  # noqa: ANN001
    with pytest.raises(InvalidInput, match="belong to a vLLM server version"):
        registry.register(ctx, make_user("ada", "admin"), name="x", source="org/model",
                          server_urls=["http://vllm-1:8000"])


def test_an_unreachable_server_is_refused_naming_it(ctx, make_user) -> None:  # noqa: ANN001
    url = _closed_port_url()
    with pytest.raises(InvalidInput) as refused:
        _register_server(ctx, make_user("ada", "admin"), server_urls=[url])
    assert url in str(refused.value) and "Every server of a version must answer" in str(refused.value)
    assert _stored(ctx, "srv-v1") is None


def test_an_unreadable_key_file_is_refused_with_the_settings_message(ctx, make_user, tmp_path) -> None:  # noqa: ANN001
    ctx.settings = dataclasses.replace(ctx.settings, server_api_key=None, server_api_key_file=tmp_path / "no-such-key")
    with pytest.raises(InvalidInput, match="LLM_CONSOLE_SERVER_API_KEY_FILE: cannot read"):
        _register_server(ctx, make_user("ada", "admin"), server_urls=[_closed_port_url()])


@pytest.mark.parametrize("role", ["operator", "reviewer", "analyst"])
def test_only_an_admin_registers_and_a_refusal_is_audited(ctx, make_user, role) -> None:  # noqa: ANN001
    with pytest.raises(AccessDenied):
        _register_server(ctx, make_user("olivia", role), server_urls=[_closed_port_url()])
    [denied] = _events(ctx, "access.denied")
    assert denied.actor == "olivia" and "models.register" in json.dumps(denied.details)
    assert _stored(ctx, "srv-v1") is None


def test_a_managed_server_version_is_checked_and_fingerprinted_like_an_in_process_one(ctx, make_user,  # noqa: ANN001
                                                                                       tiny_model_dir) -> None:
    ada = make_user("ada", "admin")
    view = registry.register(ctx, ada, name="managed-v1", source=str(tiny_model_dir), backend="managed-server",
                             max_model_len=256, engine_args={"max_num_seqs": 4})
    plain = registry.register(ctx, ada, name="plain-v1", source=str(tiny_model_dir))
    assert (view.backend, plain.backend) == ("managed-server", "in-process")
    assert view.fingerprint == plain.fingerprint and len(view.fingerprint or "") == 64
    spec = registry.loadable_spec(ctx, "managed-v1")
    assert (spec.backend, spec.source, spec.max_model_len, dict(spec.engine_args)) == (
        "managed-server", str(tiny_model_dir.resolve()), 256, {"max_num_seqs": 4})
    assert spec.server_urls == () and spec.model_on_server == "managed-v1"
    [event, _] = _events(ctx, "model.register")
    assert (event.details["backend"], event.details["server_urls"]) == ("managed-server", None)
    bad = tiny_model_dir.parent / "not-a-model"
    bad.mkdir(exist_ok=True)
    with pytest.raises(InvalidInput, match="holds no model files|cannot read the model config"):
        registry.register(ctx, ada, name="managed-v2", source=str(bad), backend="managed-server")


def test_a_lora_adapter_is_served_where_its_base_is(ctx, make_user, tiny_model_dir, tmp_path) -> None:  # noqa: ANN001
    ada = make_user("ada", "admin")
    registry.register(ctx, ada, name="managed-base", source=str(tiny_model_dir), backend="managed-server")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (adapter / "adapter_model.safetensors").write_bytes(b"0" * 64)
    view = registry.register(ctx, ada, name="managed-lora", source=str(adapter), base="managed-base")
    assert view.backend == "managed-server"
    spec = registry.loadable_spec(ctx, "managed-lora")
    assert spec.backend == "managed-server" and spec.lora is not None and spec.model_on_server == "managed-lora"
    with pytest.raises(InvalidInput, match="the backend of managed-base is managed server, not in-process"):
        registry.register(ctx, ada, name="lora-2", source=str(adapter), base="managed-base", backend="in-process")


# --- against the session's real vLLM server ----------------------------------------------------------------------


def test_registering_a_server_version_records_what_the_server_reports_and_never_the_key(ctx, make_user,  # noqa: ANN001
                                                                                         vllm_server) -> None:
    _with_key(ctx, vllm_server.api_key)
    view = _register_server(ctx, make_user("ada", "admin"), server_urls=[vllm_server.url + "/v1/"],
                            server_model=SERVED, description="the shared server")
    assert (view.backend, view.server_urls, view.server_model) == ("server", (vllm_server.url,), SERVED)
    assert view.server_info is not None and view.server_info["model"] == SERVED
    assert view.server_info["max_model_len"] == view.max_model_len == 512
    assert view.source == view.server_info["root"]  # the model the server loaded, as it reports it
    identity = json.dumps({k: view.server_info[k] for k in ("model", "root", "max_model_len")}, sort_keys=True)
    assert view.fingerprint == hashlib.sha256(identity.encode()).hexdigest()
    [event] = _events(ctx, "model.register")
    assert event.details["backend"] == "server" and event.details["server_urls"] == [vllm_server.url]
    assert event.details["server_info"] == view.server_info
    assert vllm_server.api_key not in json.dumps(event.details)
    ctx.db.dispose()
    assert vllm_server.api_key.encode() not in Path(ctx.settings.database_url.removeprefix("sqlite:///")).read_bytes()
    spec = registry.loadable_spec(ctx, "srv-v1")
    assert (spec.backend, spec.server_urls, spec.model_on_server, spec.max_model_len) == (
        "server", (vllm_server.url,), SERVED, 512)


def test_a_server_that_does_not_serve_the_model_is_refused(ctx, make_user, vllm_server) -> None:  # noqa: ANN001
    _with_key(ctx, vllm_server.api_key)
    with pytest.raises(InvalidInput) as refused:
        _register_server(ctx, make_user("ada", "admin"), name="wrong-model", server_urls=[vllm_server.url])
    assert SERVED in str(refused.value) and "wrong-model" in str(refused.value)  # the name defaults to the version's
    assert _stored(ctx, "wrong-model") is None


@pytest.mark.parametrize("key", ["not-the-key", None], ids=["wrong-key", "no-key"])
def test_a_server_that_refuses_the_key_is_refused(ctx, make_user, vllm_server, key) -> None:  # noqa: ANN001
    _with_key(ctx, key)
    with pytest.raises(InvalidInput) as refused:
        _register_server(ctx, make_user("ada", "admin"), server_urls=[vllm_server.url], server_model=SERVED)
    assert "API key" in str(refused.value) and vllm_server.url in str(refused.value)
    assert "not-the-key" not in str(refused.value)
    assert _stored(ctx, "srv-v1") is None


def test_every_server_must_answer_at_registration(ctx, make_user, vllm_server) -> None:  # noqa: ANN001
    _with_key(ctx, vllm_server.api_key)
    dead = _closed_port_url()
    with pytest.raises(InvalidInput) as refused:
        _register_server(ctx, make_user("ada", "admin"), server_urls=[vllm_server.url, dead], server_model=SERVED)
    assert dead in str(refused.value) and vllm_server.url not in str(refused.value)


def _edit_row(ctx: Any, name: str, **values: Any) -> None:
    with ctx.db.session() as s:
        row = versions_q.get_model_version_by_name(s, name)
        for key, value in values.items():
            setattr(row, key, value)


@pytest.mark.parametrize(("change", "shown"), [
    pytest.param({"root": "/models/another-model"}, "root /models/another-model", id="root"),
    pytest.param({"max_model_len": 4096}, "max length 4096", id="max-length"),
    pytest.param({"model": "tiny-other"}, "model tiny-other", id="model"),
])
def test_a_server_that_now_reports_another_model_is_refused_like_changed_files(ctx, make_user, vllm_server,  # noqa: ANN001
                                                                               change, shown) -> None:
    _with_key(ctx, vllm_server.api_key)
    view = _register_server(ctx, make_user("ada", "admin"), server_urls=[vllm_server.url], server_model=SERVED)
    assert view.server_info is not None
    # One server cannot honestly change its model under a test: the recorded side changes instead.
    _edit_row(ctx, "srv-v1", server_info={**view.server_info, **change})
    with pytest.raises(ModelUnavailable) as refused:
        registry.loadable_spec(ctx, "srv-v1")
    text = str(refused.value)
    assert text.startswith(f"The server at {vllm_server.url} now serves model {SERVED} (root {view.server_info['root']}, "
                           "max length 512); version srv-v1 was registered with ")
    assert shown in text and text.endswith("Register the new model under a new version name.")


def test_a_server_version_is_loadable_while_one_of_its_servers_answers(ctx, make_user, vllm_server) -> None:  # noqa: ANN001
    _with_key(ctx, vllm_server.api_key)
    _register_server(ctx, make_user("ada", "admin"), server_urls=[vllm_server.url], server_model=SERVED)
    dead, also_dead = _closed_port_url(), _closed_port_url()
    _edit_row(ctx, "srv-v1", server_urls=[dead, vllm_server.url])
    assert registry.loadable_spec(ctx, "srv-v1").server_urls == (dead, vllm_server.url)
    _edit_row(ctx, "srv-v1", server_urls=[dead, also_dead])
    with pytest.raises(ModelUnavailable) as refused:
        registry.loadable_spec(ctx, "srv-v1")
    assert str(refused.value).startswith("No server of version srv-v1 serves it now:")
    assert dead in str(refused.value) and also_dead in str(refused.value)
    _with_key(ctx, "rotated-elsewhere")
    _edit_row(ctx, "srv-v1", server_urls=[vllm_server.url])
    with pytest.raises(ModelUnavailable, match="API key"):
        registry.loadable_spec(ctx, "srv-v1")


def test_production_moves_to_a_server_version_only_while_its_servers_serve_it(ctx, make_user, vllm_server) -> None:  # noqa: ANN001
    from console.services import serving

    _with_key(ctx, vllm_server.api_key)
    admin = make_user("ada", "admin")
    _register_server(ctx, admin, server_urls=[vllm_server.url], server_model=SERVED)
    _edit_row(ctx, "srv-v1", server_urls=[_closed_port_url()])
    with pytest.raises(ModelUnavailable, match="^No server of version srv-v1 serves it now:"):
        serving.serve(ctx, admin, "srv-v1", "first version")  # refused at once, not by a failed switch later
    with ctx.db.session(readonly=True) as s:
        assert versions_q.get_alias(s, versions_q.PRODUCTION) is None  # nothing moved
    _edit_row(ctx, "srv-v1", server_urls=[vllm_server.url])
    assert serving.serve(ctx, admin, "srv-v1", "first version") == "srv-v1"
    assert serving.desired_state(ctx).version == "srv-v1"


# --- the command line --------------------------------------------------------------------------------------------


@pytest.fixture
def shell_env(tmp_path, monkeypatch):  # noqa: ANN001
    for key, value in console_env(tmp_path / "data").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LLM_CONSOLE_SERVER_API_KEY", raising=False)
    monkeypatch.delenv("LLM_CONSOLE_SERVER_API_KEY_FILE", raising=False)
    return tmp_path


@pytest.mark.parametrize(("args", "message"), [
    pytest.param(["org/model", "--backend", "server", "--url", "http://vllm-1:8000"], "has no SOURCE", id="source"),
    pytest.param(["org/model", "--url", "http://vllm-1:8000"], "--url and --server-model are for --backend server",
                 id="url-without-backend"),
    pytest.param([], "give SOURCE", id="no-source"),
    pytest.param(["org/model", "--source", "org/other"], "give SOURCE once", id="source-twice"),
    pytest.param(["--backend", "server"], "The server URL is required", id="no-url"),
    pytest.param(["--backend", "server", "--url", "ftp://vllm-1"], "ftp://vllm-1", id="ftp"),
    pytest.param(["--backend", "server", "--url", "http://vllm-1:8000", "--engine-args", '{"max_num_seqs": 2}'],
                 "Engine arguments of a server version", id="engine-args"),
])
def test_cli_register_errors_are_one_line(shell_env, capsys, args, message) -> None:  # noqa: ANN001
    assert cli.main(["model", "register", "srv-x", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llm-console: error:") and message in err[0], err


def test_cli_an_unknown_backend_is_an_argument_error(shell_env, capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["model", "register", "srv-x", "--backend", "cluster"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "invalid choice: 'cluster'" in err[0]


def test_cli_registers_and_lists_server_and_managed_versions(shell_env, monkeypatch, capsys, vllm_server,  # noqa: ANN001
                                                            tiny_model_dir) -> None:
    key_file = shell_env / "server.key"
    key_file.write_text(vllm_server.api_key + "\n")
    key_file.chmod(0o600)
    monkeypatch.setenv("LLM_CONSOLE_SERVER_API_KEY_FILE", str(key_file))
    assert cli.main(["model", "register", "srv-cli", "--backend", "server", "--url", vllm_server.url,
                     "--server-model", SERVED]) == 0
    assert cli.main(["model", "register", "managed-cli", "--backend", "managed-server", "--source",
                     str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert f"registered model version srv-cli (server) from {SERVED} at {vllm_server.url}" in out
    assert "registered model version managed-cli (managed-server) from" in out
    assert vllm_server.api_key not in out
    assert cli.main(["model", "list"]) == 0
    lines = {line.split("\t")[0].strip(" *"): line.split("\t") for line in capsys.readouterr().out.splitlines()}
    assert lines["srv-cli"][2:4] == ["server", f"{SERVED} at {vllm_server.url}"]
    assert lines["managed-cli"][2] == "managed-server"
    assert cli.main(["model", "list", "--json"]) == 0
    out = capsys.readouterr().out
    listing = {v["name"]: v for v in json.loads(out[out.index("["):])}
    assert (listing["srv-cli"]["backend"], listing["srv-cli"]["server_urls"], listing["srv-cli"]["server_model"]) == (
        "server", [vllm_server.url], SERVED)
    assert listing["managed-cli"]["backend"] == "managed-server" and listing["managed-cli"]["server_urls"] == []


# --- the Models page ---------------------------------------------------------------------------------------------


@pytest.fixture
def page(tmp_path, monkeypatch, ctx, make_user, tiny_model_dir):  # noqa: ANN001
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny-a"))
    registry.register(ctx, Principal.shell(ctx), name="tiny-a", source=str(copy))
    at = AppTest.from_file(str(app_pages.PAGES_DIR / "models.py"), default_timeout=60)
    at.session_state[SESSION_KEY] = UiSession(principal=make_user("ada", "admin"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    yield at
    st.cache_resource.clear()


def _round(at: AppTest) -> int:
    return at.session_state[SESSION_KEY].models.round


def _server_form(at: AppTest, name: str, urls: str, model: str = "") -> None:
    r = _round(at)
    at.radio(key=f"model_backend_{r}").set_value("server")
    at.run()
    at.text_input(key=f"model_name_{r}").input(name)
    at.text_area(key=f"model_server_urls_{r}").input(urls)
    at.text_input(key=f"model_server_model_{r}").input(model)
    at.button(key=f"FormSubmitter:register_server_{r}-Register").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def test_the_server_form_shows_only_its_own_fields_and_no_key(page: AppTest) -> None:
    r = _round(page)
    page.radio(key=f"model_backend_{r}").set_value("server")
    page.run()
    keys = {w.key for w in [*page.text_input, *page.text_area, *page.selectbox, *page.number_input]}
    assert {f"model_name_{r}", f"model_server_urls_{r}", f"model_server_model_{r}"} <= keys
    assert not keys & {f"model_source_{r}", f"model_dtype_{r}", f"model_engine_args_{r}", f"model_base_{r}"}
    assert not [w for w in page.text_input if "key" in w.label.lower()]  # the API key is a setting
    assert "LLM_CONSOLE_SERVER_API_KEY_FILE" in (page.text_area(key=f"model_server_urls_{r}").help or "")


@pytest.mark.parametrize(("urls", "message"), [
    pytest.param("ftp://vllm-1:8000", "ftp://vllm-1:8000", id="ftp"),
    pytest.param("", "The server URL is required", id="empty"),
    pytest.param(_NINE, "at most 8 server URLs", id="nine"),
])
def test_the_server_form_refuses_bad_urls_in_one_line_and_keeps_the_input(page: AppTest, ctx, urls,  # noqa: ANN001
                                                                          message) -> None:
    r = _round(page)
    _server_form(page, "srv-page", urls)
    shown = [e.value.replace("\\", "").replace("[:]", ":") for e in page.error]
    assert [text for text in shown if message in text], shown
    assert _round(page) == r and page.text_input(key=f"model_name_{r}").value == "srv-page"
    assert _stored(ctx, "srv-page") is None


def test_the_server_form_registers_resets_and_the_table_shows_the_backend(page: AppTest, ctx, monkeypatch,  # noqa: ANN001
                                                                           vllm_server) -> None:
    monkeypatch.setenv("LLM_CONSOLE_SERVER_API_KEY", vllm_server.api_key)
    st.cache_resource.clear()  # the page's settings are read again, with the key
    page.run()
    r = _round(page)
    _server_form(page, "srv-page", vllm_server.url + "\n", SERVED)
    assert any("Registered srv-page (vLLM server, fingerprint" in s.value.replace("\\", "") for s in page.success), \
        [e.value for e in page.error]
    assert _round(page) == r + 1 and page.radio(key=f"model_backend_{r + 1}").value == "in-process"
    table = next(d.value for d in page.dataframe if "backend" in d.value.columns)
    rows = {row["name"]: row for row in table.to_dict("records")}
    assert (rows["srv-page"]["backend"], rows["srv-page"]["servers"], rows["srv-page"]["served model"]) == (
        "vLLM server", vllm_server.url, SERVED)
    assert rows["tiny-a"]["backend"] == "in-process" and rows["tiny-a"]["servers"] == ""
    assert len(rows["srv-page"]["fingerprint"]) == 12
    assert _stored(ctx, "srv-page").server_model == SERVED
