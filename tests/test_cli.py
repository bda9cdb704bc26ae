"""`llm-console`: set-up, users, model versions, audit verification; bad arguments give one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from console import cli
from tests.conftest import STRONG_PASSWORD

ROOT = Path(__file__).resolve().parent.parent


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
    from console.services.context import Services
    from console.settings import Settings
    from db.config import DbConfig
    from db.database import Database

    settings = Settings.from_env()
    svc = Services(settings, Database(DbConfig(settings.database_url)))
    assert auth.login(svc, "admin", password).roles == frozenset({"admin", "operator"})


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


def test_model_register_and_list(env, tmp_path, capsys):
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    assert cli.main(["model", "register", "local-v1", str(model_dir), "--max-model-len", "2048",
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
    assert cli.main(["audit", "verify"]) == 0
    assert "audit chain intact" in capsys.readouterr().out
    import sqlite3

    con = sqlite3.connect(env / "console.db")
    con.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1")
    con.commit()
    con.close()
    assert cli.main(["audit", "verify"]) == 1
    assert "BROKEN at event 1" in capsys.readouterr().out


def test_a_bad_setting_names_its_environment_variable(env, monkeypatch, capsys):
    monkeypatch.setenv("LLM_CONSOLE_KV_CACHE_GIB", "lots")
    assert cli.main(["settings"]) == 1
    assert "LLM_CONSOLE_KV_CACHE_GIB" in capsys.readouterr().err


def test_bench_engine_prints_one_json_object_with_both_figures_and_their_ratio(env, capsys):
    assert cli.main(["bench", "engine", "--json", "--concurrency", "4", "--max-tokens", "16"]) == 0
    result = __import__("json").loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["host_tokens_per_s"] > 0 and result["raw_tokens_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["host_tokens_per_s"] / result["raw_tokens_per_s"], rel=0.01)
    assert result["output_tokens_per_round"] == {"host": 64, "raw": 64}


def test_bench_review_reports_first_page_and_claim_next_times(env, capsys):
    assert cli.main(["bench", "review", "--json", "--items", "2000"]) == 0
    result = __import__("json").loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["items"] == 2000 and result["first_page_rows"] > 0 and result["claimed"] is True
    assert result["first_page_ms"] > 0 and result["claim_next_ms"] > 0
