"""AppTest of the Models page: serve, restart, aliases, retire, register; forms open empty after a success."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import app_pages
from console.services import models as models_svc
from console.services import serving
from console.ui import UiSession
from db import model_versions as versions_q
from db import state as state_q
from tests.conftest import console_env

SESSION_KEY = "llm_console_session"


@pytest.fixture
def page(tmp_path, monkeypatch, ctx, make_user, tiny_model_dir):  # noqa: ANN001
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny-b"))
    for name, source in (("tiny-a", tiny_model_dir), ("tiny-b", copy)):
        models_svc.register_cli(ctx, name=name, source=str(source), revision=None, dtype="float32",
                                max_model_len=None, engine_args={}, description=f"{name} notes")
    serving.serve_cli(ctx, "tiny-a", "first")
    at = AppTest.from_file(str(app_pages.PAGES_DIR / "models.py"), default_timeout=60)
    at.session_state[SESSION_KEY] = UiSession(principal=make_user("ada", "admin"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    yield at
    st.cache_resource.clear()


def _table(at: AppTest, column: str):  # noqa: ANN202 - a pandas DataFrame
    # AppTest does not expose a dataframe's key; find the table by a column only it has.
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _round(at: AppTest) -> int:
    return at.session_state[SESSION_KEY].models.round


def test_versions_table_shows_stage_aliases_and_fingerprint(page: AppTest) -> None:
    table = _table(page, "fingerprint")
    rows = {r["name"]: r for r in table.to_dict("records")}
    assert rows["tiny-a"]["stage"] == "production" and rows["tiny-b"]["stage"] == "registered"
    assert len(rows["tiny-a"]["fingerprint"]) == 12


def test_serving_a_version_moves_production_and_the_form_opens_empty(page: AppTest, ctx) -> None:  # noqa: ANN001
    r = _round(page)
    page.selectbox(key=f"serve_version_{r}").select("tiny-b")
    page.text_input(key=f"serve_reason_{r}").input("answers better")
    page.button(key=f"FormSubmitter:serve_form_{r}-Serve this version").click()
    page.run()
    assert not page.exception
    assert any("tiny-b now holds production" in s.value.replace("\\", "") for s in page.success)
    with ctx.db.session() as s:
        assert versions_q.version_for_alias(s, "production").name == "tiny-b"
    r2 = _round(page)
    assert r2 == r + 1
    assert page.selectbox(key=f"serve_version_{r2}").value is None
    assert page.text_input(key=f"serve_reason_{r2}").value == ""


def test_serving_without_a_reason_is_refused_and_nothing_moves(page: AppTest, ctx) -> None:  # noqa: ANN001
    r = _round(page)
    page.selectbox(key=f"serve_version_{r}").select("tiny-b")
    page.button(key=f"FormSubmitter:serve_form_{r}-Serve this version").click()
    page.run()
    assert any("Give a reason" in e.value for e in page.error)
    with ctx.db.session() as s:
        assert versions_q.version_for_alias(s, "production").name == "tiny-a"


def test_restart_request_bumps_the_generation(page: AppTest, ctx) -> None:  # noqa: ANN001
    r = _round(page)
    page.text_input(key=f"restart_reason_{r}").input("engine died")
    page.button(key=f"FormSubmitter:restart_form_{r}-Restart the engine").click()
    page.run()
    assert any("Restart requested" in s.value.replace("\\", "") for s in page.success)
    with ctx.db.session() as s:
        assert state_q.get_state(s, serving.RESTART_KEY)["generation"] == 1


def test_alias_then_retire_shows_in_history(page: AppTest, ctx) -> None:  # noqa: ANN001
    r = _round(page)
    page.selectbox(key=f"alias_version_{r}").select("tiny-b")
    page.text_input(key=f"alias_name_{r}").input("staging")
    page.text_input(key=f"alias_reason_{r}").input("QA")
    page.button(key=f"FormSubmitter:alias_form_{r}-Point the alias at this version").click()
    page.run()
    assert any("staging now points at tiny-b" in s.value.replace("\\", "") for s in page.success)
    r = _round(page)
    page.selectbox(key=f"retire_version_{r}").select("tiny-b")
    page.text_input(key=f"retire_reason_{r}").input("superseded")
    page.button(key=f"FormSubmitter:retire_form_{r}-Retire").click()
    page.run()
    assert any("tiny-b is retired" in s.value.replace("\\", "") for s in page.success)
    history = _table(page, "reason")
    assert list(history["alias"])[:2] == ["staging", "staging"]
    assert list(history["to"])[:2] == ["(removed)", "tiny-b"]
    r = _round(page)
    assert "tiny-b" not in page.selectbox(key=f"serve_version_{r}").options


def test_registering_a_directory_without_a_readable_config_stores_nothing(page: AppTest, ctx, tmp_path) -> None:  # noqa: ANN001
    bad = tmp_path / "bad-model"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    r = _round(page)
    page.text_input(key=f"model_name_{r}").input("bad-model")
    page.text_input(key=f"model_source_{r}").input(str(bad))
    page.button(key=f"FormSubmitter:register_model_{r}-Register").click()
    page.run()
    assert any("cannot read the model config" in e.value for e in page.error)
    with ctx.db.session() as s:
        assert versions_q.get_model_version_by_name(s, "bad-model") is None
