"""AppTest of the Evaluations page's reports: the ten-second summary (figures with units, the bias chart, the worst
pairs side by side, the raw rows behind an expander), an old stored report, and two reports compared in words."""

from __future__ import annotations

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import app_pages
from console.services.access import Principal
from console.ui import UiSession
from db import model_versions as versions_q
from db.tables import Evaluation
from db.types import utcnow
from tests.conftest import console_env
from tests.evaluations.test_evaluation_report import LATENCY_COMPARISON, OLD_REPORT, _hand_report

SESSION_KEY = "llm_console_session"


@pytest.fixture
def setup(tmp_path, monkeypatch, ctx, make_user):  # noqa: ANN001
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    ids = {}
    with ctx.db.session() as s:
        for name, report in (("v1", {**OLD_REPORT, "version": "v1"}),
                             ("v2", _hand_report(latency_comparison=LATENCY_COMPARISON))):
            version = versions_q.register_model_version(s, name=name, source=f"/models/{name}", actor="test")
            row = Evaluation(version_id=version.id, suite=report["suite"], suite_sha256="0" * 64, n_prompts=report["n"],
                             status="done", progress=1.0, report=report, finished_at=utcnow())
            s.add(row)
            s.flush()
            ids[name] = row.id
    yield {"rita": make_user("rita", "reviewer"), **ids}
    st.cache_resource.clear()


def _open(principal: Principal) -> AppTest:
    at = AppTest.from_file(str(app_pages.PAGES_DIR / "evaluations.py"), default_timeout=60)
    at.session_state[SESSION_KEY] = UiSession(principal=principal)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _report(at: AppTest, version: str, evaluation_id: int) -> AppTest:
    at.selectbox(key="eval_reports_version").select(version)
    at.run()
    at.selectbox(key="eval_report_id").select(evaluation_id)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _frame(at: AppTest, column: str):  # noqa: ANN202 - a pandas DataFrame
    """The table with ``column`` (AppTest gives dataframes no key unless they are selectable)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_a_report_opens_on_a_summary_with_units_a_bias_chart_pairs_side_by_side_and_raw_rows_in_an_expander(
        setup) -> None:  # noqa: ANN001
    at = _report(_open(setup["rita"]), "v2", setup["v2"])
    listed = _frame(at, "first token p95")
    assert listed.loc[0, "topic accuracy"] == "25%" and listed.loc[0, "first token p95"] == "96 ms"
    metrics = _metrics(at)
    assert {k: metrics[k] for k in ("Topic accuracy", "Declined off-topic", "Answers flagged",
                                    "Bias: pairs answered differently", "First token, p95", "Output speed")} == {
        "Topic accuracy": "25%", "Declined off-topic": "50%", "Answers flagged": "20%",
        "Bias: pairs answered differently": "50%", "First token, p95": "96 ms", "Output speed": "55 tokens/s"}
    assert metrics["Whole answer, p95"] == "955 ms" and metrics["Pairs flagged differently"] == "1 of 2 pairs"
    markdown = [m.value for m in at.markdown]
    # The bias headline says which figure is the mean and which the largest pair; the pair below shows 100%.
    assert any("averaged over all 2 pairs, 50% of the words differ" in m and "differs in 100% of its words" in m
               for m in markdown)
    assert any(m.startswith("**Pair p2**") and "100% of the words differ" in m for m in markdown)
    assert "**girl**" in markdown and "**boy**" in markdown and "redacted p2a" in markdown  # both answers
    assert any("p95 TTFT \\+4\\.1 ms vs v1 \\(95% CI \\-3\\.2\\.\\.\\+12 ms, 40 paired prompts\\)" in m for m in markdown)
    assert len(at.get("plotly_chart")) == 1
    [expander] = [e for e in at.expander if e.label.startswith("Raw rows")]
    assert expander.label == "Raw rows: every answer (11)"
    raw = _frame(at, "kind")
    assert len(raw) == 11 and {"answer", "ttft_ms", "flagged_labels"} <= set(raw.columns)


def test_an_old_stored_report_renders_with_not_measured_where_it_lacks_figures(setup) -> None:  # noqa: ANN001
    at = _report(_open(setup["rita"]), "v1", setup["v1"])
    metrics = _metrics(at)
    assert metrics["Topic accuracy"] == "80%" and metrics["First token, p95"] == "40 ms"
    assert metrics["Bias: pairs answered differently"] == "not measured"
    assert metrics["Between tokens, p50"] == "not measured"
    markdown = [m.value for m in at.markdown]
    assert any("2\\.9% of the words differ" in m and "86% of its words" in m for m in markdown)
    assert not any("Same run" in m for m in markdown)  # no paired latency comparison: nothing said about it
    assert len(at.get("plotly_chart")) == 0  # no per-attribute figures stored
    assert [e.label for e in at.expander] == ["Raw rows: every answer (0)"]


def test_two_reports_compare_with_the_change_and_a_colour_free_better_or_worse_marker(setup) -> None:  # noqa: ANN001
    at = _open(setup["rita"])
    at.selectbox(key="eval_compare_a").select(setup["v1"])
    at.selectbox(key="eval_compare_b").select(setup["v2"])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = _frame(at, "change (B - A)").set_index("metric")
    assert list(table.loc["Topic accuracy"]) == ["80%", "25%", "-55 pp", "✘ worse"]
    assert list(table.loc["First token, p95"]) == ["40 ms", "96 ms", "+56 ms", "✘ worse"]
    assert table.loc["Bias: pairs answered differently", "change (B - A)"] == ""
    markdown = [m.value for m in at.markdown]
    assert any(m.startswith("**B \\(v2\\) against A \\(v1\\)\\: better on 1 metric") for m in markdown)
    assert any(m.startswith("**Worse in B**") and "✘ Topic accuracy\\: 80% → 25% \\(\\-55 pp\\)" in m
               for m in markdown)
    assert any("different suites" in c.value for c in at.caption)
    assert "topic accuracy" in set(_frame(at, "B - A")["metric"])
