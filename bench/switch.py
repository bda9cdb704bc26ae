"""Benchmark: switching the served version under load, the way an admin's "serve" reaches a running console.

Two versions of the tiny model (the same weights under two names) are registered in a throwaway database; a
host serves the first, its reconciler watches the desired state, and ``concurrency`` caller threads chat in a
loop. Then the production alias moves to the second version (what an approved promotion writes; the bench writes
it as a shell command with ``--break-glass`` would, in its throwaway database).

``switch_s`` is the time from that write to the first token streamed by the new version; ``failed`` counts the
requests that raised during the whole run (the target is 0).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from console.services import registry, serving
from console.services.access import Principal
from console.services.context import AppContext
from console.settings import Settings
from db.config import DbConfig
from db.database import Database
from engine.host import EngineHost
from engine.types import ChatMessage, HostConfig, SamplingSettings

_PROMPT = [ChatMessage("user", "Where is my order?")]


def run_switch_bench(*, concurrency: int = 8, max_tokens: int = 32, kv_cache_gib: float = 0.25,
                     settle_s: float = 2.0) -> dict[str, Any]:
    """Run the switch once; returns switch_s, failed, requests and per-version counts."""
    from engine.demo.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-switch-") as tmp:
        root = Path(tmp)
        first = build_tiny_model(root / "tiny-a")
        second = Path(shutil.copytree(first, root / "tiny-b"))
        settings = Settings.from_env({"LLM_CONSOLE_DATA_DIR": str(root), "LLM_CONSOLE_ENGINE_AUTOSTART": "false"})
        db = Database(DbConfig(settings.database_url))
        db.migrate()
        ctx = AppContext(settings, db)
        shell = Principal.shell(ctx, "bench switch")  # the throwaway database's own shell user
        for name, path in (("bench-a", first), ("bench-b", second)):
            registry.register(ctx, shell, name=name, source=str(path), revision=None, dtype="float32",
                              max_model_len=None, engine_args={}, description="switch bench")
        serving.serve(ctx, shell, "bench-a", "switch bench: start")
        host = EngineHost.start(registry.loadable_spec(ctx, "bench-a"), HostConfig(kv_cache_gib=kv_cache_gib),
                                wait=True)
        reconciler = serving.Reconciler(ctx, host, interval_s=0.1).start()
        lock = threading.Lock()
        firsts: list[tuple[float, str]] = []  # (time of first token, version) per request
        errors: list[str] = []
        done = threading.Event()
        sampling = SamplingSettings(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)

        def chat() -> None:
            while not done.is_set():
                try:
                    stream = host.stream_chat(_PROMPT, sampling)
                    first_at = None
                    for _ in stream:
                        if first_at is None:
                            first_at = time.monotonic()
                    with lock:
                        firsts.append((first_at or time.monotonic(), stream.result.model_version))
                except Exception as exc:  # every failure is what this bench counts
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=chat, daemon=True) for _ in range(concurrency)]
        try:
            for t in threads:
                t.start()
            time.sleep(settle_s)
            asked = time.monotonic()
            serving.serve(ctx, shell, "bench-b", "switch bench: switch", break_glass="switch bench (throwaway database)")
            deadline = asked + 300
            while time.monotonic() < deadline:
                with lock:
                    new = [t for t, v in firsts if v == "bench-b"]
                if new:
                    break
                time.sleep(0.05)
            time.sleep(settle_s)
        finally:
            done.set()
            for t in threads:
                t.join(60)
            reconciler.stop()
            host.shutdown()
            db.dispose()
        switched = [t for t, v in firsts if v == "bench-b" and t >= asked]
        return {
            "switch_s": round(min(switched) - asked, 3) if switched else None,
            "failed": len(errors),
            "errors": errors[:5],
            "requests": len(firsts) + len(errors),
            "answered_by": {v: sum(1 for _, x in firsts if x == v) for v in ("bench-a", "bench-b")},
            "concurrency": concurrency,
        }
