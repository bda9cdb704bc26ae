"""The console's server process: Streamlit's Starlette app serving ``console/app.py`` plus the console's own
session-cookie routes, with the model preloaded at start.

``st.cache_resource`` objects are process-wide, so building the engine host (and its reconciler) and starting
the scanners' load here, before the first browser connects, gives the pages the same objects later. Without
this, the model would start loading only when someone first opens a page.

A Streamlit script cannot set cookies, so the signed-in session's HttpOnly cookie is set here, in the same server
(``streamlit.starlette.App`` with extra routes; Streamlit's own routes and websocket are unchanged):

* ``POST /auth/session`` (form field ``ticket``; optional ``next``) exchanges the one-time ticket the sign-in page
  made (valid 60 s, single use, stored hashed) for the session cookie: 204 for the console's own ``fetch``, else
  a 303 redirect to ``next`` (a same-origin path only). ``GET`` with ``?ticket=`` works the same for a link.
* ``POST /auth/logout`` ends the cookie's session and clears the cookie.
* ``GET /exports/<id>`` streams one's own export file in chunks (the cookie's session says who asks; the export
  service checks it is theirs and that they may still export) and deletes it once it was sent whole.

Each page's address (``/latency``, ``/review-queue``...: ``console.app_pages.PAGE_PATHS``) gets Streamlit's
``index.html`` with the server's base URL set in it (``window.__streamlit``). Without it the frontend guesses the
base from the address and first asks ``/latency/_stcore/health`` and ``/latency/_stcore/host-config`` (404s)
before trying ``/``. The addresses pages had before they were named after their labels (``/dashboard``...)
redirect to the new ones.

Run as ``python -m console.server [Streamlit config options such as --server.port 8501]`` (``llm-console run``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from console.services.context import AppContext

logger = logging.getLogger(__name__)

APP = Path(__file__).resolve().parent / "app.py"
SESSION_PATH = "/auth/session"
LOGOUT_PATH = "/auth/logout"
EXPORT_PATH = "/exports/{file_id:int}"  # an export file's download (console.services.export_files.open_download)
MAX_FORM_BYTES = 4096
# A page path of this console: letters, digits and - _ . / only, one leading slash (never "//host" or "/\\host").
_SAFE_NEXT = re.compile(r"/(?![/\\])[A-Za-z0-9_./-]{0,200}")


def index_html(base_path: str = "/") -> str:
    """Streamlit's ``index.html`` with its frontend told that the server lives at ``base_path`` of the page's origin
    (``window.__streamlit``: ``BACKEND_BASE_URL``, ``MAIN_PAGE_BASE_URL``), so a page opened by its address connects
    at once instead of probing the address's own ``_stcore`` first."""
    from streamlit import file_util

    html = (Path(file_util.get_static_dir()) / "index.html").read_text(encoding="utf-8")
    base = json.dumps("/" + base_path.strip("/") + ("/" if base_path.strip("/") else ""))
    # Before the module script, which reads window.__streamlit once when it loads.
    script = ("<script>(() => { const base = new URL(" + base + ", window.location.href).href;"
              " window.__streamlit = {BACKEND_BASE_URL: base, MAIN_PAGE_BASE_URL: base}; })()</script>")
    head = html.index("<head>") + len("<head>")
    return html[:head] + script + html[head:]


async def page_route(request: Request) -> Response:
    """A page's address: the app's ``index.html`` with the server's base URL in it (see :func:`index_html`)."""
    from starlette.responses import HTMLResponse
    from streamlit import config

    return HTMLResponse(index_html(config.get_option("server.baseUrlPath") or "/"),
                        headers={"Cache-Control": "no-cache"})


def moved_route(path: str) -> Any:
    """A route answering an old page address with a permanent redirect to ``path`` (query string kept)."""
    async def moved(request: Request) -> Response:
        from starlette.responses import RedirectResponse

        query = request.url.query
        return RedirectResponse(path + (f"?{query}" if query else ""), status_code=301)

    return moved


def _preload() -> None:
    try:
        from console import resources

        resources.safety_loader()
        host = resources.engine_host()
        logger.info("preloading at server start: %s", "model loading" if host is not None else "no engine")
    except Exception:  # the pages show what failed; the server must start regardless
        logger.exception("preloading the model and scanners at server start failed")


def safe_next(value: str | None) -> str:
    """``value`` if it is a path on this server (no scheme, host, query or backslash), else "/": no open redirect."""
    if value and _SAFE_NEXT.fullmatch(value) and "/../" not in value + "/":
        return value
    return "/"


def same_origin(headers: Mapping[str, str], scheme: str, host: str | None) -> bool:
    """Whether a request to the cookie routes came from the console's own pages (not from another site's form)."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin)
        return parts.scheme == scheme and parts.netloc == (host or "")
    # Neither: an old browser (no fetch metadata, no Origin on a form or link), where a page on another site could
    # sign the victim in with the attacker's own ticket (login CSRF). Refused; a script can send the header.
    return False


_LOOPBACK_NAMES = ("localhost", "localhost.")


def _secure(request: Request) -> bool:
    """Whether the session cookie is marked Secure (and so named with the __Host- prefix).

    ``LLM_CONSOLE_COOKIE_SECURE`` decides when set (true: TLS ends at a proxy in front, which uvicorn cannot see;
    false: plain http on a private network). Unset (auto): when the console serves https itself, or the browser
    talks to this machine (localhost, 127.0.0.1, ::1), which browsers treat as a secure context and where they keep
    a Secure cookie over plain http; otherwise not, since a browser drops a Secure cookie set over plain http.
    """
    import ipaddress

    from streamlit import config

    setting = _context().settings.cookie_secure
    if setting is not None:
        return setting
    if request.url.scheme == "https" or config.get_option("server.sslCertFile"):
        return True
    host = (request.url.hostname or "").strip("[]").lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _context() -> AppContext:
    from console import resources

    context: AppContext = resources.app_context()
    return context


async def _fields(request: Request) -> dict[str, str]:
    values = {k: v[-1] for k, v in parse_qs(request.url.query).items()}
    if request.method == "POST":
        body = await request.body()
        if len(body) <= MAX_FORM_BYTES:
            values.update({k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()})
    return values


def _refused(reason: str) -> Response:
    from starlette.responses import PlainTextResponse

    return PlainTextResponse(reason, status_code=403, headers={"Cache-Control": "no-store"})


def _done(request: Request, target: str) -> Response:
    from starlette.responses import RedirectResponse, Response

    if request.headers.get("x-requested-with") == "llm-console":
        return Response(status_code=204, headers={"Cache-Control": "no-store"})
    return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})


async def session_route(request: Request) -> Response:
    """Exchange a one-time sign-in ticket for the HttpOnly session cookie."""
    from starlette.concurrency import run_in_threadpool

    from console.services import sessions

    if not same_origin(request.headers, request.url.scheme, request.headers.get("host")):
        return _refused("This request did not come from the console's own pages.")
    fields = await _fields(request)
    redeemed = await run_in_threadpool(sessions.redeem, _context(), fields.get("ticket", ""))
    if redeemed is None:
        return _refused("This sign-in link is used or expired. Sign in again.")
    token, expires_at = redeemed
    response = _done(request, safe_next(fields.get("next")))
    # SameSite=Lax, not Strict: Strict would leave the cookie off a link to a page opened from another site
    # (mail, a chat message), which is exactly the deep link that must land signed in. Lax still keeps it off
    # cross-site POSTs and sub-requests; every change in the console goes through its websocket anyway.
    secure = _secure(request)
    response.set_cookie(sessions.cookie_name(secure), token,
                        max_age=max(0, int((expires_at - datetime.now(UTC)).total_seconds())),
                        path="/", httponly=True, samesite="lax", secure=secure)
    return response


async def logout_route(request: Request) -> Response:
    """End the session behind the cookie (if still open) and clear the cookie."""
    from starlette.concurrency import run_in_threadpool

    from console.services import sessions

    if not same_origin(request.headers, request.url.scheme, request.headers.get("host")):
        return _refused("This request did not come from the console's own pages.")
    token = sessions.cookie_token(request.cookies)
    if token:
        await run_in_threadpool(sessions.close_by_token, _context(), token)
    response = _done(request, "/")
    # Both names: the one in use, and one left from before the setting or the address changed. The __Host- one
    # is cleared Secure (a browser ignores a __Host- cookie without it, even to delete it).
    response.delete_cookie(sessions.COOKIE_NAME, path="/", httponly=True, samesite="lax", secure=True)
    response.delete_cookie(sessions.PLAIN_COOKIE_NAME, path="/", httponly=True, samesite="lax",
                           secure=_secure(request))
    return response


async def export_route(request: Request) -> Response:
    """Stream one's own export file (``GET /exports/<id>``) in chunks, so memory stays flat however large it is;
    the signed-in session's cookie says who asks and the export service checks it is theirs and that they may
    still export. Sent whole, the file is deleted (``console.services.export_files.open_download``)."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import PlainTextResponse, StreamingResponse

    from console.services import export_files, sessions
    from console.services.errors import ConsoleError, NotFound

    if not same_origin(request.headers, request.url.scheme, request.headers.get("host")):
        return _refused("This request did not come from the console's own pages.")
    token = sessions.cookie_token(request.cookies)
    if not token:
        return _refused("Sign in to download an export.")
    try:
        principal, _ = await run_in_threadpool(sessions.resume, _context(), token)
        download = await run_in_threadpool(export_files.open_download, _context(), principal,
                                           int(request.path_params["file_id"]))
    except NotFound as exc:
        return PlainTextResponse(str(exc), status_code=404, headers={"Cache-Control": "no-store"})
    except ConsoleError as exc:
        return _refused(str(exc))
    name = re.sub(r"[^A-Za-z0-9._-]", "_", download.file_name)
    return StreamingResponse(download.chunks, media_type=download.media_type,
                             headers={"Content-Disposition": f'attachment; filename="{name}"',
                                      "Content-Length": str(download.size), "Cache-Control": "no-store",
                                      "X-Content-Type-Options": "nosniff"})


def make_app() -> Any:
    """Streamlit's ASGI app on ``console/app.py`` with the console's cookie routes and page addresses."""
    from starlette.routing import Route
    from streamlit.starlette import App

    from console.app_pages import OLD_PATHS, PAGE_PATHS

    return App(APP, routes=[Route(SESSION_PATH, session_route, methods=["GET", "POST"]),
                            Route(LOGOUT_PATH, logout_route, methods=["POST"]),
                            Route(EXPORT_PATH, export_route, methods=["GET"]),
                            Route("/", page_route),
                            *[Route(f"/{path}", page_route) for path in PAGE_PATHS.values()],
                            *[Route(f"/{old}", moved_route(f"/{PAGE_PATHS[old]}")) for old in OLD_PATHS]])


def config_options(argv: list[str]) -> dict[str, Any]:
    """``--section.option value`` (or ``--section.option=value``) pairs, as ``streamlit run`` takes them, parsed to
    each option's type."""
    from streamlit import config

    options: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise SystemExit(f"unexpected argument {arg!r}: give Streamlit options as --section.option VALUE")
        name, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise SystemExit(f"{arg} needs a value")
            value = argv[i + 1]
            i += 1
        i += 1
        option = config._config_options_template.get(name)
        if option is None:
            raise SystemExit(f"unknown Streamlit option --{name}")
        kind = option.type
        if kind is bool:
            options[name] = value.strip().lower() in ("1", "true", "yes", "on")
        elif kind in (int, float):
            options[name] = kind(value)
        else:
            options[name] = value
    return options


def main(argv: list[str] | None = None) -> None:
    """Serve the console with ``argv`` as Streamlit config options (``--server.port 8501``...)."""
    options = config_options(sys.argv[1:] if argv is None else argv)
    threading.Thread(target=_preload, name="preload", daemon=True).start()
    sys.argv = [str(Path(__file__).resolve())]
    make_app().run(config=options)


if __name__ == "__main__":
    main()
