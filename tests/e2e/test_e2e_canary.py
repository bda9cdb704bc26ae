"""A canary release in a real headless Chromium: admin ada asks for a canary promotion of v2 with a plan, admin bob
approves it, the Promotions page shows the running canary with its plan, bob stops it and the page shows it rolled
back, production never having moved.

The console runs as `llm-console run` serves it, without an engine (``LLM_CONSOLE_ENGINE_AUTOSTART=false``): the
journey is the request, the second person's approval and the stop; which engine answers a canary's conversations
is tested in tests/canary/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import STRONG_PASSWORD
from tests.e2e_support import ARTIFACTS, choose_option, chromium, cli, console_env, running_console, sign_in

pytestmark = pytest.mark.e2e
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("e2e-canary")
    env = console_env(data, LLM_CONSOLE_ENGINE_AUTOSTART="false", LLM_CONSOLE_SAFETY_ENABLED="false",
                      LLM_CONSOLE_LOGIN_ATTEMPTS_PER_MINUTE="1000")
    cli(env, "init", "--skip-models")
    _set_up(data, tiny_model_dir)
    with running_console(env, data) as url:
        yield url, data


def _db(data: Path) -> Any:
    from db.config import DbConfig
    from db.database import Database

    return Database(DbConfig(url=f"sqlite:///{data / 'console.db'}"))


def _set_up(data: Path, model_dir: Path) -> None:
    """Two versions (v1 in production) and two admins, written in-process (a command each would cost seconds)."""
    from console.services.auth import hash_password
    from db import model_versions as versions_q
    from db import users as users_q

    db = _db(data)
    try:
        with db.session() as s:
            v1, _ = (versions_q.register_model_version(s, name=name, source=str(model_dir), actor="test")
                     for name in ("v1", "v2"))
            versions_q.move_alias(s, "production", v1, actor="test", actor_id=None, reason="the first version")
            for username in ("ada", "bob"):
                users_q.create_user(s, username, hash_password(STRONG_PASSWORD), ("admin",), actor="system")
    finally:
        db.dispose()


def _open_promotions(page: Any, url: str, username: str) -> None:
    sign_in(page, url, username)
    page.locator("[data-testid='stSidebarNav']").get_by_text("Promotions", exact=True).click()
    page.get_by_role("heading", name="Promotions").first.wait_for(timeout=TIMEOUT_MS)


def _shows(page: Any, text: str | re.Pattern[str], name: str) -> None:
    try:
        page.get_by_text(text).first.wait_for(timeout=TIMEOUT_MS)
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"canary-{name}-failure.png"), full_page=True)
        raise


def _request(data: Path) -> tuple[str, str | None, dict[str, Any] | None]:
    from sqlalchemy import select

    from db import model_versions as versions_q
    from db.tables import PromotionRequest

    db = _db(data)
    try:
        with db.session(readonly=True) as s:
            row = s.scalars(select(PromotionRequest)).one()
            holder = versions_q.version_for_alias(s, "production")
            return row.status, None if holder is None else holder.name, row.canary_plan
    finally:
        db.dispose()


def test_a_canary_is_requested_approved_by_another_admin_shown_running_and_stopped(console) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    url, data = console
    with chromium() as browser:
        ada = browser.new_context(viewport={"width": 1400, "height": 1400}).new_page()
        _open_promotions(ada, url, "ada")
        ada.get_by_role("tab", name="Request").click()
        ada.get_by_text("Release as a canary", exact=False).click()
        share = ada.get_by_role("spinbutton", name="Share of new conversations sent to the candidate (%)")
        share.wait_for(timeout=TIMEOUT_MS)
        choose_option(ada, ada.get_by_test_id("stForm").get_by_test_id("stSelectbox").filter(has_text="Version"),
                      "v2")
        ada.get_by_role("textbox", name="Reason (recorded)").fill("a fifth of new chats first")
        share.fill("20")
        share.press("Tab")
        minutes = ada.get_by_role("spinbutton", name=re.compile(r"^Time box \(minutes"))
        minutes.fill("45")
        minutes.press("Tab")
        ada.get_by_role("button", name="Request promotion").click()
        _shows(ada, re.compile(r"Canary request #\d+ to move production to v2 waits"), "request")
        status, production, plan = _request(data)
        assert (status, production) == ("pending", "v1")
        assert plan is not None and (plan["share"], plan["minutes"]) == (0.2, 45)

        bob = browser.new_context(viewport={"width": 1400, "height": 1400}).new_page()
        _open_promotions(bob, url, "bob")
        _shows(bob, "20% of new conversations go to the candidate for up to 45 minutes", "pending")
        bob.get_by_role("textbox", name="Note (recorded)").fill("watch the flags")
        # v2 was never evaluated: its gates fail, so approving needs an override reason (recorded).
        bob.get_by_role("textbox", name=re.compile(r"^Override reason")).fill("the canary is the evaluation")
        bob.get_by_role("button", name="Approve and start the canary").click()
        _shows(bob, re.compile(r"the canary of v2 runs until \d\d:\d\d UTC"), "approve")
        _shows(bob, re.compile(r"Canary #\d+: v2 beside v1"), "running")
        _shows(bob, re.compile(r"4[45] min left"), "running")
        _shows(bob, "approved by bob: watch the flags", "running")
        assert _request(data)[:2] == ("canary", "v1")
        ARTIFACTS.mkdir(exist_ok=True)
        bob.screenshot(path=str(ARTIFACTS / "canary-running.png"), full_page=True)

        bob.get_by_role("textbox", name="Why stop it (recorded)").fill("seen enough")
        bob.get_by_role("button", name="Stop canary (roll back)").click()
        _shows(bob, re.compile(r"Canary #\d+ is stopped: every conversation goes to v1 again"), "stop")
        _shows(bob, re.compile(r"Canary #\d+ of v2: rolled back"), "stop")
        expect(bob.get_by_role("heading", name=re.compile(r"Canary #\d+: v2 beside"))).to_have_count(0)
        expect(bob.locator("[data-testid='stException']")).to_have_count(0)
        assert _request(data)[:2] == ("rolled_back", "v1")
        bob.screenshot(path=str(ARTIFACTS / "canary-stopped.png"), full_page=True)
