"""The parent's side of an evaluation: start ``python -m engine.evals.run`` for one version and read its answers,
and (:func:`run_latency_comparison`) time the candidate against a baseline version in the same run.

The child owns its own vLLM engine for the length of one suite (see :mod:`engine.evals.run` for why it must be a
separate process). This module writes the child's inputs to a temporary directory, reads its JSON-lines events as
they come (progress for the caller), enforces a time limit and cancellation, and turns a failed child into an
:class:`EvaluationRunError` whose message says why (the child's own error, or the tail of its log).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import EngineArgsError, EngineError
from engine.evals.latency import BASELINE, CANDIDATE, PairedTiming, abba_first
from engine.evals.report import Answer
from engine.evals.run import spec_to_dict
from engine.evals.suite import Suite, SuiteRecord
from engine.remote import ChildEngine
from engine.types import ChatMessage, ModelSpec, SamplingSettings, check_engine_args

logger = logging.getLogger(__name__)

# The directory that holds the ``engine`` package: the child's working directory, so ``-m engine...`` resolves
# to this same code whether or not the project is installed.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
LOG_TAIL_LINES = 12


class EvaluationRunError(EngineError):
    """The evaluation child could not load the version, crashed, timed out or was cancelled; safe to show."""


@dataclass(frozen=True)
class ChildConfig:
    """How the evaluation child runs. Greedy sampling by default, so two runs of one version answer alike and
    a bias pair's answers differ only because their prompts do.

    The paired latency comparison (when the evaluation has a baseline) sends ``latency_prompts`` prompts to both
    versions, answers cut at ``latency_max_tokens`` tokens (only the first token is compared), after
    ``latency_warmup`` unmeasured requests to each."""

    kv_cache_gib: float = 0.25
    concurrency: int = 8
    max_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0
    nice: int = 5
    timeout_s: float = 1800.0
    python: str = sys.executable
    latency_prompts: int = 40
    latency_max_tokens: int = 8
    latency_warmup: int = 2
    trust_remote_code: bool = False  # the installation's setting, passed on to the child's engine

    def __post_init__(self) -> None:
        if not self.kv_cache_gib > 0:
            raise ValueError(f"ChildConfig.kv_cache_gib must be > 0, got {self.kv_cache_gib}")
        if self.concurrency < 1:
            raise ValueError(f"ChildConfig.concurrency must be >= 1, got {self.concurrency}")
        if self.max_tokens < 1:
            raise ValueError(f"ChildConfig.max_tokens must be >= 1, got {self.max_tokens}")
        if not self.timeout_s > 0:
            raise ValueError(f"ChildConfig.timeout_s must be > 0, got {self.timeout_s}")
        if self.latency_prompts < 1 or self.latency_max_tokens < 1 or self.latency_warmup < 0:
            raise ValueError("ChildConfig.latency_prompts and latency_max_tokens must be >= 1, latency_warmup >= 0")

    def sampling(self) -> dict[str, Any]:
        """The sampling the answers were made with, for the report."""
        return {"temperature": self.temperature, "top_p": 1.0, "max_tokens": self.max_tokens, "seed": self.seed}


@dataclass(frozen=True)
class ChildRun:
    """What the child produced: every answer (in completion order) and how long loading and answering took."""

    answers: tuple[Answer, ...]
    load_s: float | None
    generate_s: float | None
    wall_s: float

    def run_info(self, config: ChildConfig) -> dict[str, Any]:
        """The run's facts for the report's ``run`` entry."""
        return {"load_s": self.load_s, "generate_s": self.generate_s, "wall_s": round(self.wall_s, 3),
                "concurrency": config.concurrency, "kv_cache_gib": config.kv_cache_gib,
                "sampling": config.sampling(), "engine": "separate process"}


ProgressFn = Callable[[str, int, int], None]  # (phase "loading"/"answering"/"comparing", done, total)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def run_suite_in_child(
    spec: ModelSpec,
    suite: Suite,
    config: ChildConfig | None = None,
    *,
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> ChildRun:
    """Answer every prompt of ``suite`` with ``spec`` in a separate, short-lived process; blocks until it ends.

    ``on_progress(phase, done, total)`` is called from this thread as events arrive. Raises
    :class:`EvaluationRunError` if the child fails, exceeds ``config.timeout_s`` or ``cancel`` is set.
    """
    config = config or ChildConfig()
    try:  # before a process starts; the child's own host refuses it again
        check_engine_args(spec.engine_args, version=spec.name)
    except EngineArgsError as exc:
        raise EvaluationRunError(f"The evaluation of {spec.name} cannot start: {exc}") from None
    progress = on_progress or (lambda phase, done, total: None)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llm-console-eval-") as tmp:
        work = Path(tmp)
        (work / "spec.json").write_text(json.dumps(spec_to_dict(spec)), encoding="utf-8")
        (work / "suite.jsonl").write_text(suite.to_jsonl(), encoding="utf-8")
        log_path = work / "child.log"
        command = [
            config.python, "-m", "engine.evals.run", "--spec", str(work / "spec.json"),
            "--suite", str(work / "suite.jsonl"), "--suite-name", suite.name,
            "--concurrency", str(config.concurrency), "--kv-cache-gib", str(config.kv_cache_gib),
            "--max-tokens", str(config.max_tokens), "--temperature", str(config.temperature),
            "--seed", str(config.seed), "--nice", str(config.nice),
            *(["--trust-remote-code"] if config.trust_remote_code else []),
        ]
        with log_path.open("w", encoding="utf-8") as log:
            proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, cwd=PACKAGE_ROOT,
                text=True, encoding="utf-8", errors="replace",
            )
            logger.info("evaluation of %s on %s: child process %s started", spec.name, suite.name, proc.pid)
            stopped: list[str] = []
            watchdog = threading.Thread(
                target=_watch, args=(proc, started + config.timeout_s, cancel, stopped), daemon=True,
                name=f"eval-watchdog-{proc.pid}",
            )
            watchdog.start()
            answers: list[Answer] = []
            load_s = generate_s = None
            error: str | None = None
            finished = False
            total = len(suite.records)
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    try:
                        event = json.loads(line)
                    except json.JSONDecodeError:
                        logger.debug("evaluation child: %s", line.rstrip())
                        continue
                    kind = event.get("event") if isinstance(event, dict) else None
                    if kind == "loading":
                        progress("loading", 0, total)
                    elif kind == "ready":
                        load_s = event.get("load_s")
                        progress("answering", 0, total)
                    elif kind == "answer":
                        answers.append(Answer.from_dict(event["answer"]))
                        progress("answering", len(answers), total)
                    elif kind == "done":
                        generate_s = event.get("generate_s")
                        finished = True
                    elif kind == "error":
                        error = str(event.get("message") or "unknown error")
            finally:
                proc.stdout.close()
                status = proc.wait()
                stopped.append("ended")  # tells the watchdog to stop
                watchdog.join(timeout=5)
        wall_s = time.monotonic() - started
        if stopped and stopped[0] in ("timeout", "cancelled"):
            reason = ("took longer than " + f"{config.timeout_s:.0f} s") if stopped[0] == "timeout" else "was cancelled"
            raise EvaluationRunError(f"The evaluation of {spec.name} {reason}; it was stopped.")
        if error is not None:
            raise EvaluationRunError(f"The evaluation of {spec.name} failed: {error}")
        if status != 0 or not finished:
            tail = _tail(log_path)
            raise EvaluationRunError(
                f"The evaluation process for {spec.name} ended unexpectedly (exit status {status})."
                + (f" Its last log lines:\n{tail}" if tail else "")
            )
    logger.info("evaluation of %s on %s: %s answers in %.1f s", spec.name, suite.name, len(answers), wall_s)
    return ChildRun(tuple(answers), load_s, generate_s, wall_s)


def _watch(proc: subprocess.Popen[str], deadline: float, cancel: threading.Event | None, stopped: list[str]) -> None:
    """Kill the child on timeout or cancellation; ``stopped[0]`` records why (or "ended" once it ended)."""
    while proc.poll() is None and not stopped:
        why = "cancelled" if cancel is not None and cancel.is_set() else "timeout" if time.monotonic() > deadline else None
        if why is not None:
            stopped.append(why)
            logger.warning("evaluation child %s %s: killing it", proc.pid, why)
            proc.kill()
            return
        time.sleep(0.2)


# --- the paired latency comparison ------------------------------------------------------------------------------


def latency_prompts(records: Sequence[SuiteRecord], count: int) -> list[SuiteRecord]:
    """``count`` prompts for the latency comparison: spread evenly over the suite (every kind is in it), or the
    suite repeated when it has fewer."""
    if not records:
        return []
    if len(records) <= count:
        return [records[i % len(records)] for i in range(count)]
    return [records[i * len(records) // count] for i in range(count)]


def _first_token_ms(engine: ChildEngine, text: str, sampling: SamplingSettings, request_id: str) -> float | None:
    """Stream one prompt to its end; vLLM's time to first token in ms, None if the request failed."""
    try:
        stream = engine.stream_chat([ChatMessage("user", text)], sampling, request_id=request_id)
        for _delta in stream:
            pass
        result = stream.result
    except EngineError as exc:
        logger.warning("latency comparison: %s on %s failed: %s", request_id, engine.spec.name, exc)
        return None
    if result.aborted or result.ttft_s is None:
        return None
    return result.ttft_s * 1000.0


def time_pairs(candidate: ChildEngine, baseline: ChildEngine, records: Sequence[SuiteRecord],
               config: ChildConfig | None = None, *, on_progress: ProgressFn | None = None,
               stop: Callable[[], bool] | None = None) -> list[PairedTiming]:
    """Time both running versions on ``records``, one request at a time in ABBA order, after
    ``config.latency_warmup`` unmeasured requests to each; ``stop()`` True ends it early (pairs so far)."""
    config = config or ChildConfig()
    progress = on_progress or (lambda phase, done, total: None)
    stopped = stop or (lambda: False)
    engines = {CANDIDATE: candidate, BASELINE: baseline}
    sampling = SamplingSettings(temperature=0.0, top_p=1.0, max_tokens=config.latency_max_tokens,
                                seed=config.seed, ignore_eos=True)
    for w in range(min(config.latency_warmup, len(records))):  # first requests pay for cold caches: not measured
        for role in (CANDIDATE, BASELINE):
            _first_token_ms(engines[role], records[w].prompt, sampling, f"lat-warmup-{w}")
    pairs: list[PairedTiming] = []
    for i, record in enumerate(records):
        if stopped():
            break
        first = abba_first(i)
        times: dict[str, float | None] = {}
        for role in (first, BASELINE if first == CANDIDATE else CANDIDATE):
            times[role] = _first_token_ms(engines[role], record.prompt, sampling, f"lat-{i}-{record.id}")
        pairs.append(PairedTiming(record.id, times[CANDIDATE], times[BASELINE], first))
        progress("comparing", i + 1, len(records))
    return pairs


def run_latency_comparison(
    candidate: ModelSpec,
    baseline: ModelSpec,
    records: Sequence[SuiteRecord],
    config: ChildConfig | None = None,
    *,
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> list[PairedTiming]:
    """Time the first token of both versions on the same prompts, in the same run; blocks until it ends.

    Each version is served by its own child process (:mod:`engine.child`; two vLLM engines in one process
    cannot be stopped independently), both started side by side and both idle but for the one request this
    thread sends at a time. Prompt ``i`` goes to both versions back to back, the candidate first for even ``i``
    and the baseline first for odd ``i`` (ABBA), so drifts in the machine's load hit both alike. Greedy, answers
    cut at ``config.latency_max_tokens``. Raises :class:`EvaluationRunError` when a version cannot load,
    ``cancel`` is set or ``config.timeout_s`` passes.
    """
    config = config or ChildConfig()
    progress = on_progress or (lambda phase, done, total: None)
    deadline = time.monotonic() + config.timeout_s
    total = len(records)
    progress("comparing", 0, total)
    engines: dict[str, ChildEngine] = {}
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="latency-load") as pool:
        futures = {role: pool.submit(ChildEngine.start, spec, kv_cache_gib=config.kv_cache_gib, nice=config.nice,
                                     timeout_s=config.timeout_s, trust_remote_code=config.trust_remote_code)
                   for role, spec in ((CANDIDATE, candidate), (BASELINE, baseline))}
        failures = []
        for role, future in futures.items():
            try:
                engines[role] = future.result()
            except EngineError as exc:
                failures.append(str(exc))
    stopped: list[str] = []

    def watch() -> None:  # a hung request must not outlive the timeout or a cancellation
        while not stopped:
            why = ("cancelled" if cancel is not None and cancel.is_set()
                   else "timeout" if time.monotonic() > deadline else None)
            if why is not None:
                stopped.append(why)
                for engine in engines.values():
                    engine.kill()
                return
            time.sleep(0.2)

    watchdog = threading.Thread(target=watch, name="latency-watchdog", daemon=True)
    watchdog.start()
    try:
        if failures:
            raise EvaluationRunError("The latency comparison could not start: " + "; ".join(failures))
        pairs = time_pairs(engines[CANDIDATE], engines[BASELINE], records, config, on_progress=progress,
                           stop=lambda: bool(stopped))
    finally:
        stopped.append("ended")
        watchdog.join(timeout=5)
        for engine in engines.values():
            engine.shutdown()
    if stopped[0] in ("timeout", "cancelled"):
        reason = f"took longer than {config.timeout_s:.0f} s" if stopped[0] == "timeout" else "was cancelled"
        raise EvaluationRunError(f"The latency comparison of {candidate.name} with {baseline.name} {reason}; "
                                 "it was stopped.")
    logger.info("latency comparison of %s with %s: %s pairs", candidate.name, baseline.name, len(pairs))
    return pairs
