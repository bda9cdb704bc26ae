"""What the browser tests share: the console started as `llm-console run` serves it, and headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import STRONG_PASSWORD

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
DEFAULT_TIMEOUT_MS = 90_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def console_env(data: Path, **settings: str) -> dict[str, str]:
    """The environment of a test console over ``data``: the first admin's password is the tests' strong one."""
    return {**os.environ, "LLM_CONSOLE_DATA_DIR": str(data), "LLM_CONSOLE_ADMIN_PASSWORD": STRONG_PASSWORD,
            **settings}


def cli(env: Mapping[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``llm-console`` with ``args``; raises if it fails."""
    return subprocess.run([sys.executable, "-m", "console.cli", *args], env=dict(env), input=stdin, text=True,
                          capture_output=True, timeout=300, cwd=ROOT, check=True)


@contextmanager
def running_console(env: Mapping[str, str], data: Path) -> Iterator[str]:
    """`llm-console run` on a free port until the block ends; yields its URL (the log is ``data/server.log``)."""
    port = free_port()
    with (data / "server.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "console.cli", "run", "--port", str(port)], env=dict(env),
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                assert proc.poll() is None, (data / "server.log").read_text()
                time.sleep(0.3)
            yield f"http://localhost:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, through Playwright (its own browser download cannot work offline)."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium is missing: scripts/test.sh installs Debian's chromium package"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--no-first-run"])
        new_context = browser.new_context

        def patient_context(*args: Any, **kwargs: Any) -> Any:
            # Playwright waits 30 s for an element by default; a loaded two-core machine (a vLLM engine loading
            # beside the console) has taken longer than that to draw a list. Explicit timeouts still win.
            context = new_context(*args, **kwargs)
            context.set_default_timeout(DEFAULT_TIMEOUT_MS)
            return context

        new_page = browser.new_page

        def patient_page(*args: Any, **kwargs: Any) -> Any:
            page = new_page(*args, **kwargs)  # a page in a context of its own
            page.context.set_default_timeout(DEFAULT_TIMEOUT_MS)
            return page

        browser.new_context = patient_context
        browser.new_page = patient_page
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page: Any, url: str, username: str, password: str = STRONG_PASSWORD) -> None:
    """Open the console and sign in through its form (addressing fields by role: see ENVIRONMENT.md)."""
    page.goto(url)
    page.get_by_role("textbox", name="Username").fill(username)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def choose_option(page: Any, selectbox: Any, option: str, *, attempts: int = 4) -> None:
    """Open ``selectbox`` (a locator of a Streamlit select box) and pick ``option``. A rerun of the page while its
    list is open (a busy machine finishing the previous one late) closes the list: open it again, a few times."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    for _ in range(attempts):
        selectbox.click()
        choice = page.get_by_role("option", name=option, exact=True)
        try:
            choice.click(timeout=20_000)
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
            continue
        try:  # the box's input holds the choice (a combobox: the value is not text of the page)
            expect(selectbox.get_by_role("combobox")).to_have_value(option, timeout=20_000)
        except AssertionError:
            continue
        return
    raise AssertionError(f"could not choose {option!r} in the select box after {attempts} tries")


def sign_in_with_cookie(page: Any, url: str, username: str, password: str = STRONG_PASSWORD) -> None:
    """:func:`sign_in`, then wait until the browser holds its session cookie (a new page load stays signed in)."""
    with page.expect_response(lambda r: r.url.endswith("/auth/session") and r.status == 204, timeout=60_000):
        sign_in(page, url, username, password)
