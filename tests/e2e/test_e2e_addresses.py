"""Page addresses: every page lives at its label's address (``/latency`` for Latency), the old addresses redirect,
a page opened by its address loads without a 404, and no page makes the browser ask any host but the console.

The browser tests run the console as `llm-console run` serves it, without an engine
(``LLM_CONSOLE_ENGINE_AUTOSTART=false``), in headless Chromium, signed in as a user holding every role.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from console import server
from console.app_pages import OLD_PATHS, PAGE_PATHS, PAGE_TABLE, address
from console.services.access import ALL_ROLES, allowed_pages
from tests.conftest import STRONG_PASSWORD
from tests.e2e.test_e2e_roles import HEADINGS
from tests.e2e_support import (
    ARTIFACTS,
    chromium,
    cli,
    console_env,
    running_console,
    sign_in,
    sign_in_with_cookie,
)

TIMEOUT_MS = 60_000
USER = "ada"  # an admin who also holds every other role, so that every page is listed


@pytest.mark.parametrize(("title", "path"), [("Latency", "latency"), ("Review queue", "review-queue"),
                                             ("Side by side", "side-by-side"), ("Audit log", "audit-log")])
def test_a_page_address_is_its_label(title: str, path: str) -> None:
    assert address(title) == path


def test_every_page_has_its_own_address_and_the_old_ones_are_mapped_to_them() -> None:
    assert PAGE_PATHS == {key: address(title) for key, (_, title, _, _) in PAGE_TABLE.items()}
    assert len(set(PAGE_PATHS.values())) == len(PAGE_PATHS)
    assert OLD_PATHS == {"dashboard": "latency", "review": "review-queue", "compare": "side-by-side",
                         "audit": "audit-log"}


def test_the_page_html_tells_streamlit_where_its_server_is_before_its_script_loads() -> None:
    html = server.index_html("/")
    config = html.index("window.__streamlit = {BACKEND_BASE_URL: base, MAIN_PAGE_BASE_URL: base}")
    assert 'new URL("/", window.location.href)' in html
    assert config < html.index('<script type="module"')
    assert 'new URL("/console/", window.location.href)' in server.index_html("/console")


def test_the_server_answers_page_addresses_with_the_page_and_old_addresses_with_a_redirect() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Route
    from starlette.testclient import TestClient

    app = Starlette(routes=[Route("/latency", server.page_route), Route("/dashboard", server.moved_route("/latency"))])
    with TestClient(app) as client:
        page = client.get("/latency")
        assert page.status_code == 200 and "window.__streamlit" in page.text
        assert page.headers["cache-control"] == "no-cache"
        moved = client.get("/dashboard?tab=slo", follow_redirects=False)
        assert moved.status_code == 301 and moved.headers["location"] == "/latency?tab=slo"


# --- in the browser ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def console_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("e2e-addresses")
    env = console_env(data, LLM_CONSOLE_ENGINE_AUTOSTART="false", LLM_CONSOLE_SAFETY_ENABLED="false")
    cli(env, "init", "--skip-models")
    cli(env, "user", "add", USER, *[arg for role in ALL_ROLES for arg in ("--role", role)], "--password-stdin",
        stdin=STRONG_PASSWORD + "\n")
    with running_console(env, data) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        yield context.new_page()
    finally:
        context.close()


def _expect_page(page: Any, key: str) -> None:
    from playwright.sync_api import expect

    main = page.get_by_role("main")
    expect(main.locator("h1").first).to_have_text(HEADINGS[key], timeout=TIMEOUT_MS)
    expect(main.locator("[data-testid='stException']")).to_have_count(0)


@pytest.mark.e2e
def test_every_page_is_listed_at_its_label_and_no_page_asks_another_host(console_url: str, page: Any) -> None:
    from playwright.sync_api import expect

    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    sign_in(page, console_url, USER)
    nav = page.locator("[data-testid='stSidebarNav']")
    nav.wait_for(timeout=TIMEOUT_MS)
    landing = allowed_pages(frozenset(ALL_ROLES))[0]
    for key, (_, title, _, _) in PAGE_TABLE.items():
        link = nav.get_by_role("link", name=title, exact=False)
        expected = "/" if key == landing else f"/{PAGE_PATHS[key]}"
        assert urlsplit(link.get_attribute("href")).path == expected, key
        link.click()
        expect(page).to_have_url(re.compile(re.escape(console_url) + re.escape(expected) + "$"))
        _expect_page(page, key)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "addresses.png"), full_page=True)
    # The tab's icon is drawn from the page itself (no Material icon fetched from fonts.gstatic.com).
    assert page.locator("link[rel='shortcut icon']").get_attribute("href").startswith("data:image/svg+xml")
    console = urlsplit(console_url).netloc
    outside = sorted({url for url in requested if urlsplit(url).scheme not in ("data", "blob")
                      and urlsplit(url).netloc != console})
    assert outside == []
    assert len(requested) > 20  # the recording did see the pages' own requests


@pytest.mark.e2e
@pytest.mark.parametrize("key", list(PAGE_TABLE))
def test_a_page_opened_by_its_address_loads_without_a_404(console_url: str, page: Any, key: str) -> None:
    sign_in_with_cookie(page, console_url, USER)
    failed: list[tuple[int, str]] = []
    page.on("response", lambda response: failed.append((response.status, response.url))
            if response.status >= 400 else None)
    page.goto(f"{console_url}/{PAGE_PATHS[key]}")  # a new page load: signed in again by the session cookie
    _expect_page(page, key)
    assert failed == []


@pytest.mark.e2e
@pytest.mark.parametrize("key", list(OLD_PATHS))
def test_an_old_page_address_redirects_to_the_page(console_url: str, page: Any, key: str) -> None:
    from playwright.sync_api import expect

    sign_in_with_cookie(page, console_url, USER)
    page.goto(f"{console_url}/{key}")  # /dashboard, the address Latency had
    expect(page).to_have_url(f"{console_url}/{PAGE_PATHS[key]}")
    _expect_page(page, key)
