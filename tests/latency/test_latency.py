"""The Latency page and its services: figures per version against numbers worked out by hand, the filters, the
user filter (from exchanges), targets set by admins (audited) with their breaches and goodput, switch markers, who
may open it, the page itself (AppTest), and the benchmark command on a small database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import app_pages
from console.cli import main as cli_main
from console.services import latency, latency_view_model, slo
from console.services.errors import AccessDenied, InvalidInput, NotFound
from console.ui import UiSession
from db import audit as audit_q
from db import chat as chat_q
from db import latency as latency_q
from db import latency_report
from db.types import utcnow
from tests.conftest import console_env

ERR = latency_report.MAX_RELATIVE_ERROR


def _record(ctx, when, version="v1", *, status="ok", synthetic=False, prompt_action=None, output_action=None,
            overhead=None, **timings):
    with ctx.db.session() as s:
        latency_q.record_exchange(s, minute=when, model_version=version, synthetic=synthetic, status=status,
                                  prompt_action=prompt_action, output_action=output_action, timings=timings,
                                  overhead=overhead or {})


def _seed(ctx, now):
    """Four answers of v1 and one of v2 five minutes ago, an error of v2, a synthetic one, one three days old."""
    minute = now.replace(second=0, microsecond=0) - timedelta(minutes=5)
    for ttft, e2e in [(10, 100), (20, 200), (30, 300), (40, 400)]:
        _record(ctx, minute + timedelta(seconds=ttft), "v1", ttft_ms=ttft, e2e_ms=e2e, output_tokens=60,
                overhead={"scan_before_ms": 4.0, "scan_after_ms": 6.0, "store_ms": 2.0})
    _record(ctx, minute, "v2", ttft_ms=50, e2e_ms=500, output_tokens=30)
    _record(ctx, minute, "v2", status="error")
    _record(ctx, minute, "v2", ttft_ms=5000, synthetic=True)
    _record(ctx, now - timedelta(days=3), "v1", ttft_ms=1, e2e_ms=1)


@pytest.fixture
def operator(ctx, make_user, clock):
    _seed(ctx, clock.now)
    return make_user("olivia", "operator")


def _by_version(frame):
    return {r["model_version"]: r for r in frame.to_dict("records")}


def test_the_report_gives_per_version_figures_worked_out_by_hand(ctx, operator):
    report = latency.overview(ctx, operator, latency.LatencyFilter(range="last hour"))
    assert report.bucket_s == 60 and report.bucket_label == "1-minute"
    totals = _by_version(report.totals)
    assert totals["v1"]["requests"] == 4 and totals["v2"]["requests"] == 2
    assert totals[latency.ALL_VERSIONS]["requests"] == 6  # neither the synthetic nor the old one
    assert totals["v1"]["ttft_ms_p50"] == pytest.approx(20, rel=ERR)  # nearest rank of 10, 20, 30, 40
    assert totals["v1"]["e2e_ms_p95"] == pytest.approx(400, rel=ERR)
    assert totals["v1"]["ttft_ms_mean"] == 25.0
    assert totals["v2"]["error_rate"] == 0.5 and totals["v1"]["error_rate"] == 0.0
    assert totals["v1"]["output_tokens"] == 240
    series = report.series
    assert list(series["model_version"]) == ["v1", "v2"]
    v1 = _by_version(series)["v1"]
    assert v1["output_tokens_per_s"] == pytest.approx(4.0)  # 240 tokens in a 60-second bucket
    assert v1["requests_per_s"] == pytest.approx(4 / 60)
    assert report.overhead_recorded and totals["v1"]["store_ms_mean"] == 2.0
    assert report.versions == ["v1", "v2"] and report.source_note is None


def test_filters_by_version_status_and_synthetic_traffic(ctx, operator):
    only_v2 = latency.overview(ctx, operator, latency.LatencyFilter(range="last hour", versions=("v2",)))
    assert list(only_v2.totals["model_version"]) == ["v2", latency.ALL_VERSIONS]
    errors = latency.overview(ctx, operator, latency.LatencyFilter(range="last hour", statuses=("error",)))
    assert _by_version(errors.totals)[latency.ALL_VERSIONS]["requests"] == 1
    synthetic = latency.overview(ctx, operator, latency.LatencyFilter(range="last hour",
                                                                      traffic="synthetic (load tests)"))
    assert _by_version(synthetic.totals)["v2"]["ttft_ms_p50"] == pytest.approx(5000, rel=ERR)
    both = latency.overview(ctx, operator, latency.LatencyFilter(range="last 7 days", traffic="both"))
    assert _by_version(both.totals)[latency.ALL_VERSIONS]["requests"] == 8
    assert both.bucket_s == 3600


def test_an_empty_window_and_bad_filters(ctx, operator, clock):
    empty = latency.overview(ctx, operator, latency.LatencyFilter(
        range="custom", since=clock.now - timedelta(days=20), until=clock.now - timedelta(days=10)))
    assert empty.empty and empty.totals.empty and empty.breaches.empty
    for flt, message in [
        (latency.LatencyFilter(range="since forever"), "Unknown time window"),
        (latency.LatencyFilter(range="custom"), "needs a start and an end"),
        (latency.LatencyFilter(range="custom", since=clock.now, until=clock.now - timedelta(hours=1)), "after"),
        (latency.LatencyFilter(range="custom", since=clock.now - timedelta(days=500), until=clock.now), "at most"),
        (latency.LatencyFilter(statuses=("pending",)), "Unknown status"),
        (latency.LatencyFilter(traffic="robots"), "Unknown traffic"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            latency.overview(ctx, operator, flt)
    with pytest.raises(NotFound, match="No user named"):
        latency.overview(ctx, operator, latency.LatencyFilter(user="nobody"))


def test_one_users_figures_come_from_their_exchanges(ctx, make_user, clock):
    alice, bob = make_user("alice", "operator"), make_user("bob", "operator")
    with ctx.db.session() as s:
        for who, ttfts in ((alice, (100.0, 200.0, 300.0)), (bob, (9000.0,))):
            conv = chat_q.create_conversation(s, user_id=who.user_id, actor=who.username)
            for ttft in ttfts:
                chat_q.store_turn(s, chat_q.TurnRecord(
                    conversation_id=conv.id, user_id=who.user_id, actor=who.username, model_version="v1",
                    prompt="p", created_at=clock.now - timedelta(minutes=10),
                    timings=chat_q.ExchangeTimings(ttft_ms=ttft, output_tokens=4)))
    report = latency.overview(ctx, alice, latency.LatencyFilter(range="last hour", user="alice"))
    total = _by_version(report.totals)[latency.ALL_VERSIONS]
    assert total["requests"] == 3 and total["ttft_ms_p50"] == pytest.approx(200, rel=ERR)
    assert report.rows_read == 3 and "alice" in report.source_note and "3 requests read" in report.source_note
    assert not report.overhead_recorded


def test_admins_set_and_remove_targets_and_every_change_is_audited(ctx, operator, make_user):
    admin = make_user("ada", "admin")
    first = slo.set_slo(ctx, admin, "ttft_ms", "p95", 30.0)
    assert first.label == "p95 time to first token <= 30 ms" and first.set_by == "ada"
    slo.set_slo(ctx, admin, "ttft_ms", "p95", 35.0)
    rate = slo.set_slo(ctx, admin, "error_rate", "rate", 0.01)
    assert rate.label == "error rate <= 1 %"
    assert [s.threshold for s in slo.list_slos(ctx, operator)] == [0.01, 35.0]
    with ctx.db.session(readonly=True) as s:
        events = list(audit_q.iter_events(s, action="slo.set"))
    assert [e.details["previous"] for e in events] == [None, 30.0, None]
    assert events[1].details["threshold"] == 35.0 and events[1].actor == "ada"

    report = latency.overview(ctx, operator, latency.LatencyFilter(range="last hour"))
    breaches = {(b["model_version"], b["metric"]) for b in report.breaches.to_dict("records")}
    assert breaches == {("v1", "ttft_ms"), ("v2", "ttft_ms"), ("v2", "error_rate")}
    goodput = _by_version(report.goodput)
    # v1: 4 ok requests, one (40 ms) over 35 ms; v2: the error does not count, 50 ms is over.
    assert (goodput["v1"]["good_low"], goodput["v1"]["good_high"], goodput["v1"]["reached_model"]) == (3, 3, 4)
    assert goodput["v1"]["share_low"] == 0.75 and goodput["v1"]["exact"]
    assert goodput["v2"]["good_high"] == 0
    compliance = {(c["model_version"], c["metric"]): c["met"] for c in report.compliance.to_dict("records")}
    assert compliance[("v1", "error_rate")] is True and compliance[("v2", "error_rate")] is False

    slo.delete_slo(ctx, admin, rate.id)
    assert [s.metric for s in slo.list_slos(ctx, operator)] == ["ttft_ms"]
    with ctx.db.session(readonly=True) as s:
        (deleted,) = list(audit_q.iter_events(s, action="slo.delete"))
    assert deleted.details == {"metric": "error_rate", "stat": "rate", "threshold": 0.01}
    with pytest.raises(NotFound):
        slo.delete_slo(ctx, admin, rate.id)


@pytest.mark.parametrize("metric,stat,threshold,message", [
    ("ttft_ms", "rate", 0.1, "is one of"), ("tokens", "p95", 1.0, "Targets can be set on"),
    ("ttft_ms", "p95", 0.0, "greater than 0"), ("ttft_ms", "p95", float("nan"), "greater than 0"),
    ("error_rate", "rate", 1.5, "between 0 % and 100 %"), ("e2e_ms", "p99", 1e9, "at most one hour"),
    ("itl_ms", "p50", "fast", "must be a number"),
])
def test_bad_targets_are_refused(ctx, make_user, metric, stat, threshold, message):
    admin = make_user("ada", "admin")
    with pytest.raises(InvalidInput, match=message):
        slo.set_slo(ctx, admin, metric, stat, threshold)
    assert slo.list_slos(ctx, admin) == []


def test_only_admins_set_targets_and_operators_analysts_and_admins_may_look(ctx, make_user):
    for role in ("operator", "analyst", "admin"):
        user = make_user(f"u-{role}", role)
        assert latency.overview(ctx, user).empty
    with pytest.raises(AccessDenied):
        latency.overview(ctx, make_user("rita", "reviewer"))
    with pytest.raises(AccessDenied):
        slo.set_slo(ctx, make_user("otto", "operator"), "ttft_ms", "p95", 500.0)
    with ctx.db.session(readonly=True) as s:
        denied = [e.details["action"] for e in audit_q.iter_events(s, action="access.denied")]
    assert denied == ["dashboard.view", "slo.manage"]


def test_switches_in_the_window_are_markers(ctx, operator):
    with ctx.db.session() as s:
        audit_q.append_event(s, actor="system", action="model.switch", object_type="model_version", object_id="v2",
                             details={"from": "v1", "to": "v2", "seconds": 3.5})
        audit_q.append_event(s, actor="system", action="model.switch_failed", object_type="model_version",
                             object_id="v3", details={"from": "v2", "to": "v3", "seconds": 1.0, "error": "x"})
    flt = latency.LatencyFilter(range="custom", since=utcnow() - timedelta(hours=1),
                                until=utcnow() + timedelta(minutes=5))
    report = latency.overview(ctx, operator, flt)
    assert [(m.ok, m.from_version, m.to_version, m.seconds) for m in report.switches] == [
        (True, "v1", "v2", 3.5), (False, "v2", "v3", 1.0)]
    old = latency.overview(ctx, operator, latency.LatencyFilter(
        range="custom", since=utcnow() - timedelta(days=9), until=utcnow() - timedelta(days=8)))
    assert old.switches == []


def test_the_short_summary_keeps_its_shape_for_older_callers(ctx, operator):
    report = latency.latency(ctx, operator, "last 24 hours")
    rows = {r["model version"]: r for r in report.summary.to_dict("records")}
    assert rows["v1"]["requests"] == 4 and rows["v1"]["output tokens"] == 240
    assert rows["v1"]["ttft_ms p50"] == pytest.approx(20, rel=ERR)
    assert latency.latency(ctx, operator, "last 24 hours", "nope").exchanges.empty
    with pytest.raises(InvalidInput, match="Unknown time window"):
        latency.latency(ctx, operator, "since forever")


def test_rebuilding_the_buckets_from_the_command_line_is_audited(ctx, make_user, clock):
    alice = make_user("alice", "operator")
    ada = make_user("ada", "admin")
    with ctx.db.session() as s:
        conv = chat_q.create_conversation(s, user_id=alice.user_id, actor="alice")
        for _ in range(3):
            chat_q.store_turn(s, chat_q.TurnRecord(conversation_id=conv.id, user_id=alice.user_id, actor="alice",
                                                   model_version="v9", prompt="p",
                                                   created_at=clock.now - timedelta(minutes=2),
                                                   timings=chat_q.ExchangeTimings(ttft_ms=70.0)))
    assert latency.rebuild_buckets(ctx, ada) == 3
    report = latency.overview(ctx, alice, latency.LatencyFilter(range="last hour"))
    assert _by_version(report.totals)["v9"]["requests"] == 3  # however many store_turn recorded before
    with ctx.db.session(readonly=True) as s:
        (event,) = list(audit_q.iter_events(s, action="metrics.rebuild"))
    assert event.details == {"exchanges": 3} and (event.actor, event.actor_id) == ("ada", ada.user_id)


# --- the page ------------------------------------------------------------------------------------------------------


@pytest.fixture
def page_env(ctx, tmp_path, monkeypatch):
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    yield ctx
    st.cache_resource.clear()


def _page(principal) -> AppTest:
    at = AppTest.from_file(str(app_pages.PAGES_DIR / "latency.py"), default_timeout=60)
    at.session_state["llm_console_session"] = UiSession(principal=principal)
    return at


def _table(at, column: str):
    """The first table on the page with this column (AppTest does not expose a dataframe's key)."""
    for frame in at.dataframe:
        if column in frame.value.columns:
            return frame.value
    raise AssertionError(f"no table with a column {column!r}")


def _texts(at) -> str:
    parts = [*(c.value for c in at.caption), *(i.value for i in at.info), *(m.value for m in at.markdown)]
    return "\n".join(str(p) for p in parts)


def test_the_page_draws_every_chart_with_units(page_env, make_user):
    op = make_user("olivia", "operator")
    _seed(page_env, datetime.now(UTC))  # the page runs on the real clock
    at = _page(op)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [h.value for h in at.subheader] == [
        "Service-level objectives", "Engine latency", "Throughput", "Errors, aborts, flags and blocks",
        "Where a request's time goes: the engine and the console", "Engine health"]
    assert "No engine health samples in this window." in _texts(at)
    charts = at.get("plotly_chart")
    # Time to first token and end-to-end (the seed has no inter-token or queue times), two throughputs, rates, overhead.
    assert len(charts) == 2 + 2 + 1 + 1
    assert "Inter-token latency: no values in this window." in _texts(at)
    specs = [json.loads(c.proto.spec) for c in charts]
    titles = [spec["layout"]["title"]["text"] for spec in specs]
    assert "Output tokens per second, averaged per 15-minute bucket" in titles  # the last 24 hours
    assert all(spec["layout"]["yaxis"]["title"]["text"] for spec in specs)  # every axis says its unit
    assert "No targets are set" in _texts(at)
    assert "Set target" not in [b.label for b in at.button]  # operators do not see the editor
    summary = _table(at, "TTFT p50")
    assert summary.set_index("model version").loc["v1", "TTFT p50"].endswith(" ms")

    at.radio(key="dash_layout").set_value("side by side").run()  # v1 left, v2 right, one chart each
    assert not at.exception
    latency = [json.loads(c.proto.spec) for c in at.get("plotly_chart")][:4]
    assert [{t["legendgroup"] for t in spec["data"]} for spec in latency] == [{"v1"}, {"v2"}, {"v1"}, {"v2"}]
    assert latency[0]["layout"]["yaxis"]["range"] == latency[1]["layout"]["yaxis"]["range"]  # one scale


def test_low_traffic_reads_in_requests_per_minute_not_zero(ctx, operator):
    report = latency.overview(ctx, operator, latency.LatencyFilter(range="last 24 hours"))
    table = latency_view_model.summary_table(report.totals).set_index("model version")
    # v1: 4 requests in a day = 0.0028 per minute (0.000046 per second read "0.0" before).
    assert table.loc["v1", "requests/min (avg)"] == "0.0028"
    assert "requests/s (avg)" not in table.columns
    v1 = _by_version(report.series)["v1"]
    assert v1["requests_per_min"] == pytest.approx(4 / 15)  # the chart's point: 4 requests in a 15-minute bucket


@pytest.mark.parametrize(("value", "shown"), [
    (0.0, "0"), (0.000046, "0.000046"), (0.0069, "0.0069"), (0.25, "0.25"), (2.5, "2.5"), (42.24, "42.2"),
    (1234.4, "1,234"), (float("nan"), "–"), (None, "–"),
], ids=["zero", "tiny", "low", "fraction", "units", "tens", "thousands", "nan", "none"])
def test_rates_keep_two_significant_digits(value, shown):
    assert latency_view_model.format_rate(value) == shown


def _health(ctx, now, **fields) -> None:
    from db import engine_health as health_q

    with ctx.db.session() as s:
        for minutes in (20, 10, 2):  # an idle engine: every figure 0
            health_q.add_sample(s, health_q.HealthRecord(ts=now - timedelta(minutes=minutes), model_version="v1",
                                                         state="ready", **fields))


def test_charts_keep_their_axes_at_zero_and_equal_percentiles_all_visible(page_env, make_user):
    op = make_user("olivia", "operator")
    now = datetime.now(UTC)
    # One request per bucket: its p50, p95 and p99 are the same value.
    _record(page_env, now - timedelta(minutes=30), "v1", ttft_ms=40, e2e_ms=400, output_tokens=5)
    _record(page_env, now - timedelta(minutes=3), "v1", ttft_ms=50, e2e_ms=500, output_tokens=5,
            prompt_action="flag", output_action="allow")
    _health(page_env, now)
    at = _page(op)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = [spec["layout"]["title"]["text"] for spec in specs]
    assert len([t for t in titles if t in ("Requests in the engine", "KV-cache use", "Engine throughput",
                                           "Preemptions and engine errors")]) == 4
    for title, spec in zip(titles, specs, strict=True):
        assert spec["layout"]["yaxis"]["rangemode"] == "nonnegative", title
        assert "bucket" not in spec["layout"]["xaxis"].get("title", {}).get("text", ""), title
    time_axes = [spec["layout"]["xaxis"]["title"]["text"] for spec in specs if not spec["layout"]["title"]["text"]
                 .startswith("Median")]
    assert set(time_axes) == {"time (UTC)"}

    ttft = specs[titles.index(next(t for t in titles if t.startswith("Time to first token")))]
    traces = {t["name"]: (i, t) for i, t in enumerate(ttft["data"])}
    (p50_at, p50), (p95_at, p95), (p99_at, p99) = (traces[f"v1 {stat}"] for stat in ("p50", "p95", "p99"))
    assert p95["y"] == p99["y"] == p50["y"]  # equal here...
    # ...and still each visible: p99 drawn first and widest with an open square around p95's diamond, p50 on top.
    assert p99_at < p95_at < p50_at
    assert p99["line"]["width"] > p95["line"]["width"] > p50["line"]["width"]
    assert len({p50["marker"]["symbol"], p95["marker"]["symbol"], p99["marker"]["symbol"]}) == 3
    assert p99["marker"]["symbol"] == "square-open" and p99["marker"]["size"] > p95["marker"]["size"]
    assert len({p50["line"]["dash"], p95["line"]["dash"], p99["line"]["dash"]}) == 3
    assert [p50["legendrank"], p95["legendrank"], p99["legendrank"]] == [0, 1, 2]
    assert ttft["layout"]["hovermode"] == "x unified"  # the hover lists all three

    assert "Requests per minute, averaged per 15-minute bucket" in titles
    rates = specs[titles.index(next(t for t in titles if t.startswith("Share of requests")))]
    (flag,) = [t for t in rates["data"] if t["name"] == "v1: flagged (prompt or answer)"]
    assert "prompt" in flag["hovertemplate"] and "answer" in flag["hovertemplate"]
    summary = _table(at, "flagged (prompt or answer)").set_index("model version")
    assert summary.loc["v1", "flagged (prompt or answer)"] == "50.00 %"
    assert summary.loc["v1", "prompt flagged"] == "50.00 %" and summary.loc["v1", "answer flagged"] == "0.00 %"


def test_an_admin_sets_a_target_on_the_page_and_the_charts_draw_it(page_env, make_user):
    admin = make_user("ada", "admin")
    _seed(page_env, datetime.now(UTC))
    with page_env.db.session() as s:
        audit_q.append_event(s, actor="system", action="model.switch", object_type="model_version", object_id="v2",
                             details={"from": "v1", "to": "v2", "seconds": 2.0})
    at = _page(admin)
    at.run()
    at.selectbox(key="slo_choice").set_value("p95 time to first token (ms)")
    at.number_input(key="slo_threshold").set_value(35.0)
    at.button[0].click()  # the form's "Set target"
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Target set: p95 time to first token" in s.value for s in at.success)
    with page_env.db.session(readonly=True) as s:
        assert [e.details["threshold"] for e in audit_q.iter_events(s, action="slo.set")] == [35.0]
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert any(shape.get("y0") == 35.0 for shape in spec["layout"].get("shapes", []))  # the target line
    assert _table(at, "requests in the bucket")["target"].str.contains("time to first token").all()
    assert "goodput" in " ".join(_table(at, "requests that reached the model").columns)
    assert any("switch to v2" in a.get("text", "") for a in spec["layout"]["annotations"])  # the switch marker
    assert list(_table(at, "switched")["to"]) == ["v2"]


def test_the_page_says_when_overhead_is_not_recorded_and_when_nothing_happened(page_env, make_user):
    analyst = make_user("ana", "analyst")
    now = datetime.now(UTC)
    _record(page_env, now - timedelta(minutes=2), "v1", ttft_ms=80, e2e_ms=900)
    at = _page(analyst)
    at.run()
    assert not at.exception
    assert "overhead (safety scans before and after, storage) is not recorded" in _texts(at)
    overhead = _table(at, "part")
    assert set(overhead[overhead["part"].str.startswith("console")]["p50"]) == {"not recorded"}
    at.selectbox(key="dash_traffic").set_value("synthetic (load tests)").run()
    assert "No requests in this window with these filters." in _texts(at)
    assert not at.get("plotly_chart")


def test_a_reviewer_cannot_open_the_page(page_env, make_user):
    at = _page(make_user("rita", "reviewer"))
    at.run()
    assert any("do not allow" in e.value for e in at.error)
    assert not at.get("plotly_chart")


# --- the benchmark -------------------------------------------------------------------------------------------------


def test_the_benchmark_runs_on_a_small_database(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_CONSOLE_DATA_DIR", str(tmp_path))
    assert cli_main(["bench", "dashboard", "--rows", "2000", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == 2000 and result["thirty_day_requests"] > 1500  # 5 % synthetic, left out
    assert 100 < result["seven_day_buckets"] <= 168 and result["thirty_day_buckets"] == 120  # hours, 6-hour buckets
    for key in ("seven_day_ms", "thirty_day_ms", "store_overhead_ms", "record_exchange_ms"):
        assert isinstance(result[key], float)


def test_operators_start_a_load_test_from_the_page_and_analysts_do_not_see_it(page_env, make_user, monkeypatch):
    from console.services import loadtest

    # The last load test is the process's: one an earlier test ran in this process would show instead.
    monkeypatch.setattr(loadtest, "_current", None)
    ana = make_user("ana", "analyst")
    at = _page(ana).run()
    assert not at.exception
    assert "Start load test" not in [b.label for b in at.button]
    olivia = make_user("olivia", "operator")
    at = _page(olivia).run()
    assert "Start load test" in [b.label for b in at.button]
    assert "No load test has run in this console process yet." in _texts(at)
    at.number_input(key="load_n").set_value(2)
    at.number_input(key="load_t").set_value(5)
    next(b for b in at.button if b.label == "Start load test").click().run()
    assert not at.exception
    # This test process serves no model: the refusal says why, and nothing started.
    assert [e.value for e in at.error] == ["No model is being served, so there is nothing to load\\-test\\."]
    assert "No load test has run in this console process yet." in _texts(at)


def test_only_the_starter_or_an_admin_is_offered_the_stop_button(page_env, make_user, monkeypatch):
    from console.services import loadtest

    olivia = make_user("olivia", "operator")
    otto = make_user("otto", "operator")
    ada = make_user("ada", "admin")
    run = loadtest.LoadRun(run_id="r1", prompt_set="support", concurrency=1, seconds=60, model_version="v1",
                           started_by="olivia", started_at=datetime.now(UTC), started_by_id=olivia.user_id)
    # A run as the page sees it (its threads not started: the page only reads its report).
    monkeypatch.setattr(loadtest, "_current", loadtest._Runner(page_env, olivia, run, ("hi",), 8))
    for who, offered in [(olivia, True), (ada, True), (otto, False)]:
        at = _page(who).run()
        assert not at.exception, [e.value for e in at.exception]
        assert ("Stop the load test" in [b.label for b in at.button]) is offered, who.username
        assert ("Only olivia, who started it, or an admin can stop it." in _texts(at)) is not offered
