"""``llm-console bench canary``: scripted canaries decided by the real judge on a throwaway store; its JSON has each
scenario's decisions against the expected one, and the totals are counted from them."""

from __future__ import annotations

import json

import pytest

from console import cli


@pytest.fixture
def env(tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    monkeypatch.setenv("LLM_CONSOLE_DATA_DIR", str(tmp_path))
    return tmp_path


def _bench(capsys, *args: str) -> dict:  # noqa: ANN001
    assert cli.main(["bench", "canary", "--json", "--seeds", "1", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_canary_reports_decisions_against_the_known_answers(env, capsys) -> None:  # noqa: ANN001
    result = _bench(capsys, "--scenarios", "equal,flags_x2")
    assert (result["scenarios"], result["decisions"], result["seeds"]) == (2, 2, 1)
    by_name = {s["scenario"]: s for s in result["results"]}
    assert by_name["equal"]["expected"] == "promote" and by_name["flags_x2"]["expected"] == "rollback"
    assert by_name["equal"]["decisions"] == ["promote"] and by_name["flags_x2"]["decisions"] == ["rollback"]
    assert by_name["flags_x2"]["worse"] == [["flag_rate"]]
    assert result["decisions_correct"] == 2
    counts = [n for s in result["results"] for n in s["exchanges_to_decision"]]
    assert all(n >= 2 * result["plan"]["min_exchanges"] for n in counts)
    assert result["median_exchanges_to_decision"] == sum(counts) / 2


def test_bench_canary_counts_a_time_box_ending_undecided_as_wrong(env, capsys) -> None:  # noqa: ANN001
    # 150 exchanges per arm are far too few to show an equal candidate no worse: the time box ends undecided.
    result = _bench(capsys, "--scenarios", "equal,p95_ttft_x1.5", "--max-per-arm", "150")
    by_name = {s["scenario"]: s for s in result["results"]}
    assert by_name["equal"]["decisions"] == ["rollback (undecided)"] and by_name["equal"]["correct"] == 0
    assert by_name["p95_ttft_x1.5"]["decisions"] == ["rollback"] and by_name["p95_ttft_x1.5"]["correct"] == 1
    assert result["decisions_correct"] == 1


def test_bench_canary_refuses_an_unknown_scenario(env, capsys) -> None:  # noqa: ANN001
    assert cli.main(["bench", "canary", "--scenarios", "nope"]) != 0
    assert "--scenarios takes names from" in capsys.readouterr().err
