"""Latency dashboards: per-version percentiles and throughput against numbers worked out by hand."""

from __future__ import annotations

from datetime import timedelta

import pytest
from streamlit.testing.v1 import AppTest

from console import app_pages
from console.services import dashboard
from console.services.errors import InvalidInput
from console.ui import UiSession
from db import chat as chat_q


def _exchange(ctx, user, version, ttft, e2e, tokens, when, status="ok"):
    with ctx.db.session() as s:
        conv = chat_q.create_conversation(s, user_id=user.user_id, actor=user.username, title="t")
        chat_q.store_turn(s, chat_q.TurnRecord(
            conversation_id=conv.id, user_id=user.user_id, actor=user.username, model_version=version,
            prompt="p", response="r", status=status, created_at=when,
            timings=chat_q.ExchangeTimings(ttft_ms=ttft, e2e_ms=e2e, itl_ms=(e2e - ttft) / max(tokens - 1, 1),
                                           output_tokens=tokens, tokens_per_s=tokens / (e2e / 1000)),
        ))


@pytest.fixture
def seeded(ctx, make_user, clock):
    op = make_user("olivia", "operator")
    minute = clock.now.replace(second=0, microsecond=0) - timedelta(minutes=5)
    for ttft, e2e in [(10, 100), (20, 200), (30, 300), (40, 400)]:
        _exchange(ctx, op, "v1", ttft, e2e, 60, minute + timedelta(seconds=ttft))
    _exchange(ctx, op, "v2", 50, 500, 30, minute)
    _exchange(ctx, op, "v2", 5, 5, 1, minute, status="error")  # not answered: left out
    _exchange(ctx, op, "v1", 1, 1, 1, clock.now - timedelta(days=3))  # outside the 24-hour window
    return op


def test_summary_gives_per_version_percentiles_and_leaves_out_failures_and_old_requests(ctx, seeded):
    report = dashboard.latency(ctx, seeded, "last 24 hours")
    rows = {r["model version"]: r for r in report.summary.to_dict("records")}
    assert rows["v1"]["requests"] == 4 and rows["v2"]["requests"] == 1
    assert rows["v1"]["ttft_ms p50"] == 25.0  # median of 10, 20, 30, 40
    assert rows["v1"]["e2e_ms p95"] == pytest.approx(385.0)  # linear interpolation at 0.95 of 100..400
    assert rows["v1"]["output tokens"] == 240
    assert report.versions == ["v1", "v2"]


def test_throughput_is_output_tokens_per_second_per_minute_and_version(ctx, seeded):
    report = dashboard.latency(ctx, seeded, "last 24 hours")
    by_version = {r["model_version"]: r for r in report.throughput.to_dict("records")}
    assert by_version["v1"]["requests"] == 4 and by_version["v1"]["tokens_per_s"] == 4.0  # 240 tokens / 60 s
    assert by_version["v2"]["tokens_per_s"] == 0.5


def test_a_version_filter_and_a_bad_window(ctx, seeded):
    assert list(dashboard.latency(ctx, seeded, "last 7 days", "v2").summary["model version"]) == ["v2"]
    assert dashboard.latency(ctx, seeded, "last 7 days").summary.set_index("model version").loc["v1", "requests"] == 5
    with pytest.raises(InvalidInput, match="Unknown time window"):
        dashboard.latency(ctx, seeded, "since forever")


def test_the_latency_page_draws_the_charts(ctx, seeded, tmp_path, monkeypatch):
    import streamlit as st

    from tests.conftest import console_env

    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    at = AppTest.from_file(str(app_pages.PAGES_DIR / "dashboard.py"), default_timeout=60)
    at.session_state["llm_console_session"] = UiSession(principal=seeded)
    at.run()
    assert not at.exception
    assert [h.value for h in at.subheader] == ["Throughput", "Latency per request"]
    assert len(at.get("plotly_chart")) == 3
    st.cache_resource.clear()
