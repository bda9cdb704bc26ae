"""Browser journey (issue 25, item 3): an admin sets a spot-check rule on the Review quality page, the console's own
job draws unflagged exchanges into the queue, a reviewer decides them like any item, and the page shows the miss
rate with its interval."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.conftest import STRONG_PASSWORD
from tests.e2e_support import ARTIFACTS, chromium, cli, console_env, running_console, sign_in_with_cookie

pytestmark = pytest.mark.e2e


def _store_unflagged(data: Path, n: int) -> None:
    """``n`` answered exchanges of the operator olga that nothing flagged, as the chat flow stores them."""
    from db import chat as chat_q
    from db import users as users_q
    from db.chat import TurnRecord
    from db.config import DbConfig
    from db.database import Database
    from db.safety import FindingRecord

    db = Database(DbConfig(url=f"sqlite:///{data / 'console.db'}"))
    try:
        with db.session() as s:
            olga = users_q.get_user_by_username(s, "olga")
            assert olga is not None
            for i in range(n):
                conversation = chat_q.create_conversation(s, user_id=olga.id, actor="olga")
                chat_q.store_turn(s, TurnRecord(
                    conversation_id=conversation.id, user_id=olga.id, actor="olga", model_version="tiny-e2e",
                    prompt=f"Where is my order number {1000 + i}?", response="It ships tomorrow.",
                    prompt_action="allow", output_action="allow", policy_version=1,
                    findings=(FindingRecord(direction="prompt", detector="detoxify", label="toxicity", score=0.01,
                                            action="allow", start=None, end=None),)))
    finally:
        db.dispose()


def _spot_items(data: Path) -> int:
    from db.config import DbConfig
    from db.database import Database
    from db.tables import ReviewItem

    db = Database(DbConfig(url=f"sqlite:///{data / 'console.db'}"))
    try:
        with db.session(readonly=True) as s:
            return int(s.scalar(select(func.count()).select_from(ReviewItem)
                                .where(ReviewItem.reason == "spot_check")) or 0)
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("e2e-spot-checks")
    env = console_env(data, LLM_CONSOLE_ENGINE_AUTOSTART="false", LLM_CONSOLE_SAFETY_ENABLED="false",
                      LLM_CONSOLE_SPOT_CHECK_SECONDS="2", LLM_CONSOLE_SPOT_CHECK_MIN_DECIDED="2")
    cli(env, "init", "--skip-models")
    for name, role in (("olga", "operator"), ("rex", "reviewer")):
        cli(env, "user", "add", name, "--role", role, "--password-stdin", stdin=STRONG_PASSWORD + "\n")
    _store_unflagged(data, 3)
    with running_console(env, data) as url:
        yield url, data


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def test_admin_sets_a_rule_the_job_draws_a_reviewer_decides_and_the_page_shows_the_miss_rate(console, browser):
    from playwright.sync_api import expect

    url, data = console
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        sign_in_with_cookie(page, url, "admin")
        page.goto(f"{url}/review-quality")
        page.get_by_role("heading", name="Review quality").first.wait_for(timeout=60_000)
        expect(page.get_by_text("No rule: no spot checks are drawn.", exact=False)).to_be_visible(timeout=60_000)
        share = page.get_by_role("spinbutton", name="Share (%)")
        share.fill("100")
        page.get_by_role("spinbutton", name="Daily cap (items)").fill("2")
        page.get_by_role("button", name="Save rule").click()
        expect(page.get_by_text("Rule saved: 100.0 % of every model version, at most 2 a day.")).to_be_visible(
            timeout=60_000)
        expect(page.get_by_role("spinbutton", name="Share (%)")).to_have_value("1.00")  # the form reset
    finally:
        page.close()

    deadline = time.monotonic() + 300  # the job runs every 2 s; a loaded machine may lag far behind
    while _spot_items(data) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert _spot_items(data) == 2  # the cap: 2 of the 3 unflagged exchanges

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        sign_in_with_cookie(page, url, "rex")
        page.goto(f"{url}/review-queue")
        page.get_by_role("heading", name="Review queue").first.wait_for(timeout=60_000)
        page.get_by_role("button", name="Take next").click()
        assert page.get_by_text(":gray-badge", exact=False).count() == 0  # badges render as badges, not markup
        expect(page.get_by_text("check", exact=True).first).to_be_visible(timeout=60_000)
        assert page.get_by_text("spot", exact=False).count() == 0
        page.get_by_text("Confirm violation").first.click()
        category = page.get_by_role("combobox", name="Category (for a violation)").first
        category.click()
        page.keyboard.type("PII leak")
        page.keyboard.press("Enter")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "spot-check-item.png"), full_page=True)
        page.get_by_role("button", name="Decide").first.click()
        expect(page.get_by_text("confirm violation recorded", exact=False)).to_be_visible(timeout=60_000)
        page.get_by_text("No violation").first.click()
        page.get_by_role("button", name="Decide").first.click()
        expect(page.get_by_text("no violation recorded; the queue is empty", exact=False)).to_be_visible(
            timeout=60_000)

        page.goto(f"{url}/review-quality")
        page.get_by_role("heading", name="Review quality").first.wait_for(timeout=60_000)
        expect(page.get_by_text("2 spot checks decided in the last 30 days", exact=False)).to_be_visible(
            timeout=60_000)
        table = page.locator("[data-testid='stDataFrame']").first
        table.wait_for(timeout=60_000)
        assert page.get_by_role("button", name="Save rule").count() == 0  # reviewers read the rules only
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review-quality.png"), full_page=True)
    finally:
        page.close()
    # The figures the table shows (a canvas grid, not DOM text), read back from the same service.
    from console.services import spot_checks as spot
    from console.services.access import Principal
    from console.services.context import AppContext
    from console.settings import Settings
    from db import users as users_q
    from db.config import DbConfig
    from db.database import Database

    db = Database(DbConfig(url=f"sqlite:///{data / 'console.db'}"))
    try:
        with db.session(readonly=True) as s:
            rex = users_q.get_user_by_username(s, "rex")
            assert rex is not None
        ctx = AppContext(Settings.from_env({"LLM_CONSOLE_DATA_DIR": str(data),
                                            "LLM_CONSOLE_SPOT_CHECK_MIN_DECIDED": "2"}), db)
        report = spot.report(ctx, Principal(rex.id, "rex", frozenset({"reviewer"})))
        pii = next(f for f in report.families if f.family.name == "pii").miss
        assert (pii.checked, pii.missed, pii.enough) == (2, 1, True)
    finally:
        db.dispose()
