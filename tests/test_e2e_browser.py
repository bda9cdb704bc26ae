"""End to end in a real headless Chromium: the console as `llm-console run` serves it, with a real engine."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.conftest import STRONG_PASSWORD
from tests.e2e_support import ARTIFACTS, chromium, cli, console_env, running_console, sign_in

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def console_server(tmp_path_factory, tiny_model_dir):
    data = tmp_path_factory.mktemp("e2e-data")
    env = console_env(data, LLM_CONSOLE_DEFAULT_MODEL="tiny-e2e", LLM_CONSOLE_KV_CACHE_GIB="0.25")
    cli(env, "init", "--skip-models")
    cli(env, "model", "register", "tiny-e2e", str(tiny_model_dir), "--max-model-len", "512")
    cli(env, "user", "add", "ana", "--role", "analyst", "--password-stdin", stdin=STRONG_PASSWORD + "\n")
    with running_console(env, data) as url:
        yield url, data


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def test_an_operator_signs_in_chats_and_sees_the_streamed_answer_with_its_metrics(console_server, browser):
    url, data = console_server
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    sign_in(page, url, "admin")
    page.get_by_role("heading", name="Chat").wait_for(timeout=60_000)
    box = page.get_by_placeholder("Ask the support model…")
    # The engine loads in the background; the input is enabled once the model is ready.
    page.wait_for_function(
        "() => { const t = document.querySelector('textarea[placeholder^=\"Ask the support model\"]');"
        " return t && !t.disabled; }", timeout=180_000)
    hostile = "Where is my order? <img src=x onerror=alert(1)> **bold**"
    box.fill(hostile)
    box.press("Enter")
    page.get_by_text("tokens/s").first.wait_for(timeout=120_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)
    # The prompt is shown as typed: no HTML element and no markdown emphasis made from it.
    assert page.get_by_text("<img src=x onerror=alert(1)>", exact=False).count() >= 1
    assert page.locator("[data-testid='stChatMessage'] img[src='x']").count() == 0
    assert page.get_by_text("tiny-e2e").count() >= 1
    from db.config import DbConfig
    from db.database import Database
    from db.tables import Exchange

    db = Database(DbConfig(url=f"sqlite:///{data / 'console.db'}"))
    with db.session() as s:
        exchanges = s.query(Exchange).all()
        assert [e.status for e in exchanges] == ["ok"] and exchanges[0].model_version == "tiny-e2e"
    db.dispose()
    page.close()


def test_an_analyst_sees_only_their_pages_and_can_verify_the_audit_chain(console_server, browser):
    url, _ = console_server
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    sign_in(page, url, "ana")
    nav = page.locator("[data-testid='stSidebarNav']")
    nav.wait_for(timeout=60_000)
    assert nav.get_by_text("Audit log").count() == 1
    assert nav.get_by_text("Chat").count() == 0 and nav.get_by_text("Users").count() == 0
    nav.get_by_text("Audit log").click()
    page.get_by_role("button", name="Verify the hash chain").click()
    page.get_by_text("The chain is intact").wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "audit.png"), full_page=True)
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in").wait_for(timeout=30_000)
    assert page.get_by_text("You are signed out.").count() == 1
    page.close()


def test_the_cli_serves_another_version_and_the_running_console_switches_to_it(console_server, browser,
                                                                               tiny_model_dir, tmp_path):
    # Runs last: it changes the served version. The CLI is another process; only the database connects them.
    url, data = console_server
    env = {**os.environ, "LLM_CONSOLE_DATA_DIR": str(data)}
    other = shutil.copytree(tiny_model_dir, tmp_path / "tiny-e2e-b")
    cli(env, "model", "register", "tiny-e2e-b", str(other), "--max-model-len", "512")
    cli(env, "model", "serve", "tiny-e2e-b", "--reason", "end-to-end switch")
    from db import audit as audit_q
    from db.config import DbConfig
    from db.database import Database

    db = Database(DbConfig(url=f"sqlite:///{data / 'console.db'}"))
    deadline, switched = time.monotonic() + 180, []
    while time.monotonic() < deadline and not switched:
        with db.session() as s:
            switched = [e.details for e in audit_q.iter_events(s, action="model.switch")]
        time.sleep(1)
    db.dispose()
    assert switched and switched[-1]["to"] == "tiny-e2e-b" and switched[-1]["from"] == "tiny-e2e"
    assert switched[-1]["requested_by"] == "cli" and switched[-1]["reason"] == "end-to-end switch"
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    sign_in(page, url, "admin")
    page.get_by_text("tiny-e2e-b").first.wait_for(timeout=60_000)  # the sidebar names the live version
    page.locator("[data-testid='stSidebarNav']").get_by_text("Models").click()
    page.get_by_text("Model versions").wait_for(timeout=60_000)
    page.locator("[data-testid='stDataFrame']").first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Serve this version").wait_for(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "models.png"), full_page=True)
    page.close()


def test_links_and_images_in_model_output_are_shown_inert_and_nothing_is_loaded_from_their_host(console_server,
                                                                                                browser):
    url, data = console_server
    hostile = ("Click https://evil.example/?q=secret or www.evil.example/x, "
               "and look: ![x](https://evil.example/p.png) <img src=\"https://evil.example/i.png\">")
    from db import chat as chat_q
    from db import users as users_q
    from db.config import DbConfig
    from db.database import Database

    db = Database(DbConfig(url=f"sqlite:///{data / 'console.db'}"))
    with db.session() as s:  # an answer as a model might give it, stored as the chat flow stores one
        admin = users_q.get_user_by_username(s, "admin")
        conv = chat_q.create_conversation(s, user_id=admin.id, actor="admin", title="Links from the model")
        chat_q.store_turn(s, chat_q.TurnRecord(conversation_id=conv.id, user_id=admin.id, actor="admin",
                                               model_version="tiny-e2e", prompt=f"Repeat: {hostile}",
                                               response=hostile))
    db.dispose()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    sign_in(page, url, "admin")
    page.get_by_role("heading", name="Chat").wait_for(timeout=60_000)
    page.get_by_role("button", name="Links from the model").click()
    page.get_by_text("evil.example/?q=secret", exact=False).first.wait_for(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "links.png"), full_page=True)
    assert page.locator("a[href*='evil.example']").count() == 0
    assert page.locator("img[src*='evil.example']").count() == 0
    assert [r for r in requested if "evil.example" in r] == []
    # Shown defanged, so the operator still reads where the model pointed.
    assert page.get_by_text("https[:]//evil.example/?q=secret", exact=False).count() >= 1
    assert page.get_by_text("www[.]evil.example/x", exact=False).count() >= 1
    page.close()
