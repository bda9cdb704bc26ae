"""A model version served in a child process, for side-by-side comparisons beside the live engine.

Two in-process vLLM engines cannot be started and stopped independently (vLLM's model-parallel state is per
process), so a candidate version runs here, in its own process, behind a line protocol on stdin/stdout:

    parent -> child  {"spec": {...}, "kv_cache_gib": 0.25, "nice": 0, "trust_remote_code": false}   first line
                     (nice: lower the CPU priority; trust_remote_code: the installation's setting)
    child -> parent  {"event": "ready"} | {"event": "failed", "error": "..."}
    parent -> child  {"op": "chat", "id": "r1", "messages": [...], "sampling": {...}} | {"op": "cancel", "id": "r1"}
    child -> parent  {"id": "r1", "delta": "..."} ... then {"id": "r1", "result": {...}} or {"id": "r1", "error": "..."}

End of stdin shuts the engine down and ends the process. Run as ``python -m engine.child``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
from typing import IO, Any

from engine.errors import EngineError
from engine.host import EngineHost
from engine.stream import GenerationStream
from engine.types import ChatMessage, HostConfig, ModelSpec, SamplingSettings


class _Out:
    """Line-at-a-time JSON writer shared by the request threads."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, ensure_ascii=True)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def _serve_request(host: EngineHost, out: _Out, streams: dict[str, GenerationStream], message: dict[str, Any]
                   ) -> None:
    rid = str(message["id"])
    try:
        messages = [ChatMessage(m["role"], m["content"]) for m in message["messages"]]
        stream = host.stream_chat(messages, SamplingSettings(**message["sampling"]), request_id=rid)
        streams[rid] = stream
        for delta in stream:
            out.send({"id": rid, "delta": delta})
        out.send({"id": rid, "result": dataclasses.asdict(stream.result)})
    except EngineError as exc:
        out.send({"id": rid, "error": str(exc), "kind": type(exc).__name__})
    except Exception as exc:  # a bug; the parent shows it as a failed answer rather than hanging
        out.send({"id": rid, "error": f"{type(exc).__name__}: {exc}", "kind": "EngineError"})
    finally:
        streams.pop(rid, None)


def main(stdin: IO[str] = sys.stdin, stdout: IO[str] = sys.stdout) -> int:
    """Serve one model version over the line protocol until stdin ends."""
    out = _Out(stdout)
    first = json.loads(stdin.readline() or "{}")
    try:
        if int(first.get("nice") or 0) > 0:
            os.nice(int(first["nice"]))  # evaluations: live chats win when both compete for the cores
        spec = ModelSpec.from_dict(first["spec"])
        config = HostConfig(kv_cache_gib=float(first.get("kv_cache_gib", 0.25)),
                            trust_remote_code=first.get("trust_remote_code") is True)
        host = EngineHost.start(spec, config, wait=True)  # refuses engine arguments outside the allowlist
    except Exception as exc:  # the parent reports why the candidate could not start
        out.send({"event": "failed", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    out.send({"event": "ready"})
    streams: dict[str, GenerationStream] = {}
    try:
        for line in stdin:
            if not line.strip():
                continue
            message = json.loads(line)
            if message.get("op") == "chat":
                threading.Thread(target=_serve_request, args=(host, out, streams, message), daemon=True).start()
            elif message.get("op") == "cancel":
                stream = streams.get(str(message.get("id")))
                if stream is not None:
                    stream.cancel()
    finally:
        host.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
