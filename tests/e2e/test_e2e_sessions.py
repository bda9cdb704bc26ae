"""In a real headless Chromium: a signed-in session survives reloads, new tabs and links opened directly, and a
session an admin ends is signed out at its next click. The console is served as `llm-console run` serves it."""

from __future__ import annotations

import pytest

from console import app_pages
from console.services import access
from tests.conftest import STRONG_PASSWORD
from tests.e2e_support import ARTIFACTS, choose_option, chromium, cli, console_env, running_console

pytestmark = pytest.mark.e2e

COOKIE = "__Host-llm_console_session"  # http://localhost is a secure context: Chromium keeps a Secure cookie


@pytest.fixture(scope="module")
def console_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("e2e-sessions")
    env = console_env(data, LLM_CONSOLE_ENGINE_AUTOSTART="false", LLM_CONSOLE_SAFETY_ENABLED="false")
    cli(env, "init", "--skip-models")
    cli(env, "user", "add", "ana", "--role", "analyst", "--password-stdin", stdin=STRONG_PASSWORD + "\n")
    cli(env, "user", "add", "op", "--role", "operator", "--password-stdin", stdin=STRONG_PASSWORD + "\n")
    with running_console(env, data) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def _sign_in_at(page, address: str, username: str) -> None:
    """Open ``address`` signed out, sign in there, and wait until the browser holds its session cookie."""
    page.goto(address)
    page.get_by_role("textbox", name="Username").fill(username)
    page.get_by_role("textbox", name="Password").fill(STRONG_PASSWORD)
    with page.expect_response(lambda r: r.url.endswith("/auth/session") and r.status == 204, timeout=60_000):
        page.get_by_role("button", name="Sign in").click()


def _signed_in_on(page, url: str, key: str, username: str, address: str | None = None) -> None:
    """Signed in as ``username`` on page ``key``, at that page's own address (or ``address``)."""
    page.get_by_role("button", name="Sign out").wait_for(timeout=60_000)
    page.wait_for_url(address or f"{url}/{app_pages.PAGE_PATHS[key]}", timeout=60_000)
    nav = page.locator("[data-testid='stSidebarNav']")
    nav.wait_for(timeout=60_000)
    assert page.locator("[data-testid='stSidebar']").get_by_text(username, exact=True).count() == 1
    # The sign-in form goes (stale elements of the previous run may linger for a moment) and the page's own
    # title shows.
    page.get_by_role("button", name="Sign in", exact=True).wait_for(state="detached", timeout=60_000)
    page.locator("h1").first.wait_for(timeout=60_000)
    assert page.get_by_text("Page not found").count() == 0


@pytest.mark.parametrize("username,roles,first", [("admin", {"admin", "operator"}, "users"),
                                                   ("ana", {"analyst"}, "audit")])
def test_reloading_every_page_and_opening_links_in_new_tabs_stays_signed_in(console_server, browser, username,
                                                                           roles, first):
    url = console_server
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    # A link opened while signed out (a bookmark, a colleague's link): sign in there and land on that page.
    _sign_in_at(page, f"{url}/{app_pages.PAGE_PATHS[first]}", username)
    _signed_in_on(page, url, first, username)
    cookie = next(c for c in context.cookies() if c["name"] == COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/" and cookie["secure"]
    assert not cookie["domain"].startswith(".")  # host-only: no Domain attribute (the __Host- rule)
    assert page.evaluate("() => document.cookie").find(COOKIE) == -1  # scripts cannot read it
    allowed = access.allowed_pages(roles)
    for key in allowed:
        page.goto(f"{url}/{app_pages.PAGE_PATHS[key]}")  # each page's own address, as a bookmark opens it
        _signed_in_on(page, url, key, username)
        page.reload()
        _signed_in_on(page, url, key, username)
    page.goto(f"{url}/")  # the root address opens the first page
    _signed_in_on(page, url, allowed[0], username, f"{url}/")
    page.get_by_role("main").locator("h1").filter(has_text=app_pages.PAGE_TABLE[allowed[0]][1]).wait_for(
        timeout=60_000)
    last = allowed[-1]
    tab = context.new_page()
    tab.goto(f"{url}/{app_pages.PAGE_PATHS[last]}")
    _signed_in_on(tab, url, last, username)
    ARTIFACTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"session-new-tab-{username}.png"), full_page=True)
    context.close()


def test_a_session_an_admin_ends_is_signed_out_at_its_next_click(console_server, browser):
    url = console_server
    user = browser.new_context(viewport={"width": 1400, "height": 1000})
    op_page = user.new_page()
    _sign_in_at(op_page, f"{url}/{app_pages.PAGE_PATHS['dashboard']}", "op")
    _signed_in_on(op_page, url, "dashboard", "op")

    admin = browser.new_context(viewport={"width": 1400, "height": 1000})
    admin_page = admin.new_page()
    _sign_in_at(admin_page, f"{url}/{app_pages.PAGE_PATHS['users']}", "admin")
    _signed_in_on(admin_page, url, "users", "admin")
    admin_page.get_by_role("tab", name="Change a user").click()
    # The tab's own "User" box (the Quotas tab has one too).
    choose_option(admin_page, admin_page.get_by_role("tabpanel", name="Change a user").get_by_test_id(
        "stSelectbox").filter(has_text="User"), "op")
    admin_page.get_by_role("button", name="End session").first.wait_for(timeout=60_000)
    assert admin_page.get_by_role("button", name="End session").count() == 1  # op's one open session
    admin_page.get_by_role("button", name="End session").click()
    admin_page.get_by_text("they are signed out at their next click").wait_for(timeout=60_000)

    op_page.locator("[data-testid='stSidebarNav']").get_by_role("link", name=app_pages.PAGE_TABLE["chat"][1]).click()
    op_page.get_by_text("An admin ended your session").wait_for(timeout=60_000)
    assert op_page.get_by_role("button", name="Sign in", exact=True).count() == 1
    op_page.reload()  # the ended session's cookie does not sign the browser back in
    op_page.get_by_role("button", name="Sign in").wait_for(timeout=60_000)
    assert op_page.get_by_role("button", name="Sign out").count() == 0
    op_page.screenshot(path=str(ARTIFACTS / "session-ended.png"), full_page=True)
    user.close()
    admin.close()
