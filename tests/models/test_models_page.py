"""AppTest of the Models page: serve, restart, aliases, retire, register; forms open empty after a success."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import app_pages
from console.services import registry, serving
from console.services.access import Principal
from console.ui import UiSession
from db import audit as audit_q
from db import model_versions as versions_q
from db import state as state_q
from tests.conftest import console_env

SESSION_KEY = "llm_console_session"


def _open(tmp_path, monkeypatch, ctx, make_user, tiny_model_dir, *, first: str | None):  # noqa: ANN001, ANN202
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny-b"))
    for name, source in (("tiny-a", tiny_model_dir), ("tiny-b", copy)):
        registry.register(ctx, Principal.shell(ctx), name=name, source=str(source), revision=None, dtype="float32",
                                max_model_len=None, engine_args={}, description=f"{name} notes")
    if first is not None:
        serving.serve(ctx, Principal.shell(ctx), first, "first")
    at = AppTest.from_file(str(app_pages.PAGES_DIR / "models.py"), default_timeout=60)
    at.session_state[SESSION_KEY] = UiSession(principal=make_user("ada", "admin"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def page(tmp_path, monkeypatch, ctx, make_user, tiny_model_dir):  # noqa: ANN001
    """tiny-a holds production (served as the installation's first version)."""
    yield _open(tmp_path, monkeypatch, ctx, make_user, tiny_model_dir, first="tiny-a")
    st.cache_resource.clear()


@pytest.fixture
def empty_page(tmp_path, monkeypatch, ctx, make_user, tiny_model_dir):  # noqa: ANN001
    """A new installation: two versions registered, none holds production yet."""
    yield _open(tmp_path, monkeypatch, ctx, make_user, tiny_model_dir, first=None)
    st.cache_resource.clear()


def _links_to_promotions(at: AppTest) -> bool:
    # st.page_link where the Promotions page is registered (the app); a plain link where the page runs alone.
    links = [e for e in at.get("page_link") if "promotions" in str(getattr(e, "proto", e))]
    return bool(links) or any("](/promotions)" in m.value for m in at.markdown)


def _table(at: AppTest, column: str):  # noqa: ANN202 - a pandas DataFrame
    # AppTest does not expose a dataframe's key; find the table by a column only it has.
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _round(at: AppTest) -> int:
    return at.session_state[SESSION_KEY].models.round


def _point_alias(at: AppTest, version: str, alias: str, reason: str) -> None:
    """Fill in and send the Aliases tab's form: point ``alias`` at ``version``."""
    r = _round(at)
    at.selectbox(key=f"alias_version_{r}").select(version)
    at.text_input(key=f"alias_name_{r}").input(alias)
    at.text_input(key=f"alias_reason_{r}").input(reason)
    at.button(key=f"FormSubmitter:alias_form_{r}-Point the alias at this version").click()
    at.run()


def test_versions_table_shows_stage_aliases_and_fingerprint(page: AppTest) -> None:
    table = _table(page, "fingerprint")
    rows = {r["name"]: r for r in table.to_dict("records")}
    assert rows["tiny-a"]["stage"] == "production" and rows["tiny-b"]["stage"] == "registered"
    assert len(rows["tiny-a"]["fingerprint"]) == 12
    assert rows["tiny-a"]["aliases"] == "production (protected: needs a promotion)"


def test_serving_the_first_version_moves_production_and_then_the_serve_form_is_gone(empty_page: AppTest,  # noqa: ANN001
                                                                                      ctx) -> None:
    page = empty_page
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
    # Production is held now: the page offers no one-person move of it, only the way to a promotion.
    assert not [w for w in page.selectbox if w.key == f"serve_version_{r2}"]
    assert any("Production (tiny-b) is protected" in i.value.replace("\\", "") for i in page.info)
    assert _links_to_promotions(page)


def test_serving_without_a_reason_is_refused_and_nothing_moves(empty_page: AppTest, ctx) -> None:  # noqa: ANN001
    page = empty_page
    r = _round(page)
    page.selectbox(key=f"serve_version_{r}").select("tiny-b")
    page.button(key=f"FormSubmitter:serve_form_{r}-Serve this version").click()
    page.run()
    assert any("The reason for serving a version is required" in e.value for e in page.error)
    with ctx.db.session() as s:
        assert versions_q.get_alias(s, "production") is None


def test_production_shows_as_protected_with_a_link_and_no_control_moves_it(page: AppTest) -> None:
    r = _round(page)
    assert not [w for w in page.selectbox if w.key == f"serve_version_{r}"]
    assert any("Production (tiny-a) is protected" in i.value.replace("\\", "") for i in page.info)
    assert any("Protected aliases" in m.value and "production" in m.value for m in page.markdown)
    assert _links_to_promotions(page)
    assert "tiny-a" not in page.selectbox(key=f"retire_version_{r}").options  # retiring would free production


def test_protecting_an_alias_is_audited_and_its_holder_can_no_longer_be_retired(page: AppTest, ctx) -> None:  # noqa: ANN001
    _point_alias(page, "tiny-b", "staging", "QA")
    r = _round(page)
    page.text_input(key=f"protect_alias_{r}").input("staging")
    page.text_input(key=f"protect_reason_{r}").input("the partner API reads it")
    page.button(key=f"FormSubmitter:protect_form_{r}-Protect this alias").click()
    page.run()
    assert any("staging is protected" in s.value.replace("\\", "") for s in page.success)
    with ctx.db.session() as s:
        assert versions_q.is_protected(s, "staging")
        assert [e.details["alias"] for e in audit_q.iter_events(s, action="model.alias_protect")] == ["staging"]
    r = _round(page)
    assert page.selectbox(key=f"retire_version_{r}").options == []


def test_an_emergency_rollback_is_shown_until_acknowledged(page: AppTest, ctx, make_user) -> None:  # noqa: ANN001
    from console.services import promotion as promotion_svc

    bob, cy = make_user("bob", "admin"), make_user("cy", "admin")
    request = promotion_svc.request_promotion(ctx, bob, "tiny-b", "production", "better")
    promotion_svc.approve(ctx, cy, request.id, "ok", "no evaluation here")
    promotion_svc.rollback(ctx, bob, "tiny-b leaks card numbers")
    page.run()
    assert any("emergency rollback" in w.value and "card numbers" in w.value for w in page.warning)
    move = registry.unacknowledged_emergencies(ctx, cy)[0]
    registry.acknowledge_emergency(ctx, cy, move.id, "seen")
    page.run()
    assert not any("emergency rollback" in w.value for w in page.warning)


def test_restart_request_bumps_the_generation(page: AppTest, ctx) -> None:  # noqa: ANN001
    r = _round(page)
    page.text_input(key=f"restart_reason_{r}").input("engine died")
    page.button(key=f"FormSubmitter:restart_form_{r}-Restart the engine").click()
    page.run()
    assert any("Restart requested" in s.value.replace("\\", "") for s in page.success)
    with ctx.db.session() as s:
        assert state_q.get_state(s, serving.RESTART_KEY)["generation"] == 1


def test_alias_then_retire_shows_in_history(page: AppTest, ctx) -> None:  # noqa: ANN001
    _point_alias(page, "tiny-b", "staging", "QA")
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
    assert "tiny-b" not in page.selectbox(key=f"retire_version_{r}").options
    assert "tiny-b" not in page.selectbox(key=f"alias_version_{r}").options


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
