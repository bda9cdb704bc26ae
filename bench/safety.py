"""``llm-console bench safety``: latency of the safety scan with the offline defaults."""

from __future__ import annotations

import functools
import logging
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from engine.safety.pii import PiiConfig
from engine.safety.runner import ScannerRunner, build_runner
from engine.safety.toxicity import ToxicityConfig, toxicity_scanner_of

logger = logging.getLogger(__name__)

TARGET_TOTAL_P95_MS = 50.0

_WORDS = (
    "the order arrived late and the box was damaged so I would like a refund or a replacement please "
    "my account shows an invoice I do not recognise can you explain the charge and how to cancel "
    "thank you for your help the support team answered quickly and solved the problem with my login"
).split()


def sample_text(words: int, *, seed: int, with_pii: bool = True) -> str:
    """A support-chat-like text of ``words`` words; with_pii puts an email and a phone number in it."""
    rng = random.Random(seed)
    tokens = [rng.choice(_WORDS) for _ in range(words)]
    if with_pii and words >= 20:
        tokens[words // 3] = "jane.doe@example.com"
        tokens[2 * words // 3] = "+44 20 7946 0958"
    return " ".join(tokens)


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    p95_index = max(0, min(len(ordered) - 1, round(0.95 * len(ordered)) - 1))
    return {"p50_ms": round(statistics.median(ordered), 2), "p95_ms": round(ordered[p95_index], 2)}


def _time(fn: Callable[[], object], iterations: int) -> list[float]:
    out = []
    for _ in range(iterations):
        began = time.perf_counter()
        fn()
        out.append((time.perf_counter() - began) * 1000.0)
    return out


def _scan_both(runner: ScannerRunner, prompt: str, answer: str) -> None:
    runner.scan(prompt)
    runner.scan(answer)


def run_safety_bench(
    *,
    iterations: int = 50,
    runner: ScannerRunner | None = None,
    pii_config: PiiConfig | None = None,
    toxicity_config: ToxicityConfig | None = None,
) -> dict[str, Any]:
    """p50/p95 latency per scanner and for a whole prompt+answer scan, on 100-word and 2,000-word texts.

    Defaults to the offline set-up (Presidio + whichever toxicity scanner loads without a download).
    ``total_p95_ms`` is the p95 of scanning a 100-word prompt and a 100-word answer.
    """
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    load_began = time.perf_counter()
    notice = None
    if runner is None:
        runner, notice = build_runner(pii_config, toxicity_config or ToxicityConfig(allow_download=False))
    load_s = time.perf_counter() - load_began
    result: dict[str, Any] = {
        "iterations": iterations,
        "scanners": dict(runner.versions),
        "toxicity_notice": notice,
        # Which toxicity detector was timed: detoxify, offline (tox-block in numpy) or fallback (profanity only).
        "toxicity_detector": getattr(toxicity_scanner_of(runner.scanners), "kind", None),
        "load_seconds": round(load_s, 2),
        "sizes": {},
    }
    for words in (100, 2000):
        prompt = sample_text(words, seed=1)
        answer = sample_text(words, seed=2)
        runner.scan(prompt)  # warm-up: first calls build caches
        per_scanner: dict[str, dict[str, float]] = {}
        for scanner in runner.scanners:
            per_scanner[scanner.name] = _percentiles(_time(functools.partial(scanner.scan, prompt), iterations))
        whole = _time(functools.partial(_scan_both, runner, prompt, answer), iterations)
        result["sizes"][f"{words}_words"] = {
            "chars": len(prompt),
            "per_scanner": per_scanner,
            # Added before the first token (the prompt's scan) and after the last one (the answer's).
            "prompt_scan": _percentiles(_time(functools.partial(runner.scan, prompt), iterations)),
            "output_scan": _percentiles(_time(functools.partial(runner.scan, answer), iterations)),
            "prompt_plus_answer": _percentiles(whole),
        }
    total = result["sizes"]["100_words"]["prompt_plus_answer"]
    result["total_p50_ms"] = total["p50_ms"]
    result["total_p95_ms"] = total["p95_ms"]
    result["target_total_p95_ms"] = TARGET_TOTAL_P95_MS
    result["meets_target"] = total["p95_ms"] <= TARGET_TOTAL_P95_MS
    logger.info("safety bench: total p95 %s ms (target %s ms)", result["total_p95_ms"], TARGET_TOTAL_P95_MS)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run_safety_bench(), indent=2))
