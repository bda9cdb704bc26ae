"""The line protocol between :class:`engine.child_client.ChildEngineClient` and its child, ``python -m engine.child``.

One JSON object per line; stdin carries the parent's lines, stdout the child's (and nothing else: see
:func:`take_stdout`). Every request names an ``id`` the parent chose, and every answer repeats it.

    parent -> child  {"spec": ModelSpec.to_dict(), "host": {HostConfig fields}, "nice": 0}      first line
    child -> parent  {"event": "ready", "load_s": S} | {"event": "failed", "error": "Type: message"}
    parent -> child  {"op": "chat", "id": ID, "messages": [{"role", "content"}...], "sampling": {...}}
                     {"op": "prompt", "id": ID, "prompt": TEXT, "sampling": {...}}
                     {"op": "check", "id": ID, "messages": [...]}
                     {"op": "status", "id": ID} | {"op": "health", "id": ID}
                     {"op": "cancel", "id": ID}                                  (of a running chat or prompt)
    child -> parent  {"id": ID, "accepted": {"prompt_tokens": N}}, then {"id": ID, "delta": TEXT} ...,
                     then {"id": ID, "result": GenerationResult}                 (chat, prompt)
                     {"id": ID, "reply": {...}}                                  (check: {}, status, health)
                     {"id": ID, "error": {"kind": "PromptTooLongError", "message": ..., ...}}     (any op)

End of stdin shuts the child's engine down and ends the process. Errors travel as their
:mod:`engine.errors` type, so a caller catches the same exception from a child as from the in-process host.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any

from engine import errors
from engine.types import (
    EngineErrorNote,
    EngineHealth,
    GenerationResult,
    HostConfig,
    HostStatus,
    ModelSpec,
    SamplingSettings,
)

# The error types that cross the wire by name; anything else arrives as a plain EngineError.
_ERRORS: dict[str, type[errors.EngineError]] = {
    cls.__name__: cls for cls in (
        errors.EngineError, errors.EmptyPromptError, errors.PromptTooLongError, errors.EngineNotReadyError,
        errors.EngineDeadError, errors.NoChatTemplateError, errors.ModelLoadError, errors.InvalidSamplingError,
        errors.EngineArgsError,
    )
}


class LineWriter:
    """Writes one JSON object per line, flushed at once; shared safely by threads."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: Mapping[str, Any]) -> None:
        line = encode(message)
        with self._lock:
            self._stream.write(line)
            self._stream.flush()


def encode(message: Mapping[str, Any]) -> str:
    """One protocol line: the message as JSON (ASCII only, so no encoding can break it) and a newline."""
    return json.dumps(message, ensure_ascii=True) + "\n"


def take_stdout() -> IO[str]:
    """Keep the real stdout for the protocol and point file descriptor 1 at stderr, so that whatever a library
    prints (vLLM's logs, a progress bar) lands in the child's log instead of corrupting the protocol."""
    sys.stdout.flush()
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    return protocol


def decode(line: str) -> dict[str, Any]:
    """One protocol line as a dict (an empty line, the end of input, as an empty dict); ValueError if the line
    is not a JSON object."""
    value = json.loads(line or "{}")
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


# --- the first line -----------------------------------------------------------------------------------------


def start_message(spec: ModelSpec, config: HostConfig, *, nice: int = 0) -> dict[str, Any]:
    """What the parent writes first: the version to load and how (``nice`` > 0 lowers the child's priority)."""
    return {"spec": spec.to_dict(), "host": dataclasses.asdict(config), "nice": nice}


def parse_start(message: Mapping[str, Any]) -> tuple[ModelSpec, HostConfig, int]:
    """The (spec, host config, nice) of :func:`start_message`'s line."""
    return (ModelSpec.from_dict(message["spec"]), HostConfig(**dict(message.get("host") or {})),
            int(message.get("nice") or 0))


# --- values -------------------------------------------------------------------------------------------------


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    """An exception as the ``error`` of an answer; a non-engine exception (a bug) travels as an EngineError."""
    if not isinstance(exc, errors.EngineError):
        return {"kind": "EngineError", "message": f"{type(exc).__name__}: {exc}"[:2000]}
    wire: dict[str, Any] = {"kind": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, errors.PromptTooLongError):
        wire |= {"prompt_tokens": exc.prompt_tokens, "limit": exc.limit}
    return wire


def error_from_wire(wire: Any) -> errors.EngineError:
    """The :mod:`engine.errors` exception an ``error`` answer stands for (same type, same message)."""
    if not isinstance(wire, Mapping):
        return errors.EngineError(str(wire or "The engine failed."))
    cls = _ERRORS.get(str(wire.get("kind")), errors.EngineError)
    if cls is errors.PromptTooLongError:
        return errors.PromptTooLongError(int(wire["prompt_tokens"]), int(wire["limit"]))
    return cls(str(wire.get("message") or "The engine failed."))


def sampling_to_wire(sampling: SamplingSettings) -> dict[str, Any]:
    return dataclasses.asdict(sampling)


def sampling_from_wire(wire: Mapping[str, Any]) -> SamplingSettings:
    return SamplingSettings(**dict(wire))


def result_to_wire(result: GenerationResult) -> dict[str, Any]:
    return dataclasses.asdict(result)


def result_from_wire(wire: Mapping[str, Any]) -> GenerationResult:
    fields = dict(wire)
    fields["token_ids"] = tuple(fields.get("token_ids") or ())
    return GenerationResult(**fields)


def status_to_wire(status: HostStatus) -> dict[str, Any]:
    return dataclasses.asdict(status)


def status_from_wire(wire: Mapping[str, Any]) -> HostStatus:
    return HostStatus(**dict(wire))


def health_to_wire(health: EngineHealth) -> dict[str, Any]:
    return dataclasses.asdict(health)


def health_from_wire(wire: Mapping[str, Any]) -> EngineHealth:
    fields = dict(wire)
    fields["recent_errors"] = tuple(EngineErrorNote(**note) for note in fields.get("recent_errors") or ())
    return EngineHealth(**fields)
