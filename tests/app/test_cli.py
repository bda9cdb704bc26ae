"""`llm-console`: set-up, users, model versions, audit verification; bad arguments give one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from console import cli
from console.services.access import Principal
from tests.conftest import STRONG_PASSWORD

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_CONSOLE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LLM_CONSOLE_ADMIN_PASSWORD", raising=False)
    return tmp_path


def test_init_creates_the_database_and_prints_a_generated_admin_password_once(env, capsys):
    assert cli.main(["init", "--skip-models"]) == 0
    out = capsys.readouterr().out
    assert "created the first admin account 'admin'" in out
    password = out.split("shown only this once): ")[1].split()[0]
    assert len(password) >= 12
    assert cli.main(["init", "--skip-models"]) == 0
    again = capsys.readouterr().out
    assert "created the first admin" not in again and password not in again
    from console.services import auth
    from console.services.context import AppContext
    from console.settings import Settings
    from db.config import DbConfig
    from db.database import Database

    settings = Settings.from_env()
    ctx = AppContext(settings, Database(DbConfig(settings.database_url)))
    assert auth.login(ctx, "admin", password).roles == frozenset({"admin", "operator"})


def test_init_takes_the_admin_password_from_the_environment(env, monkeypatch, capsys):
    monkeypatch.setenv("LLM_CONSOLE_ADMIN_PASSWORD", STRONG_PASSWORD)
    assert cli.main(["init", "--skip-models"]) == 0
    out = capsys.readouterr().out
    assert STRONG_PASSWORD not in out and "LLM_CONSOLE_ADMIN_PASSWORD" in out


def test_user_add_and_list(env, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(STRONG_PASSWORD + "\n"))
    assert cli.main(["user", "add", "alice", "--role", "operator", "--role", "analyst", "--password-stdin"]) == 0
    assert cli.main(["user", "list"]) == 0
    assert "alice\tanalyst,operator\tactive" in capsys.readouterr().out


def _ctx():
    from console.services.context import AppContext
    from console.settings import Settings
    from db.config import DbConfig
    from db.database import Database

    settings = Settings.from_env()
    return AppContext(settings, Database(DbConfig(settings.database_url)))


def _add_alice(monkeypatch):
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(STRONG_PASSWORD + "\n"))
    assert cli.main(["user", "add", "alice", "--role", "operator", "--password-stdin"]) == 0


def _cli_events(ctx, action):
    """The events of ``action`` the command line wrote: as the shell principal, shell:<OS user>."""
    from console.services.access import os_user
    from db import audit as audit_q

    with ctx.db.session(readonly=True) as s:
        return [e for e in audit_q.iter_events(s, action=action) if e.actor == f"shell:{os_user()}"]


def test_user_unlock_clears_the_lock_and_is_audited(env, monkeypatch, capsys):
    from console.services import auth
    from console.services.errors import LoginFailed

    _add_alice(monkeypatch)
    ctx = _ctx()
    for _ in range(ctx.settings.lockout_threshold):
        with pytest.raises(LoginFailed):
            auth.login(ctx, "alice", "not the password")
    with pytest.raises(LoginFailed):
        auth.login(ctx, "alice", STRONG_PASSWORD)  # locked
    assert cli.main(["user", "unlock", "alice"]) == 0
    assert "unlocked alice" in capsys.readouterr().out
    [event] = _cli_events(ctx, "user.unlock")
    assert event.details["username"] == "alice" and event.details["failed_login_count"] == 5
    assert auth.login(ctx, "alice", STRONG_PASSWORD).username == "alice"


def test_user_reset_password_sets_it_unlocks_and_ends_open_sessions(env, monkeypatch, capsys):
    from console.services import access, auth
    from console.services.errors import LoginFailed, SessionEnded

    _add_alice(monkeypatch)
    ctx = _ctx()
    open_session = auth.login(ctx, "alice", STRONG_PASSWORD)
    for _ in range(ctx.settings.lockout_threshold):
        with pytest.raises(LoginFailed):
            auth.login(ctx, "alice", "not the password")
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("a brand new long password\n"))
    assert cli.main(["user", "reset-password", "alice", "--password-stdin"]) == 0
    out = capsys.readouterr().out
    assert "new password set for alice" in out and "brand new" not in out
    assert [e.details["username"] for e in _cli_events(ctx, "user.password")] == ["alice"]
    with pytest.raises(SessionEnded):
        access.refresh_principal(ctx, open_session)
    with pytest.raises(LoginFailed):
        auth.login(ctx, "alice", STRONG_PASSWORD)
    assert auth.login(ctx, "alice", "a brand new long password").username == "alice"


@pytest.mark.parametrize("args,stdin,message", [
    (["user", "unlock", "nobody"], "", "No user named 'nobody'"),
    (["user", "reset-password", "nobody", "--password-stdin"], "a brand new long password\n", "No user named"),
    (["user", "reset-password", "alice", "--password-stdin"], "short\n", "at least 12 characters"),
    (["user", "reset-password", "alice"], "", "--password-stdin"),
], ids=["unlock-unknown", "reset-unknown", "reset-short", "reset-no-stdin-flag"])
def test_user_unlock_and_reset_password_refuse_bad_input_with_one_line(env, monkeypatch, capsys, args, stdin,
                                                                       message):
    _add_alice(monkeypatch)
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(stdin))
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llm-console: error:") and message in err[0]


class _Started(Exception):
    pass


def _start_console(monkeypatch, project, secret):
    import os

    if secret is not None:
        (project / ".streamlit").mkdir(exist_ok=True)
        (project / ".streamlit" / "secrets.toml").write_text(
            f'[auth]\nredirect_uri = "http://localhost:8501/oauth2callback"\ncookie_secret = "{secret}"\n'
            'client_id = "console"\nclient_secret = "s"\n')
    monkeypatch.setenv("HOME", str(project / "home"))
    monkeypatch.setattr(cli, "PROJECT_ROOT", project)
    monkeypatch.chdir(project)

    def execv(*args):
        raise _Started

    monkeypatch.setattr(os, "execv", execv)


@pytest.mark.parametrize("secret,starts", [
    ("replace-with-a-long-random-string", False),
    ("too-short-secret", False),
    ("k3Jx9vQ2mT7pW4sL8nB6cR1yH5gF0dZa", True),
    (None, True),
], ids=["placeholder", "short", "good", "no-sso"])
def test_run_refuses_to_start_with_sso_and_a_weak_cookie_secret(env, monkeypatch, capsys, secret, starts):
    _start_console(monkeypatch, env, secret)
    if starts:
        with pytest.raises(_Started):
            cli.main(["run"])
    else:
        assert cli.main(["run"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("llm-console: error: Single sign-on is configured")


def _ctx():
    from console.services.context import AppContext
    from console.settings import Settings
    from db.config import DbConfig
    from db.database import Database

    settings = Settings.from_env()
    return AppContext(settings, Database(DbConfig(settings.database_url)))


class _Popen:
    """Records the background build `run` would start instead of training a real demo model."""

    started: list[list[str]] = []

    def __init__(self, command, **kwargs):
        _Popen.started.append(list(command))
        self.pid = 2**22 + 4321  # no such process


@pytest.mark.parametrize("flags,wanted,builds", [
    ([], True, ["support-demo-v1", "support-demo-v2"]),
    (["--skip-models"], False, []),
], ids=["default", "skip-models"])
def test_init_trains_nothing_records_whether_the_demo_models_are_wanted_and_run_builds_them(
        env, monkeypatch, capsys, flags, wanted, builds):
    from console.services import demo_builds

    assert cli.main(["init", *flags]) == 0
    out = capsys.readouterr().out
    assert not (env / "models").exists() or not any((env / "models").iterdir())  # nothing trained in init
    assert demo_builds.demo_models_wanted(_ctx()) is wanted
    if wanted:
        assert "will be built in the background by `llm-console run`" in out
        assert "serves support-demo-v1 as soon as it is built" in out and "--wait-for-all" in out
    else:
        assert "none wanted" in out
    _Popen.started = []
    monkeypatch.setattr(demo_builds.subprocess, "Popen", _Popen)
    _start_console(monkeypatch, env, None)
    with pytest.raises(_Started):
        cli.main(["run"])
    out = capsys.readouterr().out
    assert [c[-1] for c in _Popen.started] == (["build-demo-models"] if builds else [])
    assert [v.name for v in demo_builds.demo_build_status(_ctx(), Principal.shell(_ctx()))] == builds
    assert ("building support-demo-v1, support-demo-v2 in the background" in out) is bool(builds)


def test_init_refuses_skip_models_with_wait_for_all(env, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["init", "--skip-models", "--wait-for-all"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_model_register_and_list(env, tiny_model_dir, capsys):
    # A real model directory: registering reads its config.
    assert cli.main(["model", "register", "local-v1", str(tiny_model_dir), "--max-model-len", "2048",
                     "--engine-args", '{"tensor_parallel_size": 2}']) == 0
    assert cli.main(["model", "register", "hub-v1", "meta-llama/Llama-3.1-8B-Instruct", "--dtype", "bfloat16"]) == 0
    assert cli.main(["model", "list", "--json"]) == 0
    out = capsys.readouterr().out
    listing = __import__("json").loads(out[out.index("["):])
    assert {v["name"]: v["engine_args"] for v in listing} == {"local-v1": {"tensor_parallel_size": 2}, "hub-v1": {}}


@pytest.mark.parametrize("args,message", [
    (["model", "register", "x", "/no/such/dir"], "neither an existing local directory"),
    (["model", "register", "x", "org/model", "--engine-args", "{not json"], "JSON object"),
    (["model", "register", "x", "org/model", "--engine-args", '{"bogus": 1}'], "Unknown vLLM engine argument"),
    (["model", "register", "bad name!", "org/model"], "version name"),
    (["user", "add", "bob", "--role", "operator", "--password-stdin"], "at least 12 characters"),
], ids=["missing-dir", "bad-json", "unknown-engine-arg", "bad-name", "short-password"])
def test_bad_input_is_one_clear_line_and_a_non_zero_exit(env, monkeypatch, capsys, args, message):
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("short\n"))
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llm-console: error:") and message in err[0]


@pytest.mark.parametrize("args", [["frobnicate"], ["user", "add"], ["bench", "engine", "--concurrency", "0"],
                                  ["run", "--port", "abc"], []],
                         ids=["unknown-command", "missing-username", "zero-concurrency", "bad-port", "nothing"])
def test_bad_arguments_print_one_line_and_exit_2(env, args):
    proc = subprocess.run([sys.executable, "-m", "console.cli", *args], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0]


def test_audit_verify_reports_an_intact_chain_and_a_tampered_one(env, capsys):
    assert cli.main(["init", "--skip-models"]) == 0
    assert (env / "audit.key").stat().st_mode & 0o777 == 0o600
    assert cli.main(["audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert "audit chain intact" in out and "signed checkpoint(s) match" in out
    import sqlite3

    con = sqlite3.connect(env / "console.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1")
    con.execute("DROP TRIGGER audit_events_append_only_update")
    con.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1")
    con.commit()
    con.close()
    assert cli.main(["audit", "verify"]) == 1
    assert "BROKEN (edited) at event 1" in capsys.readouterr().out


def test_audit_checkpoints_exported_elsewhere_catch_a_wiped_log(env, capsys, tmp_path):
    assert cli.main(["init", "--skip-models"]) == 0
    assert cli.main(["audit", "checkpoint"]) == 0
    kept = tmp_path / "kept.jsonl"
    assert cli.main(["audit", "checkpoint", "--export", str(kept)]) == 0
    assert cli.main(["audit", "checkpoint", "--export", str(kept)]) == 1  # never overwrites
    capsys.readouterr()
    import sqlite3

    con = sqlite3.connect(env / "console.db")
    con.execute("DROP TRIGGER audit_events_append_only_delete")
    con.execute("DELETE FROM audit_events")
    con.execute("DELETE FROM audit_checkpoints")
    con.execute("UPDATE audit_head SET seq = 0, hash = ?", ("0" * 64,))
    con.commit()
    con.close()
    (env / "audit-checkpoints.jsonl").unlink()
    # (Each verify is itself an audit event: the one with the copy kept elsewhere runs on the wiped log first.)
    assert cli.main(["audit", "verify", "--checkpoints", str(kept)]) == 1  # the copy kept elsewhere knows...
    assert "BROKEN (wiped) at event 1" in capsys.readouterr().out
    assert cli.main(["audit", "verify"]) == 0  # ...while nothing is left here to compare with
    assert "audit chain intact: 1 events verified; no signed checkpoint" in capsys.readouterr().out
    assert cli.main(["audit", "verify", "--checkpoints", str(tmp_path / "nope.jsonl")]) == 1
    assert "is not a file" in capsys.readouterr().err


def test_a_bad_setting_names_its_environment_variable(env, monkeypatch, capsys):
    monkeypatch.setenv("LLM_CONSOLE_KV_CACHE_GIB", "lots")
    assert cli.main(["settings"]) == 1
    assert "LLM_CONSOLE_KV_CACHE_GIB" in capsys.readouterr().err


@pytest.mark.engine
def test_bench_engine_prints_one_json_object_with_both_figures_and_their_ratio(env, capsys):
    assert cli.main(["bench", "engine", "--json", "--concurrency", "4", "--max-tokens", "16", "--rounds", "3"]) == 0
    result = __import__("json").loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["host_tokens_per_s"] > 0 and result["raw_tokens_per_s"] > 0
    spread = result["ratio_spread"]
    assert spread["min"] <= spread["p25"] <= result["ratio"] <= spread["p75"] <= spread["max"]
    assert result["ratio"] == spread["median"]
    assert len(result["host_rounds_tokens_per_s"]) == len(result["raw_rounds_tokens_per_s"]) == result["rounds"]
    assert result["output_tokens_per_round"] == {"host": 64, "raw": 64}


@pytest.mark.slow
def test_bench_review_reports_first_page_and_claim_next_times(env, capsys):
    assert cli.main(["bench", "review", "--json", "--items", "2000"]) == 0
    result = __import__("json").loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["items"] == 2000 and result["first_page_rows"] > 0 and result["claimed"] is True
    assert result["first_page_ms"] > 0 and result["claim_next_ms"] > 0


def _bench_imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, enclosing function or None) for each import of ``bench`` in a file."""
    import ast

    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, child.name)
                continue
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            found.extend((n, function) for n in names if n.split(".")[0] == "bench")
            visit(child, function)

    visit(ast.parse(path.read_text(), filename=str(path)), None)
    return found


def test_nothing_in_console_engine_or_db_imports_the_bench_package():
    # `llm-console bench ...` comes from bench/cli.py through the llm_console.commands entry point.
    offenders = []
    for package in ("console", "engine", "db"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for module, function in _bench_imports(path):
                offenders.append(f"{path.relative_to(ROOT)}: {module} in {function or 'module scope'}")
    assert offenders == []



@pytest.mark.slow
def test_bench_safety_prints_percentiles_per_scanner_and_the_total(env, capsys):
    assert cli.main(["bench", "safety", "--json", "--iterations", "2"]) == 0
    result = __import__("json").loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["iterations"] == 2 and result["scanners"]
    assert result["total_p95_ms"] >= result["total_p50_ms"] > 0
    assert set(result["sizes"]) == {"100_words", "2000_words"}


def test_model_serve_alias_retire_and_restart_write_the_desired_state(env, tiny_model_dir, capsys):
    import shutil

    other = shutil.copytree(tiny_model_dir, env / "other")
    assert cli.main(["model", "register", "v-a", str(tiny_model_dir)]) == 0
    assert cli.main(["model", "register", "v-b", str(other), "--description", "second"]) == 0
    assert cli.main(["model", "serve", "v-a", "--reason", "first"]) == 0  # the first version: one person
    capsys.readouterr()
    assert cli.main(["model", "serve", "v-b", "--reason", "better"]) == 1  # then: an approved promotion
    assert "--break-glass" in capsys.readouterr().err
    assert cli.main(["model", "serve", "v-b", "--reason", "better", "--break-glass", "the approvers are away"]) == 0
    assert "model.break_glass" in capsys.readouterr().err
    assert cli.main(["model", "alias", "v-a", "staging", "--reason", "keep around"]) == 0
    assert cli.main(["model", "protect", "staging", "--reason", "QA reads it"]) == 0
    assert cli.main(["model", "alias", "v-b", "staging", "--reason", "newer"]) == 1
    assert "staging is protected" in capsys.readouterr().err
    assert cli.main(["model", "protect", "staging", "--off"]) == 1
    assert "--break-glass" in capsys.readouterr().err
    assert cli.main(["model", "protect", "staging", "--off", "--break-glass", "QA moved to another alias"]) == 0
    assert cli.main(["model", "restart", "--reason", "stuck"]) == 0
    capsys.readouterr()
    assert cli.main(["model", "list", "--json"]) == 0
    out = capsys.readouterr().out
    listing = {v["name"]: v for v in __import__("json").loads(out[out.index("["):])}
    assert listing["v-b"]["aliases"] == ["production"] and listing["v-b"]["live"]
    assert listing["v-a"]["aliases"] == ["staging"] and len(listing["v-a"]["fingerprint"]) == 64
    assert cli.main(["model", "retire", "v-a", "--reason", "old"]) == 0
    assert cli.main(["model", "serve", "v-a", "--reason", "back"]) == 1
    assert "retired" in capsys.readouterr().err
    assert cli.main(["audit", "verify"]) == 0


@pytest.mark.parametrize("args,message", [
    (["model", "serve", "nope", "--reason", "x"], "No model version named"),
    (["model", "serve", "nope", "--reason", "  "], "reason for serving a version is required"),
    (["model", "alias", "nope", "Bad Alias", "--reason", "x"], "lower-case"),
    (["model", "serve", "nope"], "give --reason"),
    (["model", "rollback", "--reason", "nothing to go back to"], "nothing to roll back"),
], ids=["unknown-version", "blank-reason", "bad-alias", "no-reason", "nothing-to-roll-back"])
def test_lifecycle_commands_refuse_bad_input_with_one_line(env, capsys, args, message):
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.engine
def test_model_eval_runs_a_suite_file_in_a_separate_engine_and_prints_the_report(env, tiny_model_dir, monkeypatch,
                                                                                 capsys):
    import json

    monkeypatch.setenv("LLM_CONSOLE_SAFETY_ENABLED", "false")
    suite = env / "mine.jsonl"
    suite.write_text("\n".join(json.dumps(r) for r in [
        {"id": "q1", "prompt": "How do I reset my password?", "kind": "in_domain", "expected_topic": "account"},
        {"id": "q2", "prompt": "What is the capital of Peru?", "kind": "off_topic"},
    ]) + "\n")
    assert cli.main(["model", "register", "tiny-eval", str(tiny_model_dir)]) == 0
    capsys.readouterr()
    assert cli.main(["model", "eval", "tiny-eval", "--suite-file", str(suite), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["n"] == 2 and report["version"] == "tiny-eval" and report["errors"] == 0
    assert report["latency"]["ttft_p95_ms"] > 0


def test_model_eval_refuses_a_malformed_suite_file_with_line_numbers(env, tiny_model_dir, capsys):
    suite = env / "bad.jsonl"
    suite.write_text('{"id": "q1", "prompt": "hi", "kind": "in_domain", "expected_topic": "account"}\n{not json\n')
    assert cli.main(["model", "register", "tiny-eval", str(tiny_model_dir)]) == 0
    capsys.readouterr()
    assert cli.main(["model", "eval", "tiny-eval", "--suite-file", str(suite)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 2" in err[0]
