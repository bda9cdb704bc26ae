"""Streamlit-side helpers shared by the pages: the typed session, page guards and error display."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from console import resources
from console.services import access, auth, demo_builds, registry, sessions
from console.services import serving as serving_svc
from console.services.access import Principal
from console.services.audit_search import AuditFilter, AuditPage
from console.services.context import AppContext
from console.services.errors import AccessDenied, ConsoleError, SessionEnded
from console.textsafe import escape_markdown

_KEY = "llm_console_session"
# How often the sidebar's model line looks again by itself: a switch shows within seconds, without a click.
LIVE_MODEL_REFRESH_S = 5
T = TypeVar("T")


@dataclass
class ChatPageState:
    """What the Chat page remembers between reruns."""

    conversation_id: int | None = None
    # Whether the model was ready at the last look: the status fragment reruns the page when this changes,
    # so the chat input is enabled (or disabled) without a click.
    engine_was_ready: bool = False
    notice: str | None = None  # the last turn's notice (redacted, flagged, blocked), shown once after the rerun
    toast: str | None = None  # a short confirmation ("Sent to review.") shown once after the rerun
    # A prompt the chat service refused (too long for the box or for the model): the next run puts the text back
    # in the chat box (which empties itself when it sends) and shows why it was refused.
    refused_text: str | None = None
    refused_why: str | None = None
    refused_hint: str | None = None  # what to do with the text that came back (chat_view_model.refusal_hint)


@dataclass
class ReviewPageState:
    """What the Review queue page remembers between reruns (widget values are Streamlit's, keyed by item)."""

    flash: str | None = None
    flash_tab: str = "queue"  # the tab the flash is about ("queue" or "second"): shown there only, once
    # Bumped after a bulk decision: the bulk form's widgets are keyed by it, so the form opens empty again.
    bulk_round: int = 0


@dataclass
class EscalationsPageState:
    """What the Escalations page remembers between reruns."""

    flash: str | None = None


@dataclass
class ModelsPageState:
    """What the Models page remembers: a message for the next rerun, and the form round (forms are keyed by it,
    so each opens empty after a success)."""

    flash: str | None = None
    round: int = 0


@dataclass
class PromotionsPageState:
    """What the Promotions page remembers: a message for the next rerun, and the form round (the request, decision
    and rollback forms are keyed by it, so each opens empty after a success)."""

    flash: str | None = None
    round: int = 0


@dataclass
class PolicyPageState:
    """The Policy page: a message for the next rerun, and the form round (the proposal and decision forms are keyed
    by it, so each opens afresh after a success and keeps what was typed when it is refused)."""

    flash: str | None = None
    round: int = 0


@dataclass
class EvaluationsPageState:
    """The Evaluations page: a message for the next rerun, the form round, the evaluation being watched."""

    flash: str | None = None
    round: int = 0
    watching: int | None = None


@dataclass
class AuditPageState:
    """The Audit page: the keyset cursors of the pages walked through (the current one last; None is the newest),
    the last search that ran (and was audited) with its result, so a rerun with the same filter and page reuses it
    instead of searching (and auditing) again, the opened event likewise, a message for the next rerun, the round
    the raw-export request form is keyed by, and what the last export left."""

    cursors: list[int | None] = field(default_factory=lambda: [None])
    searched: tuple[AuditFilter, int | None] | None = None
    page: AuditPage | None = None
    opened: int | None = None
    detail: tuple[dict[str, Any], list[dict[str, Any]]] | None = None
    actions: list[str] | None = None  # the action picker's choices (a scan of the log: read once, and on Refresh)
    flash: str | None = None
    round: int = 0
    # Set by the download callables (Streamlit runs them on another thread, after the click's rerun may have
    # started): the manifest of the last export this session made, and why the last one failed.
    last_manifest: bytes | None = None
    export_error: str | None = None
    # The last export file this session wrote, served by the console's own /exports/<id> route: (id, name, expiry).
    last_export: tuple[int, str, datetime] | None = None


@dataclass
class UsersPageState:
    """The Users page: a message for the next rerun ("Added alice."), and the form round (the add and erase forms
    are keyed by it, so each opens empty after a success)."""

    flash: str | None = None
    round: int = 0
    # Set after a user is added: the next run empties the add form (it keeps what was typed when it is refused).
    clear_add_form: bool = False


@dataclass
class UiSession:
    """Everything this browser session remembers, in one typed object (not loose keys).

    Each page keeps its own state in a typed field here; only widget values live under Streamlit's widget keys.
    """

    principal: Principal | None = None
    last_activity: datetime | None = None
    flash: str | None = None  # a message for the next page shown (e.g. "You are signed out.")
    # The server-side session this browser signed in with (console.services.sessions), checked at every page run.
    browser_session: int | None = None
    # The one-time ticket the next run hands the browser to get its session cookie; and whether the next run
    # should clear the cookie (after a sign-out or an ended session).
    cookie_ticket: str | None = None
    clear_cookie: bool = False
    # The cookie value this browser session already signed out of (or found ended): not restored again.
    spent_cookie: str | None = None
    chat: ChatPageState = field(default_factory=ChatPageState)
    review: ReviewPageState = field(default_factory=ReviewPageState)
    escalations: EscalationsPageState = field(default_factory=EscalationsPageState)
    models: ModelsPageState = field(default_factory=ModelsPageState)
    evaluations: EvaluationsPageState = field(default_factory=EvaluationsPageState)
    promotions: PromotionsPageState = field(default_factory=PromotionsPageState)
    audit: AuditPageState = field(default_factory=AuditPageState)
    users: UsersPageState = field(default_factory=UsersPageState)
    policy: PolicyPageState = field(default_factory=PolicyPageState)

    def reset_pages(self) -> None:
        """Forget every page's state (at sign-in and sign-out: the next user starts clean)."""
        self.chat = ChatPageState()
        self.review = ReviewPageState()
        self.escalations = EscalationsPageState()
        self.models = ModelsPageState()
        self.evaluations = EvaluationsPageState()
        self.promotions = PromotionsPageState()
        self.audit = AuditPageState()
        self.users = UsersPageState()
        self.policy = PolicyPageState()


def session() -> UiSession:
    if _KEY not in st.session_state:
        st.session_state[_KEY] = UiSession()
    state: UiSession = st.session_state[_KEY]
    return state


def app_context() -> AppContext:
    return resources.app_context()


def sign_in(principal: Principal, now: datetime, started: sessions.Started | None = None) -> None:
    """Sign this browser session in; with ``started`` (a new server-side session), the next run also sets the
    session cookie, so a reload or a new tab stays signed in."""
    state = session()
    state.principal = principal
    state.last_activity = now
    state.browser_session = started.session_id if started else None
    state.cookie_ticket = started.ticket if started else None
    state.clear_cookie = False
    state.reset_pages()


def sign_out(message: str | None = None, reason: str = "logout") -> None:
    """Sign this browser session out; its server-side session ends (audited with ``reason``, or with its own if it
    already had one: idle, password reset...) and the next run clears the cookie."""
    state = session()
    if state.browser_session is not None:
        try:
            sessions.close(app_context(), state.browser_session, reason)
        except ConsoleError:  # the database is busy: the session still ends at its idle or absolute limit
            pass
    if state.browser_session is not None or session_cookie():
        state.clear_cookie = True
        state.spent_cookie = session_cookie()
    state.principal = None
    state.last_activity = None
    state.browser_session = None
    state.cookie_ticket = None
    state.flash = message
    state.reset_pages()


def session_cookie() -> str | None:
    """The session cookie the browser sent when this Streamlit session connected (HttpOnly: scripts cannot read
    it, the server can), or None."""
    try:
        return sessions.cookie_token(st.context.cookies)
    except Exception:  # no request behind this run (AppTest)
        return None


def user_agent() -> str | None:
    try:
        value = st.context.headers.get("User-Agent")
    except Exception:  # no request behind this run (AppTest)
        return None
    return value if isinstance(value, str) else None


def start_browser_session(principal: Principal, method: str = "password") -> sessions.Started | None:
    """Record the server-side session of a sign-in (for the cookie); None if it could not be stored (the sign-in
    then lasts only as long as this browser tab, as it would without cookies)."""
    try:
        return sessions.start(app_context(), principal, method=method, client=client_key(), user_agent=user_agent())
    except ConsoleError:
        return None


def restore_session() -> None:
    """At the top of every run: end this browser session if its server-side session ended (signed out by an
    admin, a password reset, a role change, idle or expired), or sign it in from the session cookie after a
    reload, in a new tab or at a link opened directly."""
    state = session()
    ctx = app_context()
    if state.principal is not None and state.browser_session is not None:
        try:
            state.principal = sessions.check(ctx, state.browser_session)
        except SessionEnded as exc:
            end_session(str(exc))  # the check already ended and audited it; this clears the cookie
        except ConsoleError:  # the database is busy: keep the session, the page's own guards still run
            pass
        return
    cookie = session_cookie()
    if state.principal is not None or cookie is None or cookie == state.spent_cookie:
        return
    try:
        principal, session_id = sessions.resume(ctx, cookie)
    except SessionEnded as exc:
        state.spent_cookie = cookie
        state.clear_cookie = True
        state.flash = str(exc)
        return
    except ConsoleError as exc:
        state.flash = str(exc)
        return
    sign_in(principal, ctx.now())
    state.browser_session = session_id


def sync_cookie() -> None:
    """Have the browser fetch its session cookie for a new sign-in, or clear it after a sign-out.

    A script cannot set an HttpOnly cookie, so a few lines of JavaScript POST the one-time ticket to the console's
    own ``/auth/session`` route (console/server.py), which answers with the cookie; ``/auth/logout`` clears it.
    """
    state = session()
    if state.cookie_ticket is not None:
        ticket, state.cookie_ticket = state.cookie_ticket, None
        _post_from_browser("/auth/session", {"ticket": ticket})
    elif state.clear_cookie:
        state.clear_cookie = False
        _post_from_browser("/auth/logout", {})


def _post_from_browser(path: str, fields: dict[str, str]) -> None:
    # json.dumps, with "<" escaped, keeps the values inert inside the script element.
    body = json.dumps(fields).replace("<", "\\u003c")
    st.html(
        "<script>fetch(" + json.dumps(path) + ", {method: 'POST', credentials: 'same-origin', "
        "headers: {'Content-Type': 'application/x-www-form-urlencoded', 'X-Requested-With': 'llm-console'}, "
        "body: new URLSearchParams(" + body + ")});</script>",
        unsafe_allow_javascript=True, width="content",
    )


def sso_signed_in() -> bool:
    """True when the browser holds a signed-in identity from the OIDC provider (``st.login``)."""
    try:
        return bool(st.user.is_logged_in)
    except Exception:  # no [auth] configured: there is no such identity
        return False


def sso_config() -> Mapping[str, object] | None:
    """The ``[auth]`` section of the secrets (single sign-on's settings), or None when it is not configured."""
    try:
        section = st.secrets.get("auth")
    except Exception:  # no secrets.toml at all: single sign-on is simply not configured
        return None
    return section if isinstance(section, Mapping) else None


def client_key() -> str:
    """The key this browser's sign-in attempts are counted under (see ``auth.client_key``)."""
    forwarded: object = None
    remote: object = None
    try:
        forwarded = st.context.headers.get("X-Forwarded-For")
        remote = st.context.ip_address
    except Exception:  # no request behind this run (tests): the session id is the key
        pass
    run = get_script_run_ctx()
    return auth.client_key(forwarded if isinstance(forwarded, str) else None,
                           remote if isinstance(remote, str) else None, run.session_id if run else None,
                           app_context().settings.trusted_proxies)


def end_session(message: str, reason: str = "signed out") -> None:
    """Sign out of the console, and of Streamlit's identity cookie for a single sign-on user, as the Sign-out
    button does: otherwise the sign-in page would sign them straight back in."""
    sign_out(message, reason)
    if sso_signed_in():
        st.logout()


def require_page(page: str) -> Principal:
    """Server-side guard at the top of every page: signed in, active, not idle, and allowed this page."""
    state = session()
    ctx = app_context()
    if state.principal is None:
        st.warning("Please sign in.")
        st.stop()
    try:
        state.last_activity = auth.check_idle(ctx, state.principal, state.last_activity)
    except SessionEnded as exc:
        end_session(str(exc), "idle")
        st.rerun()
    try:
        state.principal = access.check_page(ctx, state.principal, page)
    except SessionEnded as exc:
        end_session(str(exc))
        st.rerun()
    except AccessDenied as exc:
        st.error(escape_markdown(str(exc)))
        st.stop()
    return state.principal


def call(fn: Callable[..., T], *args: object, **kwargs: object) -> T | None:
    """Run a service call; show user-facing errors in place and return None; end the session if it ended."""
    result: T | None = None
    with shows_errors():
        result = fn(*args, **kwargs)
    return result


class _ShowsErrors:
    # A class, not @contextmanager: its __exit__ says (-> bool) that it swallows an error, so the type checker
    # knows the code after the ``with`` block runs after a failed call too.
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if isinstance(exc, SessionEnded):
            end_session(str(exc))
            st.rerun()
        # Services raise only ConsoleErrors for the user; anything else is a bug and stays loud.
        if isinstance(exc, ConsoleError):
            st.error(escape_markdown(str(exc)))
            return True
        return False


def shows_errors() -> _ShowsErrors:
    """``with shows_errors():`` around a block of service calls: a ConsoleError is shown in place and swallowed."""
    return _ShowsErrors()


def live_model_line(ctx: AppContext, principal: Principal) -> str:
    """The sidebar's line about the model this console serves now (markdown, values escaped)."""
    serving = serving_svc.serving_status(ctx)
    if serving.state == "none":
        return "Model: none served"
    if serving.state == "switching":
        target = f"switching to **{escape_markdown(serving.switching_to or '?')}**"
        if serving.answering and serving.model_version:  # blue-green: the old version answers meanwhile
            return f"Live model: **{escape_markdown(serving.model_version)}** · {target}"
        return f"Live model: {target}"
    if serving.ready:
        return f"Live model: **{escape_markdown(serving.model_version or '?')}** · ready"
    if serving.model_version is None and access.allowed(principal.roles, "chat.use"):
        # Nothing loaded yet: most often the served demo version is still being built (`llm-console run`).
        build = demo_builds.served_version_build(ctx, principal)
        if build is not None and build.state in ("building", "built"):
            return (f"Model: {escape_markdown(build.name)} "
                    + (f"being built ({build.fraction:.0%})" if build.state == "building" else "built, loading"))
        return f"Model: none loaded ({escape_markdown(serving.state)})"
    return f"Model {escape_markdown(serving.model_version or 'none')}: {escape_markdown(serving.state)}"


@st.fragment(run_every=LIVE_MODEL_REFRESH_S)
def live_model(principal: Principal) -> None:
    """The sidebar's model line, read again every LIVE_MODEL_REFRESH_S seconds by itself (a fragment: only this
    line reruns), so a switch made elsewhere shows without a click."""
    st.caption(live_model_line(app_context(), principal))


def page_link(page: str, label: str, icon: str | None = None) -> None:
    """A link to another page of the console (``st.page_link``); where the page is not registered (a page run on
    its own, as in a test), a plain link to its address."""
    from streamlit.errors import StreamlitAPIException

    from console.app_pages import PAGE_PATHS, PAGE_TABLE, PAGES_DIR

    _, _, page_icon, file = PAGE_TABLE[page]
    try:
        st.page_link(str(PAGES_DIR / file), label=label, icon=icon or page_icon)
    except StreamlitAPIException:
        st.markdown(f"[{escape_markdown(label)}](/{PAGE_PATHS[page]})")


def emergency_warnings(ctx: AppContext, principal: Principal, *, link: bool = True) -> list[Any]:
    """For admins: a warning per emergency rollback or break-glass move no second admin has acknowledged yet
    (with a link to the Promotions page, where another admin acknowledges it). Returns what it showed."""
    if not access.allowed(principal.roles, "models.view"):
        return []
    moves = call(registry.unacknowledged_emergencies, ctx, principal) or []
    for move in moves:
        own = " You made it: another admin must acknowledge it." if move.actor_id == principal.user_id else ""
        st.warning(f"{move.at:%Y-%m-%d %H:%M} UTC · {escape_markdown(move.summary)}. Shown to every admin until "
                   f"another admin acknowledges it.{own}", icon=":material/emergency_home:")
    if moves and link:
        page_link("promotions", "Review and acknowledge on the Promotions page")
    return moves


@st.fragment(run_every=LIVE_MODEL_REFRESH_S * 6)
def emergency_notice(principal: Principal) -> None:
    """The sidebar's short notice for admins of unacknowledged emergency moves (looked at again by itself)."""
    if not access.allowed(principal.roles, "models.view"):
        return
    moves = call(registry.unacknowledged_emergencies, app_context(), principal) or []
    if moves:
        waits = "1 emergency move waits" if len(moves) == 1 else f"{len(moves)} emergency moves wait"
        st.warning(f"{waits} for another admin's acknowledgement.",
                   icon=":material/emergency_home:")
        page_link("promotions", "Promotions")
