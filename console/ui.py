"""Streamlit-side helpers shared by the pages: the typed session, page guards and error display."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import streamlit as st

from console import resources
from console.services import access, auth
from console.services.access import Principal
from console.services.context import Services
from console.services.errors import AccessDenied, ConsoleError, SessionEnded
from engine.errors import EngineError

_KEY = "llm_console_session"
T = TypeVar("T")


@dataclass
class UiSession:
    """Everything this browser session remembers, in one typed object (not loose keys)."""

    principal: Principal | None = None
    last_activity: datetime | None = None
    conversation_id: int | None = None
    flash: str | None = None


def session() -> UiSession:
    if _KEY not in st.session_state:
        st.session_state[_KEY] = UiSession()
    return st.session_state[_KEY]


def services() -> Services:
    return resources.services()


def sign_out(message: str | None = None) -> None:
    state = session()
    state.principal = None
    state.last_activity = None
    state.conversation_id = None
    state.flash = message


def sso_signed_in() -> bool:
    """True when the browser holds a signed-in identity from the OIDC provider (``st.login``)."""
    try:
        return bool(st.user.is_logged_in)
    except Exception:  # no [auth] configured: there is no such identity
        return False


def require_page(page: str) -> Principal:
    """Server-side guard at the top of every page: signed in, active, not idle, and allowed this page."""
    state = session()
    svc = services()
    if state.principal is None:
        st.warning("Please sign in.")
        st.stop()
    try:
        state.last_activity = auth.check_idle(svc, state.principal, state.last_activity)
        state.principal = access.check_page(svc, state.principal, page)
    except SessionEnded as exc:
        sign_out(str(exc))
        st.rerun()
    except AccessDenied as exc:
        st.error(str(exc))
        st.stop()
    return state.principal


def call(fn: Callable[..., T], *args: object, **kwargs: object) -> T | None:
    """Run a service call; show user-facing errors in place and return None; end the session if it ended."""
    with shows_errors():
        return fn(*args, **kwargs)
    return None


@contextmanager
def shows_errors():
    """``with shows_errors():`` around a block of service calls."""
    try:
        yield
    except SessionEnded as exc:
        sign_out(str(exc))
        st.rerun()
    except (ConsoleError, EngineError) as exc:
        st.error(str(exc))
