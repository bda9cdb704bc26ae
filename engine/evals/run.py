"""The evaluation child process: load one model version, answer every prompt of a suite, report as JSON lines.

    python -m engine.evals.run --spec SPEC.json --suite SUITE.jsonl [--out ANSWERS.jsonl] [--concurrency 8] ...
                               [--trust-remote-code]

Why a separate process: vLLM keeps its model-parallel state per process, so a second in-process engine beside the
console's live one breaks it (shutting one down tore the other down). This short-lived process owns its own
engine (an :class:`~engine.host.EngineHost`, in-process as ever), streams each prompt through ``stream_chat``
from a few threads, and exits; the console's live engine and other users' chats are untouched. It runs at a
lower CPU priority (``--nice``) so live chats win when both compete for the cores.

Protocol: stdout carries only JSON lines, each with an ``event`` key (anything libraries print goes to stderr):

- ``{"event": "loading", "version": NAME, "total": N}`` once, at start;
- ``{"event": "ready", "load_s": S}`` when the engine is loaded;
- ``{"event": "answer", "done": K, "total": N, "answer": {id, text, ttft_s, itl_s, e2e_s, output_tokens,
  tokens_per_s, finish_reason, error}}`` per prompt, in completion order;
- ``{"event": "done", "generate_s": S, "answers": N}`` at the end (exit status 0), or
  ``{"event": "error", "message": TEXT}`` when the model cannot be loaded or the suite read (exit status 2).

``--out`` also writes the answers (one JSON object per line) to a file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from engine.errors import EngineError
from engine.evals.report import Answer
from engine.evals.suite import SuiteError, SuiteRecord, suite_from_jsonl
from engine.types import ChatMessage, HostConfig, ModelSpec, SamplingSettings

logger = logging.getLogger(__name__)

EXIT_FAILED = 2


class _Protocol:
    """The JSON-lines channel to the parent; thread-safe, flushed per line."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}, ensure_ascii=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def _take_stdout() -> IO[str]:
    """Keep the real stdout for the protocol and send everything else printed to fd 1 (vLLM logs) to stderr."""
    sys.stdout.flush()
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    return protocol


def spec_from_dict(raw: dict[str, Any]) -> ModelSpec:
    """The ModelSpec the parent wrote (the fields of :class:`~engine.types.ModelSpec`, LoRA adapter included)."""
    return ModelSpec.from_dict(raw)


def spec_to_dict(spec: ModelSpec) -> dict[str, Any]:
    """The JSON form of a ModelSpec for :func:`spec_from_dict`."""
    return dataclasses.asdict(spec) | {"engine_args": dict(spec.engine_args)}


def answer_one(host: Any, record: SuiteRecord, sampling: SamplingSettings) -> Answer:
    """Stream one prompt to the end and time it; an engine error becomes the answer's ``error``."""
    try:
        stream = host.stream_chat([ChatMessage("user", record.prompt)], sampling, request_id=f"eval-{record.id}")
        for _delta in stream:
            pass
        result = stream.result
    except EngineError as exc:
        return Answer(id=record.id, text="", error=str(exc) or type(exc).__name__)
    except Exception as exc:  # one prompt's bug (a tokenizer error...) must not lose the others' answers
        logger.exception("prompt %s failed", record.id)
        return Answer(id=record.id, text="", error=f"{type(exc).__name__}: {exc}"[:500])
    return Answer(
        id=record.id, text=result.text, ttft_s=result.ttft_s, itl_s=result.mean_itl_s, e2e_s=result.e2e_s,
        output_tokens=result.output_tokens, tokens_per_s=result.tokens_per_s, finish_reason=result.finish_reason,
        error=None if not result.aborted else f"aborted ({result.finish_reason})",
    )


def answer_all(
    host: Any, records: Sequence[SuiteRecord], sampling: SamplingSettings, concurrency: int, protocol: _Protocol,
    out: IO[str] | None,
) -> int:
    """Answer ``records`` from ``concurrency`` threads, sending each answer as it completes; returns the count."""
    todo: queue.SimpleQueue[SuiteRecord] = queue.SimpleQueue()
    for record in records:
        todo.put(record)
    done = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal done
        while True:
            try:
                record = todo.get_nowait()
            except queue.Empty:
                return
            answer = answer_one(host, record, sampling)
            with lock:
                done += 1
                count = done
                if out is not None:
                    out.write(json.dumps(answer.as_dict(), ensure_ascii=False) + "\n")
                    out.flush()
            protocol.send("answer", done=count, total=len(records), answer=answer.as_dict())

    threads = [threading.Thread(target=work, name=f"eval-{i}", daemon=True) for i in range(max(1, concurrency))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done


def main(argv: list[str] | None = None) -> int:
    """Run one evaluation (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m engine.evals.run",
                                     description="Answer every prompt of a suite with one model version.")
    parser.add_argument("--spec", type=Path, required=True, help="JSON file with the model version's ModelSpec")
    parser.add_argument("--suite", type=Path, required=True, help="the suite as JSONL (Suite.to_jsonl)")
    parser.add_argument("--suite-name", default="suite", help="the suite's name, for messages")
    parser.add_argument("--out", type=Path, help="also write the answers to this JSONL file")
    parser.add_argument("--concurrency", type=int, default=8, help="prompts in flight at once")
    parser.add_argument("--kv-cache-gib", type=float, default=0.25, help="KV cache of this engine, GiB")
    parser.add_argument("--max-tokens", type=int, default=128, help="longest answer, in tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, the same answer every run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nice", type=int, default=5, help="lower this process's CPU priority by this much")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the model run its own Python code (the installation's setting; off by default)")
    args = parser.parse_args(argv)

    protocol = _Protocol(_take_stdout())
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    if args.nice > 0:
        try:
            os.nice(args.nice)
        except OSError:
            logger.warning("could not lower the CPU priority")
    try:
        spec = spec_from_dict(json.loads(args.spec.read_text(encoding="utf-8")))
        suite = suite_from_jsonl(args.suite_name, args.suite.read_text(encoding="utf-8"))
        sampling = SamplingSettings(temperature=args.temperature, top_p=1.0, max_tokens=args.max_tokens,
                                    seed=args.seed)
    except (OSError, ValueError, KeyError, SuiteError) as exc:
        protocol.send("error", message=f"Cannot read the evaluation input: {exc}")
        return EXIT_FAILED
    protocol.send("loading", version=spec.name, total=len(suite.records))

    from engine.host import EngineHost  # after the protocol is set up: vLLM prints while importing

    started = time.monotonic()
    try:
        # The host refuses engine arguments outside the allowlist (EngineArgsError, a ModelLoadError).
        config = HostConfig(kv_cache_gib=args.kv_cache_gib, drain_timeout_s=0.0,
                            trust_remote_code=args.trust_remote_code)
        host = EngineHost.start(spec, config, wait=True)
    except EngineError as exc:
        protocol.send("error", message=str(exc))
        return EXIT_FAILED
    try:
        protocol.send("ready", load_s=round(time.monotonic() - started, 3))
        began = time.monotonic()
        out = args.out.open("w", encoding="utf-8") if args.out else None
        try:
            count = answer_all(host, suite.records, sampling, args.concurrency, protocol, out)
        finally:
            if out is not None:
                out.close()
        protocol.send("done", generate_s=round(time.monotonic() - began, 3), answers=count)
    finally:
        host.shutdown()  # explicitly: vLLM's own finalisers raised at interpreter exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
