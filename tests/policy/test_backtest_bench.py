"""`llm-console bench backtest --json` prints one JSON object with the replay's time, rates and peak memory."""

from __future__ import annotations

import json

import pytest

from console import cli


@pytest.mark.slow
def test_bench_backtest_prints_the_time_throughput_and_peak_memory(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLM_CONSOLE_DATA_DIR", str(tmp_path))
    assert cli.main(["bench", "backtest", "--json", "--exchanges", "2000"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["exchanges"] == 2000 and result["findings"] > 12 * 2000
    assert result["backtest_s"] > 0 and result["exchanges_per_s"] > 0 and result["peak_mib"] > 0
    # Lowering Detoxify's toxicity threshold only adds review items, and some verdicts change.
    assert result["items_per_day_after"] >= result["items_per_day_before"] and result["changed"] > 0


def test_the_bench_proposal_is_a_valid_policy_that_differs_from_the_shipped_one():
    from bench.backtest import proposed_policy
    from engine.safety.policy import DEFAULT_POLICY_PATH, Policy

    shipped = DEFAULT_POLICY_PATH.read_text(encoding="utf-8")
    proposed = Policy.from_toml(proposed_policy(shipped))
    assert proposed.detector_thresholds["detoxify"]["prompt"]["toxicity"] == 0.3
    assert proposed.sha256 != Policy.from_toml(shipped).sha256


def test_the_benches_throwaway_store_is_migrated_and_removed_afterwards_even_on_an_error(tmp_path):
    from sqlalchemy import inspect

    from bench.store import throwaway_store

    with throwaway_store(tmp_path) as (settings, db):
        folder = settings.data_dir
        assert folder.parent == tmp_path and folder.is_dir()
        assert "policy_change_requests" in inspect(db.engine).get_table_names()  # migrated to the newest revision
        assert not settings.engine_autostart and not settings.safety_enabled
    assert not folder.exists()
    with pytest.raises(RuntimeError, match="seeding failed"), throwaway_store(tmp_path) as (settings, db):
        folder = settings.data_dir
        raise RuntimeError("seeding failed")
    assert not folder.exists() and list(tmp_path.iterdir()) == []
