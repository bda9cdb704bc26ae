"""The child process behind :class:`engine.child_client.ChildEngineClient`: one model version in its own process.

Two in-process vLLM engines cannot be started and stopped independently (vLLM's model-parallel state is per
process), so a second version beside the console's live engine (a side-by-side candidate, an evaluation, the
latency comparison's two versions) runs here: an :class:`~engine.host.EngineHost` answering the line protocol of
:mod:`engine.child_wire` on stdin/stdout until stdin ends. Run as ``python -m engine.child``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import IO, Any

from engine import child_wire as wire
from engine.errors import EngineError
from engine.host import EngineHost
from engine.types import ChatMessage

logger = logging.getLogger(__name__)


def _messages(raw: Any) -> list[ChatMessage]:
    return [ChatMessage(m["role"], m["content"]) for m in raw]


def _serve_request(host: EngineHost, out: wire.LineWriter, message: Mapping[str, Any]) -> None:
    """One chat or prompt: accepted (or refused), its deltas, then its result; on a thread of its own."""
    rid = str(message["id"])
    try:
        sampling = wire.sampling_from_wire(message["sampling"])
        if message["op"] == "chat":
            stream = host.stream_chat(_messages(message["messages"]), sampling, request_id=rid)
        else:
            stream = host.stream_prompt(str(message["prompt"]), sampling, request_id=rid)
        out.send({"id": rid, "accepted": {"prompt_tokens": stream.prompt_tokens}})
        for delta in stream:
            out.send({"id": rid, "delta": delta})
        out.send({"id": rid, "result": wire.result_to_wire(stream.result)})
    except Exception as exc:  # an EngineError as its own type; anything else (a bug) fails the request, not the child
        if not isinstance(exc, EngineError):
            logger.exception("request %s failed", rid)
        out.send({"id": rid, "error": wire.error_to_wire(exc)})


def _answer(host: EngineHost, out: wire.LineWriter, message: Mapping[str, Any]) -> None:
    """A quick question (check, status, health), answered on the reading thread."""
    rid = str(message["id"])
    try:
        if message["op"] == "check":
            host.check_chat(_messages(message["messages"]))
            reply: dict[str, Any] = {}
        elif message["op"] == "status":
            reply = wire.status_to_wire(host.status())
        else:
            reply = wire.health_to_wire(host.health())
    except Exception as exc:
        out.send({"id": rid, "error": wire.error_to_wire(exc)})
        return
    out.send({"id": rid, "reply": reply})


def main(stdin: IO[str] = sys.stdin, stdout: IO[str] = sys.stdout) -> int:
    """Load the version the first line names, then serve requests until stdin ends; returns the exit status."""
    out = wire.LineWriter(stdout)
    started = time.monotonic()
    try:
        spec, config, nice = wire.parse_start(wire.decode(stdin.readline()))
        if nice > 0:
            try:
                os.nice(nice)  # evaluations: live chats win when both compete for the cores
            except OSError:
                logger.warning("could not lower the CPU priority by %s", nice)
        host = EngineHost.start(spec, config, wait=True)  # refuses engine arguments outside the allowlist
    except Exception as exc:  # the parent reports why the version could not start
        out.send({"event": "failed", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    out.send({"event": "ready", "load_s": round(time.monotonic() - started, 3)})
    try:
        for line in stdin:
            if not line.strip():
                continue
            message = wire.decode(line)
            op = message.get("op")
            if op in ("chat", "prompt"):
                threading.Thread(target=_serve_request, args=(host, out, message), daemon=True,
                                 name=f"request-{message.get('id')}").start()
            elif op == "cancel":
                host.cancel(str(message.get("id")))
            elif op in ("check", "status", "health"):
                _answer(host, out, message)
            else:
                out.send({"id": message.get("id"), "error": {"kind": "EngineError",
                                                             "message": f"Unknown operation {op!r}."}})
    finally:
        host.shutdown()  # explicitly: vLLM's own finalisers raised at interpreter exit
    return 0


if __name__ == "__main__":
    protocol = wire.take_stdout()  # before vLLM is first imported: it prints while loading
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    sys.exit(main(sys.stdin, protocol))
