"""What the Latency page says around its charts, worked out without Streamlit (console.services.latency_view_model):
the version-switch table, the engine-health window and the feedback table's window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd

from console.services import engine_health as health_svc
from console.services import latency_view_model as vm
from console.services.latency import LatencyOverview, SwitchMarker

UNTIL = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _report(days: int, switches: list[SwitchMarker] | None = None) -> LatencyOverview:
    empty = pd.DataFrame()
    return LatencyOverview(UNTIL - timedelta(days=days), UNTIL, 3600, "1-hour", empty, empty, empty, empty, empty,
                           switches or [], [], [], True, None, 0)


def test_the_switch_table_lists_each_switch_and_is_none_without_any():
    assert vm.switch_table(_report(1)) is None
    at = UNTIL - timedelta(hours=2)
    table = vm.switch_table(_report(1, [SwitchMarker(at, True, None, "demo-v2", 4.5),
                                        SwitchMarker(at, False, "demo-v2", "demo-v3", None)]))
    assert table is not None
    assert list(table.columns) == ["at (UTC)", "from", "to", "switched", "took (s)"]
    assert table[["from", "to", "switched"]].values.tolist() == [["", "demo-v2", "yes"], ["demo-v2", "demo-v3", "failed"]]
    assert list(table["at (UTC)"]) == [at, at] and table["took (s)"].iloc[0] == 4.5
    assert pd.isna(table["took (s)"].iloc[1])  # a failed switch took no measured time


def test_engine_health_reads_at_most_its_range_back_and_says_so_only_when_it_cuts_the_window():
    short = _report(1)
    assert vm.health_window(short) == (short.since, None)
    long = _report(health_svc.MAX_RANGE.days + 30)
    since, note = vm.health_window(long)
    assert since == UNTIL - health_svc.MAX_RANGE
    assert note == f"Engine health covers the last {health_svc.MAX_RANGE.days} days of the window."


def test_the_feedback_caption_names_the_window_rated_or_not():
    report = _report(1)
    assert vm.feedback_caption(report, rated=False) == (
        "No answer given between 2026-11-25 12:00 and 2026-11-26 12:00 UTC has a thumbs up or down yet.")
    assert vm.feedback_caption(report, rated=True).startswith(
        "Answers given between 2026-11-25 12:00 and 2026-11-26 12:00 UTC, as rated so far;")
