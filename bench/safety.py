"""``llm-console bench safety``: the time the safety scans add to an exchange, with the offline defaults."""

from __future__ import annotations

import functools
import logging
import os
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from engine.safety.incremental import StreamingScan
from engine.safety.pii import PiiConfig
from engine.safety.runner import ScannerRunner, build_runner
from engine.safety.toxicity import ToxicityConfig, toxicity_scanner_of

logger = logging.getLogger(__name__)

TARGET_TOTAL_P95_MS = 50.0
# The pace the answer streams at in the bench: the demo model's measured output rate on these 2-core machines is
# about 60 tokens/s (Latency page); a faster model leaves the background scans less time, a slower one more.
DEFAULT_STREAM_TOKENS_PER_S = 60.0

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


def sample_answer(words: int, *, seed: int) -> str:
    """An answer-like text of about ``words`` words: sentences of 8-16 words, an email and a phone number in it."""
    rng = random.Random(seed)
    sentences = []
    count = 0
    while count < words:
        n = min(rng.randint(8, 16), max(1, words - count))
        tokens = [rng.choice(_WORDS) for _ in range(n)]
        count += n
        sentences.append(" ".join(tokens).capitalize() + ".")
    if len(sentences) >= 3:
        sentences[1] = sentences[1][:-1] + " at jane.doe@example.com."
        sentences[-2] = sentences[-2][:-1] + " on +44 20 7946 0958."
    return " ".join(sentences)


def stream_pieces(text: str, *, seed: int) -> list[str]:
    """``text`` cut into token-sized deltas (2-6 characters), as the engine streams them."""
    rng = random.Random(seed)
    pieces, pos = [], 0
    while pos < len(text):
        step = rng.randint(2, 6)
        pieces.append(text[pos:pos + step])
        pos += step
    return pieces


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
    runner.scan(prompt, direction="prompt")
    runner.scan(answer, direction="output")


def _streamed_exchange(runner: ScannerRunner, prompt: str, pieces: list[str], pause_s: float) -> dict[str, float]:
    """One exchange as the chat service scans it: the prompt whole (before the first token), the answer while it
    streams at ``pause_s`` per delta, then its tail (after the last token). Milliseconds."""
    began = time.perf_counter()
    runner.scan(prompt, direction="prompt")
    before = (time.perf_counter() - began) * 1000.0
    scan = StreamingScan(runner)
    for piece in pieces:
        scan.feed(piece)
        if pause_s:
            time.sleep(pause_s)
    began = time.perf_counter()
    scan.finish()
    after = (time.perf_counter() - began) * 1000.0
    return {"before": before, "after": after, "total": before + after, "background": scan.background_ms}


def run_safety_bench(
    *,
    iterations: int = 50,
    runner: ScannerRunner | None = None,
    pii_config: PiiConfig | None = None,
    toxicity_config: ToxicityConfig | None = None,
    stream_tokens_per_s: float = DEFAULT_STREAM_TOKENS_PER_S,
    stream_iterations: int = 20,
) -> dict[str, Any]:
    """Scan latency as the chat service pays it, per scanner, on 100-word and 2,000-word texts.

    Defaults to the offline set-up (Presidio + whichever toxicity scanner loads without a download + the injection
    scanner, which judges prompts only under the default policy: answers are scanned without it).
    ``total_p95_ms`` is the p95, over ``stream_iterations`` exchanges, of the time scanning adds to one exchange
    with a 100-word prompt and a 100-word answer: the prompt's scan before the first token plus the answer's tail
    scan after the last token (the rest of the answer is scanned in the background while it streams at
    ``stream_tokens_per_s``). ``whole_answer_p95_ms`` is the same exchange with the answer scanned whole at its end
    (how it was done before), measured in the same run.
    """
    if iterations < 1 or stream_iterations < 1:
        raise ValueError("iterations must be >= 1")
    if stream_tokens_per_s <= 0:
        raise ValueError("stream_tokens_per_s must be > 0")
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
        # The machine is shared and noisy: its 1-, 5- and 15-minute load averages when the bench started.
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "sizes": {},
    }
    for words in (100, 2000):
        prompt = sample_text(words, seed=1)
        answer = sample_text(words, seed=2)
        runner.scan(prompt, direction="prompt")  # warm-up: first calls build caches
        per_scanner: dict[str, dict[str, float]] = {}
        for scanner in runner.scanners:
            per_scanner[scanner.name] = _percentiles(_time(functools.partial(scanner.scan, prompt), iterations))
        whole = _time(functools.partial(_scan_both, runner, prompt, answer), iterations)
        result["sizes"][f"{words}_words"] = {
            "chars": len(prompt),
            "per_scanner": per_scanner,
            # Added before the first token (the prompt's scan) and after the last one (the answer's).
            "prompt_scan": _percentiles(_time(functools.partial(runner.scan, prompt, direction="prompt"), iterations)),
            "output_scan": _percentiles(_time(functools.partial(runner.scan, answer, direction="output"), iterations)),
            "prompt_plus_answer": _percentiles(whole),
        }
    # The exchange as the chat service scans it: prompt before the first token, answer while it streams.
    prompt = sample_text(100, seed=1)
    answer = sample_answer(100, seed=2)
    pieces = stream_pieces(answer, seed=3)
    whole = _time(functools.partial(_scan_both, runner, prompt, answer), iterations)
    _streamed_exchange(runner, prompt, pieces, 0.0)  # warm-up
    runs = [_streamed_exchange(runner, prompt, pieces, 1.0 / stream_tokens_per_s) for _ in range(stream_iterations)]
    total = _percentiles([r["total"] for r in runs])
    result["streamed_100_words"] = {
        "stream_tokens_per_s": stream_tokens_per_s,
        "exchanges": stream_iterations,
        "answer_chars": len(answer),
        "answer_deltas": len(pieces),
        "before_first_token": _percentiles([r["before"] for r in runs]),
        "after_last_token": _percentiles([r["after"] for r in runs]),
        "background_while_streaming": _percentiles([r["background"] for r in runs]),
        "whole_answer_at_end": _percentiles(whole),
    }
    result["total_p50_ms"] = total["p50_ms"]
    result["total_p95_ms"] = total["p95_ms"]
    result["whole_answer_p95_ms"] = _percentiles(whole)["p95_ms"]
    result["ratio_to_whole_answer"] = (round(total["p95_ms"] / result["whole_answer_p95_ms"], 3)
                                       if result["whole_answer_p95_ms"] else None)
    # The injection scanner's own share (it runs on the prompt, before the first token): 100-word prompt.
    injection = result["sizes"]["100_words"]["per_scanner"].get("injection")
    if injection is not None:
        result["injection_p50_ms"] = injection["p50_ms"]
        result["injection_p95_ms"] = injection["p95_ms"]
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["target_total_p95_ms"] = TARGET_TOTAL_P95_MS
    result["meets_target"] = total["p95_ms"] <= TARGET_TOTAL_P95_MS
    logger.info("safety bench: total p95 %s ms (target %s ms)", result["total_p95_ms"], TARGET_TOTAL_P95_MS)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run_safety_bench(), indent=2))


# Issue 21's adversarial shapes (runs the regexes and spaCy's tokenizer once read in quadratic time), and the
# punctuation runs spaCy's tokenizer alone was quadratic on (see engine.safety.pii.spacy_text).
ADVERSARIAL_SHAPES: dict[str, str] = {
    "capitalised-words": "PLEASE HELP ME NOW ",
    "title-case-words": "Please Help Me Now ",
    "aa-words": "Aa ",
    "digits-and-spaces": "12 34 5 ",
    "commas": ",",
    "commas-and-spaces": ", ",
    "parentheses": "(",
    "colons-and-digits": "1:",
}
ADVERSARIAL_CHARS = 20_000


def adversarial_text(unit: str, size: int = ADVERSARIAL_CHARS) -> str:
    """``unit`` repeated to exactly ``size`` characters."""
    return (unit * (size // len(unit) + 1))[:size]


def run_adversarial_bench(size: int = ADVERSARIAL_CHARS, runner: ScannerRunner | None = None,
                          shapes: dict[str, str] | None = None) -> dict[str, Any]:
    """One whole prompt scan (Presidio with spaCy and our recognizers, then toxicity) of ``size`` characters of each
    adversarial shape, with no time limit: the time each scanner took and the total, in ms (one scan each: the
    figure is what one such paste costs, measured on whatever else the machine is doing)."""
    if runner is None:
        runner, _ = build_runner(PiiConfig(), ToxicityConfig())
    runner = ScannerRunner(runner.scanners)  # no limit: the bench measures how long the whole scan takes
    runner.scan(sample_text(40, seed=0))  # warm: the first scan loads lazily built parts
    result: dict[str, Any] = {"chars": size, "shapes": {}}
    for name, unit in (shapes or ADVERSARIAL_SHAPES).items():
        text = adversarial_text(unit, size)
        began = time.perf_counter()
        report = runner.scan(text)
        total_ms = (time.perf_counter() - began) * 1000.0
        result["shapes"][name] = {"total_ms": round(total_ms, 1), "findings": len(report.findings),
                                  **{f"{scanner}_ms": round(ms, 1) for scanner, ms in report.timings_ms.items()}}
    result["slowest_ms"] = max((s["total_ms"] for s in result["shapes"].values()), default=0.0)
    return result
