"""The role matrix in a real headless Chromium: for each role, every page opened by its address is shown or
refused exactly as ``console.services.access`` (``PAGES`` and ``ACTIONS``) says.

The console runs as `llm-console run` serves it, without an engine (``LLM_CONSOLE_ENGINE_AUTOSTART=false``).
A full page load starts a new Streamlit session (signed out), so pages are opened inside the signed-in session:
the ones the sidebar lists by their link, the others by their address through the browser's history API
(``pushState`` and a ``popstate`` event, what the back button does), which is how a typed or bookmarked address
of a hidden page reaches the app's router.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from console.app_pages import PAGE_PATHS, PAGE_TABLE
from console.services.access import ACTIONS, PAGES, allowed, allowed_pages
from tests.conftest import STRONG_PASSWORD
from tests.e2e_support import ARTIFACTS, chromium, cli, console_env, running_console, sign_in

pytestmark = pytest.mark.e2e
TIMEOUT_MS = 30_000

# One user per role.
USERS = {"operator": "opal", "reviewer": "rex", "admin": "ada", "analyst": "ana"}
# The title each page's own script puts at its top: seeing it means the page's content ran.
HEADINGS = {
    "chat": "Chat",
    "dashboard": "Latency and traffic",
    "review": "Review queue",
    "escalations": "Escalations",
    "review_quality": "Review quality",
    "models": "Model versions",
    "promotions": "Promotions",
    "evaluations": "Evaluations",
    "compare": "Side by side",
    "users": "Users",
    "policy": "Safety policy",
    "audit": "Audit log",
    "alerts": "Alerts",
}
REFUSAL = "do not allow"


def test_the_matrix_covers_every_page_of_the_router() -> None:
    assert set(HEADINGS) == set(PAGE_TABLE) == set(PAGES)


@pytest.fixture(scope="module")
def console_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("e2e-roles")
    env = console_env(data, LLM_CONSOLE_ENGINE_AUTOSTART="false", LLM_CONSOLE_SAFETY_ENABLED="false",
                      # Every role signs in from the same address; the sign-in throttle is not under test here.
                      LLM_CONSOLE_LOGIN_ATTEMPTS_PER_MINUTE="1000")
    cli(env, "init", "--skip-models")
    for role, username in USERS.items():
        cli(env, "user", "add", username, "--role", role, "--password-stdin", stdin=STRONG_PASSWORD + "\n")
    with running_console(env, data) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def _sign_in(page: Any, url: str, username: str) -> None:
    sign_in(page, url, username)
    page.locator("[data-testid='stSidebarNav']").wait_for(timeout=TIMEOUT_MS)


def _open_by_address(page: Any, url: str, key: str) -> None:
    """Open /key in the running session, as the browser's back and forward buttons do (no page load)."""
    page.evaluate("(u) => { window.history.pushState({}, '', u);"
                  " window.dispatchEvent(new PopStateEvent('popstate', {state: {}})); }", f"{url}/{PAGE_PATHS[key]}")


def _expect_address(page: Any, url: str, key: str, home: str) -> None:
    """The address bar shows the page: /key, or the console's root for the landing page."""
    from playwright.sync_api import expect

    expect(page).to_have_url(re.compile(re.escape(url) + ("/?$" if key == home else f"/{PAGE_PATHS[key]}$")))


def _expect_shown(page: Any, key: str) -> None:
    from playwright.sync_api import expect

    main = page.get_by_role("main")
    expect(main.locator("h1")).to_have_text(HEADINGS[key], timeout=TIMEOUT_MS)
    expect(main.get_by_text(REFUSAL)).to_have_count(0, timeout=TIMEOUT_MS)
    expect(main.locator("[data-testid='stException']")).to_have_count(0)


def _expect_refused(page: Any, key: str, roles: str) -> None:
    from playwright.sync_api import expect

    main = page.get_by_role("main")
    alert = main.locator("[data-testid='stAlert']").filter(has_text=REFUSAL)
    expect(alert).to_have_count(1, timeout=TIMEOUT_MS)
    # The refusal names the user's roles and what the page is for, and nothing of the page itself ran.
    expect(alert).to_contain_text(roles)
    expect(alert).to_contain_text(ACTIONS[PAGES[key]][1])
    expect(main.locator("h1")).to_have_count(0, timeout=TIMEOUT_MS)
    expect(main.locator("[data-testid='stAlert']")).to_have_count(1)
    expect(main.locator("[data-testid='stException']")).to_have_count(0)


@pytest.mark.parametrize("role", list(USERS))
def test_each_page_opened_by_its_address_is_shown_or_refused_as_the_access_table_says(
        console_url: str, browser: Any, role: str) -> None:
    roles = frozenset({role})
    listed = allowed_pages(roles)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        _sign_in(page, console_url, USERS[role])
        nav = page.locator("[data-testid='stSidebarNav']")
        home = listed[0]
        _expect_shown(page, home)  # the first page the role may open is the landing page
        for key, (_, title, _, _) in PAGE_TABLE.items():
            assert nav.get_by_text(title, exact=True).count() == (1 if key in listed else 0), (role, key)

        for key in PAGE_TABLE:
            if allowed(roles, PAGES[key]):
                nav.get_by_text(PAGE_TABLE[key][1], exact=True).click()
                _expect_address(page, console_url, key, home)
                _expect_shown(page, key)
                # The same page by its address, in the same session.
                _open_by_address(page, console_url, home if key != home else listed[-1])
                _open_by_address(page, console_url, key)
                _expect_shown(page, key)
            else:
                # Start from a page that is shown, so a refusal seen next is this page's own.
                nav.get_by_text(PAGE_TABLE[home][1], exact=True).click()
                _expect_shown(page, home)
                _open_by_address(page, console_url, key)
                _expect_refused(page, key, role)
                _expect_address(page, console_url, key, home)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"roles-{role}.png"), full_page=True)
        # Still signed in as the same user after every refusal: the session was never lost on the way.
        assert page.locator("[data-testid='stSidebar']").get_by_text(USERS[role], exact=True).count() == 1
    finally:
        context.close()
