"""Browser journey (issue 25, item 5): an admin adds a webhook pointing at a real receiver on loopback, sends a test
alert from the page, and sees it delivered in the log; the receiver got it, and the page never shows the URL back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.alerts.conftest import URL_TOKEN, receiver  # noqa: F401 - the loopback receiver fixture
from tests.e2e_support import chromium, cli, console_env, running_console, sign_in_with_cookie


@pytest.fixture(scope="module")
def console_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("e2e-alerts")
    env = console_env(data, LLM_CONSOLE_ENGINE_AUTOSTART="false", LLM_CONSOLE_SAFETY_ENABLED="false")
    cli(env, "init", "--skip-models")
    with running_console(env, data) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def test_an_admin_adds_a_webhook_sends_a_test_alert_and_sees_it_delivered(console_url, browser, receiver):  # noqa: F811
    from playwright.sync_api import expect

    page = browser.new_page()
    try:
        sign_in_with_cookie(page, console_url, "admin")
        page.goto(f"{console_url}/alerts")
        page.get_by_role("heading", name="Alerts").first.wait_for(timeout=60_000)
        page.get_by_label("Name", exact=True).first.fill("on-call")
        page.get_by_label("URL", exact=True).first.fill(receiver.url)
        page.get_by_role("button", name="Add webhook").click()
        expect(page.get_by_text(f"Webhook on-call added (http[:]//127.0.0.1:{receiver.port}/…).")).to_be_visible(
            timeout=60_000)
        expect(page.get_by_label("Name", exact=True).first).to_have_value("")  # the form reset
        page.get_by_role("tab", name="Change a webhook").click()
        page.get_by_role("button", name="Send test alert").click()
        expect(page.get_by_text("Test alert sent to on-call: 1 delivered.")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Newest delivery: #1 to on-call: delivered (attempt 1 of 4, HTTP 200).")
               ).to_be_visible(timeout=60_000)
        assert len(receiver.requests) == 1
        assert receiver.requests[0].json()["alert"]["kind"] == "test"
        assert URL_TOKEN not in page.content()
    finally:
        page.close()
