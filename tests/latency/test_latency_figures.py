"""The Latency page's figures, built without Streamlit (console/services/latency_figures.py) from a real report over
a real database: a chart per metric and column or the words instead, one scale side by side, versions and targets
shown as text, switches marked on every time chart, rates in percent, overhead bars only where recorded."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from console.services import engine_health as health_svc
from console.services import latency, slo
from console.services import latency_figures as figures
from console.services import latency_view_model as vm
from console.services.feedback import VersionFeedback
from console.services.latency import SwitchMarker
from db import engine_health as health_q
from db import latency as latency_q

ODD = "<b>v2</b> https://evil.example"  # a version name with markup and a link


def _record(ctx, when, version, *, prompt_action=None, overhead=None, **timings):
    with ctx.db.session() as s:
        latency_q.record_exchange(s, minute=when, model_version=version, synthetic=False, status="ok",
                                  prompt_action=prompt_action, output_action="allow", timings=timings,
                                  overhead=overhead or {})


@pytest.fixture
def report_of(ctx, make_user, clock):
    """v1: two answers (one prompt flagged, console overhead recorded); ODD: one answer without overhead. Returns
    a function giving the last hour's report, with ``switches`` when given."""
    op = make_user("olivia", "operator")
    minute = clock.now.replace(second=0, microsecond=0) - timedelta(minutes=5)
    _record(ctx, minute, "v1", ttft_ms=40, e2e_ms=400, output_tokens=5, prompt_action="flag",
            overhead={"scan_before_ms": 4.0, "scan_after_ms": 6.0, "store_ms": 2.0})
    _record(ctx, minute, "v1", ttft_ms=60, e2e_ms=600, output_tokens=5, prompt_action="allow",
            overhead={"scan_before_ms": 4.0, "scan_after_ms": 6.0, "store_ms": 2.0})
    _record(ctx, minute, ODD, ttft_ms=200, e2e_ms=900, output_tokens=5)

    def report(switches=()):
        got = latency.overview(ctx, op, latency.LatencyFilter(range="last hour"))
        return dataclasses.replace(got, switches=list(switches))

    return report


def _names(fig) -> list[str]:
    return [trace.name for trace in fig.data]


def test_each_latency_metric_gets_a_chart_or_says_it_has_no_values(report_of):
    rows = figures.latency_rows(report_of(), (), side_by_side=False)
    assert len(rows) == len(latency.LATENCY_METRICS)
    by_metric = dict(zip(latency.LATENCY_METRICS, rows, strict=True))
    assert by_metric["itl_ms"] == ["Inter-token latency: no values in this window."]
    assert by_metric["queue_ms"] == ["Queue time (waiting for the engine): no values in this window."]
    (ttft,) = by_metric["ttft_ms"]
    # Sorted by version ("<" sorts before "v"); per version p99 first (drawn under), then p95, then p50.
    odd = figures.plain(ODD)
    assert _names(ttft) == [f"{odd} p99", f"{odd} p95", f"{odd} p50", "v1 p99", "v1 p95", "v1 p50"]
    assert [t.line.dash for t in ttft.data[3:]] == ["dot", "dash", "solid"]
    assert [t.legendrank for t in ttft.data[3:]] == [2, 1, 0]  # the legend reads p50, p95, p99
    assert ttft.layout.title.text.startswith("Time to first token: p50 (solid)")
    assert ttft.layout.yaxis.title.text == "milliseconds" and ttft.layout.yaxis.range is None


def test_two_versions_side_by_side_share_one_scale(report_of):
    rows = figures.latency_rows(report_of(), ("v1", ODD), side_by_side=True)
    assert all(len(row) == 2 for row in rows)
    left, right = rows[latency.LATENCY_METRICS.index("e2e_ms")]
    assert {t.legendgroup for t in left.data} == {"v1"}
    assert {t.legendgroup for t in right.data} == {figures.plain(ODD)}
    # 0 to 10 % above the higher p99 of the two (the odd version's 900 ms, read from a histogram).
    assert left.layout.yaxis.range == right.layout.yaxis.range
    assert left.layout.yaxis.range[0] == 0 and left.layout.yaxis.range[1] == pytest.approx(990, rel=0.05)


def test_version_names_show_as_text_with_links_broken(report_of):
    rate = figures.rate_figure(report_of())
    shown = [n for n in _names(rate) if "v2" in n]
    assert shown and all("<b>" not in n and "&lt;b&gt;" in n and "https://" not in n for n in shown)
    bars = figures.overhead_figure(report_of().totals)
    assert figures.plain(ODD) in _names(bars)


def test_every_time_chart_marks_the_window_s_switches_green_or_red(ctx, make_user, report_of, clock):
    at = clock.now - timedelta(minutes=3)
    report = report_of([SwitchMarker(at, True, "v1", ODD, 2.0), SwitchMarker(at, False, ODD, "v3", None)])
    with ctx.db.session() as s:  # an idle engine: one health chart of each kind to mark
        for minutes in (20, 10, 2):
            health_q.add_sample(s, health_q.HealthRecord(ts=clock.now - timedelta(minutes=minutes),
                                                         model_version="v1", state="ready"))
    history = health_svc.health_history(ctx, make_user("ada", "admin"), report.since, report.until)
    time_charts = [*[c for row in figures.latency_rows(report, (), False) for c in row if not isinstance(c, str)],
                   *figures.throughput_figures(report), figures.rate_figure(report),
                   *[figures.health_figure(chart, report) for chart in history.charts]]
    assert len(time_charts) == 2 + 2 + 1 + 4
    for fig in time_charts:
        assert [shape.line.color for shape in fig.layout.shapes] == [figures.SWITCH_OK, figures.SWITCH_FAILED]
        texts = [a.text for a in fig.layout.annotations]
        assert f"switch to {figures.plain(ODD)}" in texts and "failed switch to v3" in texts
        assert fig.layout.yaxis.rangemode == "nonnegative"  # an all-zero line keeps its axis at 0
        assert fig.layout.xaxis.title.text == figures.TIME_AXIS
    # The overhead bars are not over time: no switch lines, their own axis.
    bars = figures.overhead_figure(report.totals)
    assert not bars.layout.shapes and bars.layout.xaxis.title.text == "part of the request"


def test_targets_are_dotted_lines_in_the_chart_s_unit(ctx, make_user, report_of):
    admin = make_user("ada", "admin")
    slo.set_slo(ctx, admin, "ttft_ms", "p95", 35.0)
    slo.set_slo(ctx, admin, "error_rate", "rate", 0.01)
    report = report_of()
    ttft = figures.latency_figure(report, report.series, "ttft_ms", None)
    assert [(s.y0, s.line.dash) for s in ttft.layout.shapes] == [(35.0, "dot")]
    assert "target: p95 time to first token &lt;= 35 ms" in [a.text for a in ttft.layout.annotations]
    e2e = figures.latency_figure(report, report.series, "e2e_ms", None)
    assert not e2e.layout.shapes  # a target on another metric is not drawn here
    rate = figures.rate_figure(report)
    assert [s.y0 for s in rate.layout.shapes] == [pytest.approx(1.0)]  # 1 % on a chart in percent


def test_rates_are_in_percent_and_the_flag_hover_splits_prompt_and_answer(report_of):
    rate = figures.rate_figure(report_of())
    (flag,) = [t for t in rate.data if t.name == "v1: flagged (prompt or answer)"]
    assert list(flag.y) == [50.0]  # one of v1's two requests
    assert flag.customdata.tolist() == [[50.0, 0.0]] and flag.hovertemplate == figures.FLAG_HOVER
    (errors,) = [t for t in rate.data if t.name == "v1: errors"]
    assert errors.hovertemplate is None and list(errors.y) == [0.0]
    assert rate.layout.yaxis.title.text == "% of the bucket's requests"


def test_throughput_charts_give_each_version_a_line_in_its_unit(report_of):
    report = report_of()
    requests, tokens = figures.throughput_figures(report)
    assert requests.layout.title.text == f"Requests per minute, averaged per {report.bucket_label} bucket"
    assert (requests.layout.yaxis.title.text, tokens.layout.yaxis.title.text) == ("requests/min", "output tokens/s")
    assert _names(requests) == [figures.plain(ODD), "v1"]
    assert report.bucket_label in vm.throughput_caption(report)


def test_the_overhead_bars_leave_out_parts_that_were_not_recorded(report_of):
    totals = report_of().totals
    totals = totals[totals["model_version"] != latency.ALL_VERSIONS]
    bars = {t.name: t for t in figures.overhead_figure(totals).data}
    parts = [part for _, part in vm.OVERHEAD_PARTS]
    assert all(list(t.x) == parts for t in bars.values())
    v1, odd = list(bars["v1"].y), list(bars[figures.plain(ODD)].y)
    assert v1[parts.index("console: prompt scan")] == pytest.approx(4.0, rel=0.05)
    assert odd[parts.index("console: prompt scan")] is None and odd[parts.index("engine: first token")] is not None


def test_the_feedback_table_lists_the_chosen_versions_once_an_answer_is_rated(report_of):
    report = report_of()
    unrated = [VersionFeedback(0, 0, 3, model_version="v1")]
    caption, table = vm.feedback_table(report, unrated, ())
    assert table is None and caption.startswith("No answer given between")
    rated = [VersionFeedback(2, 1, 3, model_version="v1"), VersionFeedback(0, 1, 1, model_version="v3")]
    caption, table = vm.feedback_table(report, rated, ("v1",))
    assert caption.startswith("Answers given between") and table is not None
    assert table.to_dict("records") == [{"Model version": "v1", "Answers": 3, "Rated": 3,
                                         "Thumbs up (% of rated)": "66.7", "Thumbs down (% of rated)": "33.3"}]
    assert list(vm.feedback_table(report, rated, ())[1]["Model version"]) == ["v1", "v3"]
    # A version with answers but none rated says "–", not a missing cell (which the browser shows as "None").
    rated.append(VersionFeedback(0, 0, 4, model_version="v4"))
    table = vm.feedback_table(report, rated, ())[1]
    assert table is not None and table.to_dict("records")[-1] == {
        "Model version": "v4", "Answers": 4, "Rated": 0, "Thumbs up (% of rated)": "–",
        "Thumbs down (% of rated)": "–"}
