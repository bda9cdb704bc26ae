"""Benchmark: switching the served version under load, the way an admin's "serve" reaches a running console, on
each backend: ``in-process`` (the one engine of the console's process: the old engine stops before the new one
loads, so chats wait for the load) and ``managed-server`` (vLLM servers the console starts: blue-green, no chat
waits for a load).

For each backend, two versions of the tiny model (the same weights under two names) are registered in a throwaway
database; the console's served engine (:class:`engine.switching.SwitchingEngine`) serves the first, its reconciler
watches the desired state, and ``concurrency`` caller threads chat in a loop. Then the production alias moves to
the second version (what an approved promotion writes; the bench writes it as a shell command with
``--break-glass`` would, in its throwaway database).

What is reported per backend (times on the bench's own clock; TTFT = first streamed text - the moment the caller
submitted the request, so it includes any time the request was held during a switch):

- ``switch_s``: from the alias move to the first token streamed by the new version;
- ``failed``: requests that raised during the whole run (the target is 0);
- ``baseline_ttft_ms``: the median TTFT of the requests submitted before the alias moved, and
  ``before_max_ttft_ms`` their longest (what the machine's own noise does with no switch running);
- ``max_wait_ms``: the longest time any request waited because of the switch: over the requests submitted in the
  switch window (from the alias move to the new version's first token, both included), the largest TTFT minus
  ``baseline_ttft_ms``, floored at 0 (0 when no request was submitted in the window). The target for
  ``managed-server`` is under 1,000 ms; ``in-process`` shows the load;
- ``max_ttft_ms``: the largest TTFT of the whole run; ``window_requests``: requests submitted in the window;
  ``max_wait_submitted_s`` and ``max_wait_version``: when (after the alias move) the request that waited longest
  was submitted, and which version answered it;
- ``answered_by``: answered requests per version; ``cut_by_switch``: answers a drain ended early
  (``finish_reason == "switch"``).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.types import ChatMessage, SamplingSettings

SWITCH_BACKENDS = ("in-process", "managed-server")
_PROMPT = [ChatMessage("user", "Where is my order?")]


@dataclass(frozen=True)
class _Answer:
    submitted: float
    first_token: float | None  # None: the answer streamed no text
    version: str
    finish_reason: str | None


def run_switch_bench(*, backends: tuple[str, ...] = SWITCH_BACKENDS, concurrency: int = 8, max_tokens: int = 32,
                     kv_cache_gib: float = 0.25, settle_s: float = 2.0) -> dict[str, Any]:
    """Run the switch once per backend (in the order given); returns ``{"backends": {name: figures}, ...}`` with
    the figures the module docstring defines."""
    if not backends:
        raise ValueError("The backend is required: in-process, managed-server or both.")
    unknown = [b for b in backends if b not in SWITCH_BACKENDS]
    if unknown:
        raise ValueError(f"Unknown backend {unknown[0]!r}: the switch bench runs {' and '.join(SWITCH_BACKENDS)}.")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    results = {b: _run_one(b, concurrency=concurrency, max_tokens=max_tokens, kv_cache_gib=kv_cache_gib,
                           settle_s=settle_s) for b in backends}
    return {
        "backends": results,
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "note": "max_wait_ms: over requests submitted between the alias move and the new version's first token, "
                "the largest TTFT minus the median TTFT before the move (floored at 0); TTFT counts from the "
                "caller's submit, so time held by a switch is in it",
    }


def _run_one(backend: str, *, concurrency: int, max_tokens: int, kv_cache_gib: float,
             settle_s: float) -> dict[str, Any]:
    from console.services import registry, serving
    from console.services.access import Principal
    from console.services.context import AppContext
    from console.settings import Settings
    from db.config import DbConfig
    from db.database import Database
    from engine.demo.tiny import build_tiny_model
    from engine.switching import SwitchingEngine
    from engine.types import HostConfig

    with tempfile.TemporaryDirectory(prefix="bench-switch-") as tmp:
        root = Path(tmp)
        first = build_tiny_model(root / "tiny-a")
        second = Path(shutil.copytree(first, root / "tiny-b"))
        settings = Settings.from_env({"LLM_CONSOLE_DATA_DIR": str(root), "LLM_CONSOLE_ENGINE_AUTOSTART": "false",
                                      "LLM_CONSOLE_SWITCH_MODE": "blue-green"})
        db = Database(DbConfig(settings.database_url))
        db.migrate()
        ctx = AppContext(settings, db)
        shell = Principal.shell(ctx, "bench switch")  # the throwaway database's own shell user
        for name, path in (("bench-a", first), ("bench-b", second)):
            registry.register(ctx, shell, name=name, source=str(path), revision=None, dtype="float32",
                              max_model_len=None, engine_args={}, description="switch bench", backend=backend)
        serving.serve(ctx, shell, "bench-a", "switch bench: start")
        engine = SwitchingEngine.start(registry.loadable_spec(ctx, "bench-a"), HostConfig(kv_cache_gib=kv_cache_gib),
                                       settings.server_options(), wait=True)
        reconciler = serving.Reconciler(ctx, engine, interval_s=0.1).start()
        lock = threading.Lock()
        answers: list[_Answer] = []
        errors: list[str] = []
        done = threading.Event()
        sampling = SamplingSettings(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)

        def chat() -> None:
            while not done.is_set():
                submitted = time.monotonic()
                try:
                    stream = engine.stream_chat(_PROMPT, sampling)
                    first_at = None
                    for _ in stream:
                        if first_at is None:
                            first_at = time.monotonic()
                    result = stream.result
                    with lock:
                        answers.append(_Answer(submitted, first_at, result.model_version, result.finish_reason))
                except Exception as exc:  # every failure is what this bench counts
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=chat, daemon=True, name=f"bench-switch-{i}") for i in range(concurrency)]
        asked = switched = None
        try:
            for t in threads:
                t.start()
            time.sleep(settle_s)
            asked = time.monotonic()
            serving.serve(ctx, shell, "bench-b", "switch bench: switch", break_glass="switch bench (throwaway database)")
            deadline = asked + settings.server_start_seconds + 60
            while time.monotonic() < deadline and switched is None:
                with lock:
                    new = [a.first_token for a in answers if a.version == "bench-b" and a.first_token is not None]
                if new:
                    switched = min(new)
                else:
                    time.sleep(0.05)
            time.sleep(settle_s)
        finally:
            done.set()
            for t in threads:
                t.join(60)
            reconciler.stop()
            engine.shutdown()
            db.dispose()
    return _figures(backend, answers, errors, asked, switched, concurrency)


def _figures(backend: str, answers: list[_Answer], errors: list[str], asked: float | None, switched: float | None,
             concurrency: int) -> dict[str, Any]:
    """The per-backend figures (see the module docstring) from the recorded answers."""

    def ttft(a: _Answer) -> float | None:
        return None if a.first_token is None else a.first_token - a.submitted

    timed = [(a, t) for a in answers if (t := ttft(a)) is not None]
    before = [t for a, t in timed if asked is not None and a.submitted < asked]
    baseline = statistics.median(before) if before else None
    end = switched if switched is not None else max((a.submitted for a in answers), default=asked)
    in_window = [(a, t) for a, t in timed if asked is not None and end is not None and asked <= a.submitted <= end]
    longest = max(in_window, key=lambda pair: pair[1]) if in_window else None
    max_wait = max(0.0, longest[1] - baseline) if longest is not None and baseline is not None else 0.0
    return {
        "backend": backend,
        "switch_s": round(switched - asked, 3) if switched is not None and asked is not None else None,
        "failed": len(errors),
        "errors": errors[:5],
        "requests": len(answers) + len(errors),
        "answered_by": {v: sum(1 for a in answers if a.version == v) for v in ("bench-a", "bench-b")},
        "cut_by_switch": sum(1 for a in answers if a.finish_reason == "switch"),
        "baseline_ttft_ms": round(baseline * 1000, 1) if baseline is not None else None,
        # The noise floor: the longest TTFT before the move (a busy machine's spikes, with no switch running).
        "before_max_ttft_ms": round(max(before) * 1000, 1) if before else None,
        "max_wait_ms": round(max_wait * 1000, 1),
        "max_ttft_ms": round(max((t for _, t in timed), default=0.0) * 1000, 1),
        "window_requests": len(in_window),
        # Where the longest wait was: submitted this long after the alias move, answered by this version.
        "max_wait_submitted_s": round(longest[0].submitted - asked, 3) if longest and asked is not None else None,
        "max_wait_version": longest[0].version if longest else None,
        "concurrency": concurrency,
    }
