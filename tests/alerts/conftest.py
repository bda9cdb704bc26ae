"""A real HTTP receiver on loopback that records what webhooks get, and answers as a test tells it to."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

# The secret part of a webhook URL (as in Slack's /services/T000/B000/XXXX): must never show anywhere.
URL_TOKEN = "T0SECRET/B0SECRET/zz9SecretTokenPart"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Records every POST; answers each with the next planned reply (status code, seconds to wait first), then 200."""

    port: int = 0
    requests: list[Received] = field(default_factory=list)
    plan: list[tuple[int, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/{URL_TOKEN}"

    def answer(self, *replies: tuple[int, float]) -> None:
        with self.lock:
            self.plan.extend(replies)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with receiver.lock:
                receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
                status, wait = receiver.plan.pop(0) if receiver.plan else (200, 0.0)
            if wait:
                time.sleep(wait)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"server trouble")
            except (BrokenPipeError, ConnectionResetError):  # the sender timed out and left
                pass

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            return

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rec))
    server.daemon_threads = True
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def admin(make_user: Any) -> Any:
    return make_user("ada", "admin")


def add_webhook(ctx: Any, admin: Any, receiver: Receiver, **changes: Any) -> Any:
    """A webhook to ``receiver`` through the service: "ops", generic JSON, every alert kind, unsigned, unless
    ``changes`` say otherwise."""
    from console.services import alerts as alerts_svc

    args = {"name": "ops", "kind": "json", "url": receiver.url, "alert_kinds": list(alerts_svc.SUBSCRIBABLE),
            "secret": None} | changes
    return alerts_svc.create_webhook(ctx, admin, **args)
