"""Browser journey (issue 25, item 6): admin A proposes a policy change on the Policy page (the backtest runs and the
form opens afresh), admin B approves it with the backtest in view, and the policy in force changes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import STRONG_PASSWORD
from tests.e2e_support import chromium, cli, console_env, running_console, sign_in_with_cookie


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    data = tmp_path_factory.mktemp("e2e-policy")
    env = console_env(data, LLM_CONSOLE_ENGINE_AUTOSTART="false")  # the scanners load: the page needs the stack
    cli(env, "init", "--skip-models")
    cli(env, "user", "add", "bea", "--role", "admin", "--password-stdin", stdin=STRONG_PASSWORD + "\n")
    with running_console(env, data) as url:
        yield url, env


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def test_admin_a_proposes_admin_b_approves_and_the_policy_in_force_changes(console, browser):
    from playwright.sync_api import expect

    url, env = console
    a = browser.new_page()
    b = browser.new_page()
    try:
        sign_in_with_cookie(a, url, "admin")
        a.goto(f"{url}/policy")
        a.get_by_role("heading", name="Safety policy").first.wait_for(timeout=120_000)
        a.get_by_role("tab", name="Propose a change").click(timeout=120_000)
        editor = a.get_by_label("Policy (TOML)")
        expect(editor).to_have_value(re.compile(r'version = "'), timeout=60_000)  # the text in force
        text = editor.input_value()
        found = re.search(r'^version = "([^"]+)"', text, re.M)
        assert found is not None, text[:300]
        old_name = found.group(1)
        editor.fill(re.sub(r'^version = "[^"]+"', 'version = "e2e-proposed"', text, count=1, flags=re.M))
        a.get_by_label("Reason for the change").fill("rename for the journey")
        a.get_by_role("button", name="Validate, backtest and request approval").click()
        expect(a.get_by_text("Request #1 is waiting for another admin's approval")).to_be_visible(timeout=120_000)
        a.get_by_role("tab", name="Propose a change").click()
        expect(a.get_by_label("Reason for the change")).to_have_value("")  # the form opened afresh
        a.get_by_role("tab", name=re.compile(r"Pending \(1\)")).click()
        expect(a.get_by_text("You proposed this change: another admin approves or rejects it.")).to_be_visible()
        expect(a.get_by_role("button", name="Approve and put in force")).to_have_count(0)

        sign_in_with_cookie(b, url, "bea")
        b.goto(f"{url}/policy")
        b.get_by_role("heading", name="Safety policy").first.wait_for(timeout=120_000)
        expect(b.get_by_text("rename for the journey")).to_be_visible(timeout=120_000)
        expect(b.get_by_text("Exchanges replayed")).to_be_visible()
        b.get_by_role("button", name="Approve and put in force").click()
        expect(b.get_by_text("Request #1 is approved")).to_be_visible(timeout=120_000)
        expect(b.get_by_test_id("stMetricValue").filter(has_text="e2e-proposed")).to_be_visible()
        assert old_name != "e2e-proposed"
    finally:
        a.close()
        b.close()
    cli(env, "audit", "verify")  # raises unless the chain (with the four policy events) verifies
