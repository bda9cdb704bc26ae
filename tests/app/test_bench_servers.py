"""The benchmarks of vLLM server backends: ``bench engine --backend server`` (the console's server client vs the
``openai`` client on one server) and ``bench switch`` on ``in-process`` and ``managed-server`` side by side.

They run at the smallest sizes on real engines and servers (the session's ``vllm_server``; the switch bench starts
its own two managed servers: the only server starts of this module) and assert what they report, never how fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.switch import _Answer, _figures
from console import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_CONSOLE_DATA_DIR", str(tmp_path))
    for name in ("LLM_CONSOLE_ADMIN_PASSWORD", "LLM_CONSOLE_SERVER_API_KEY", "LLM_CONSOLE_SERVER_API_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _json_out(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_engine_on_a_running_server_compares_the_console_client_with_the_openai_client(
        env, monkeypatch, capsys, vllm_server):
    monkeypatch.setenv("LLM_CONSOLE_SERVER_API_KEY", vllm_server.api_key)
    assert cli.main(["bench", "engine", "--backend", "server", "--url", vllm_server.url + "/v1/",
                     "--server-model", vllm_server.name, "--json", "--concurrency", "2", "--max-tokens", "8",
                     "--rounds", "2"]) == 0
    result = _json_out(capsys)
    assert result["backend"] == "server" and result["started_server"] is False
    assert result["server"] == vllm_server.url  # the URL as given, normalised
    assert result["model"] == vllm_server.name
    assert result["console_tokens_per_s"] > 0 and result["openai_tokens_per_s"] > 0
    assert len(result["ratios"]) == result["rounds"] == 2 and all(r > 0 for r in result["ratios"])
    spread = result["ratio_spread"]
    assert spread["min"] <= result["ratio_median"] <= spread["max"]
    assert len(result["console_rounds_tokens_per_s"]) == len(result["openai_rounds_tokens_per_s"]) == 2
    # Both sides did the same work: every request streamed exactly max_tokens tokens (ignore_eos).
    assert result["output_tokens_per_round"] == {"console": 2 * 8, "openai": 2 * 8}
    assert (result["concurrency"], result["max_tokens"]) == (2, 8)
    assert vllm_server.api_key not in json.dumps(result)


def test_bench_engine_refuses_a_server_that_does_not_serve_the_model(env, monkeypatch, capsys, vllm_server):
    monkeypatch.setenv("LLM_CONSOLE_SERVER_API_KEY", vllm_server.api_key)
    assert cli.main(["bench", "engine", "--backend", "server", "--url", vllm_server.url,
                     "--server-model", "no-such-model", "--json", "--rounds", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llm-console: error:") and "no-such-model" in err[0]


@pytest.mark.engine
def test_bench_switch_runs_in_process_and_managed_server_side_by_side(env, capsys):
    assert cli.main(["bench", "switch", "--json", "--concurrency", "4"]) == 0
    result = _json_out(capsys)
    assert list(result["backends"]) == ["in-process", "managed-server"]
    for backend, figures in result["backends"].items():
        assert figures["backend"] == backend
        assert figures["failed"] == 0, (backend, figures["errors"])
        assert figures["answered_by"]["bench-a"] > 0 and figures["answered_by"]["bench-b"] > 0, backend
        assert figures["requests"] == sum(figures["answered_by"].values())
        assert figures["switch_s"] is not None and figures["switch_s"] > 0
        assert figures["window_requests"] > 0
        assert 0 < figures["baseline_ttft_ms"] <= figures["before_max_ttft_ms"] <= figures["max_ttft_ms"]
        assert 0 <= figures["max_wait_ms"] <= figures["max_ttft_ms"]
        assert figures["concurrency"] == 4
    assert result["concurrency"] == 4 and "max_wait_ms" in result["note"]


@pytest.mark.parametrize("args,message", [
    (["bench", "engine", "--url", "http://127.0.0.1:9", "--server-model", "m"], "for --backend server"),
    (["bench", "engine", "--backend", "server", "--url", "http://127.0.0.1:9"], "--url needs --server-model"),
    (["bench", "engine", "--backend", "server", "--server-model", "m"], "--server-model needs --url"),
    (["bench", "engine", "--backend", "server", "--url", "ftp://127.0.0.1:9", "--server-model", "m"], "ftp"),
], ids=["url-without-server-backend", "url-without-model", "model-without-url", "bad-url"])
def test_bench_engine_bad_server_options_are_one_clear_line(env, capsys, args, message):
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llm-console: error:") and message in err[0], err


@pytest.mark.parametrize("args", [["bench", "engine", "--backend", "cluster"],
                                  ["bench", "switch", "--backend", "server"]], ids=["engine", "switch"])
def test_a_bad_backend_is_one_line_naming_the_choices_and_exit_2(env, args):
    proc = subprocess.run([sys.executable, "-m", "console.cli", *args], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "invalid choice" in lines[0] and "in-process" in lines[0], lines


def test_max_wait_is_the_longest_ttft_in_the_switch_window_above_the_median_before_it():
    def answer(submitted, ttft, version="bench-a", finish="length"):
        return _Answer(submitted, None if ttft is None else submitted + ttft, version, finish)

    answers = [answer(0.0, 0.05), answer(1.0, 0.07), answer(2.0, 0.06),  # before the move at t=10...
               answer(9.9, 3.0),  # ...median 0.065; submitted before the move: not the switch's wait, though long
               answer(10.0, 0.5), answer(11.0, 1.26), answer(12.0, 0.01, "bench-b", "switch"),
               answer(30.0, 9.0, "bench-b"),  # after the new version's first token (12.01): not in the window
               answer(11.5, None)]  # streamed no text: no TTFT
    figures = _figures("managed-server", answers, ["EngineDeadError: gone"], asked=10.0, switched=12.01,
                       concurrency=2)
    assert figures["baseline_ttft_ms"] == 65.0
    assert figures["before_max_ttft_ms"] == 3000.0
    assert figures["max_wait_ms"] == 1195.0  # 1.26 - 0.065
    assert figures["window_requests"] == 3
    assert (figures["max_wait_submitted_s"], figures["max_wait_version"]) == (1.0, "bench-a")
    assert figures["max_ttft_ms"] == 9000.0
    assert figures["switch_s"] == 2.01
    assert figures["failed"] == 1 and figures["requests"] == len(answers) + 1
    assert figures["answered_by"] == {"bench-a": 7, "bench-b": 2}
    assert figures["cut_by_switch"] == 1
    # Faster than before the move: no wait (floored at 0); nothing in the window: no wait either.
    calm = _figures("in-process", [answer(0.0, 0.5), answer(10.5, 0.1, "bench-b")], [], asked=10.0, switched=10.6,
                    concurrency=1)
    assert calm["max_wait_ms"] == 0.0 and calm["window_requests"] == 1
    empty = _figures("in-process", [answer(0.0, 0.5)], [], asked=10.0, switched=None, concurrency=1)
    assert empty["max_wait_ms"] == 0.0 and empty["switch_s"] is None
