"""Benchmark: the promotion's latency gate on one model against itself (how often would it fail for noise?).

    python -m bench.latency_gate [--rounds 5] [--prompts 40] [--model DIR] [--json]

The same weights are served under two names by two child engines side by side, as an evaluation's latency
comparison does (:func:`engine.evals.runner.time_pairs`: the same prompts, one request at a time, ABBA). Each
round times ``prompts`` pairs and judges them with the console's gate at its default settings; since both
"versions" are one model, every failed round is a false fail. ``false_fail_rate`` is failed rounds / rounds.
``old_rule_false_fails`` applies the gate this replaced to the same timings: one round's candidate p95 against
the previous round's baseline p95 (two numbers from different moments) plus the margin.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from console.services.promotion import ttft_gate
from console.settings import Settings
from engine.child_client import ChildEngineClient
from engine.evals.latency import compare_paired
from engine.evals.runner import ChildConfig, latency_prompts, time_pairs
from engine.evals.suite import load_builtin
from engine.types import ModelSpec


def run_latency_gate_bench(*, rounds: int = 5, prompts: int = 40, max_tokens: int = 8,
                           model: Path | None = None) -> dict[str, Any]:
    """Run ``rounds`` paired comparisons of one model with itself; returns each round's verdict and the rate."""
    with tempfile.TemporaryDirectory(prefix="bench-latency-gate-") as tmp:
        if model is None:
            from engine.demo.tiny import build_tiny_model

            model = build_tiny_model(Path(tmp) / "tiny")
        settings = Settings.from_env({"LLM_CONSOLE_DATA_DIR": tmp})
        config = ChildConfig(latency_prompts=prompts, latency_max_tokens=max_tokens)
        records = latency_prompts(load_builtin("standard").records, prompts)
        started = time.monotonic()
        a = ChildEngineClient.start(ModelSpec(name="same-a", source=str(model)), config.host_config(), nice=config.nice)
        try:
            b = ChildEngineClient.start(ModelSpec(name="same-b", source=str(model)), config.host_config(),
                                        nice=config.nice)
        except BaseException:
            a.shutdown()
            raise
        load_s = time.monotonic() - started
        out = []
        try:
            for r in range(rounds):
                pairs = time_pairs(a, b, records, config)
                summary = compare_paired(pairs, candidate_version="same-a", baseline_version="same-b", seed=r,
                                         max_tokens=max_tokens)
                gate = ttft_gate(settings, {"latency_comparison": summary}, None, baseline_version="same-b")
                out.append({"round": r + 1, "n": summary["n"], "p95_ms": summary["baseline_ttft_p95_ms"],
                            "candidate_p95_ms": summary["candidate_ttft_p95_ms"],
                            "diff_ms": summary["diff_ms"], "ci_low_ms": summary["ci_low_ms"],
                            "ci_high_ms": summary["ci_high_ms"], "margin_ms": gate.limit, "passed": gate.passed})
        finally:
            a.shutdown()
            b.shutdown()
    fails = sum(not r["passed"] for r in out)
    old = [cur["candidate_p95_ms"] > prev["p95_ms"] * (1 + settings.promotion_ttft_margin)
           for prev, cur in zip(out, out[1:], strict=False)
           if cur["candidate_p95_ms"] is not None and prev["p95_ms"] is not None]
    return {"rounds": out, "false_fails": fails, "false_fail_rate": fails / rounds if rounds else None,
            "old_rule_false_fails": sum(old), "old_rule_comparisons": len(old),
            "margin": settings.promotion_ttft_margin, "min_pairs": settings.promotion_ttft_min_pairs,
            "load_s": round(load_s, 1), "model": str(model)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency_gate", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--model", type=Path, help="a model directory (default: the tiny test model)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run_latency_gate_bench(rounds=args.rounds, prompts=args.prompts, max_tokens=args.max_tokens,
                                    model=args.model)
    if args.json:
        print(json.dumps(result))
        return 0
    for r in result["rounds"]:
        if r["diff_ms"] is None:
            print(f"round {r['round']}: only {r['n']} pairs: FAIL (not enough data)")
            continue
        print(f"round {r['round']}: {r['n']} pairs, p95 {r['p95_ms']} ms, difference {r['diff_ms']:+.2f} ms "
              f"(95% CI {r['ci_low_ms']:+.2f}..{r['ci_high_ms']:+.2f}), margin {r['margin_ms']:.2f} ms: "
              f"{'pass' if r['passed'] else 'FAIL'}")
    print(f"false fails: {result['false_fails']} of {len(result['rounds'])} rounds "
          f"(margin {result['margin']:.0%}, at least {result['min_pairs']} pairs); engines loaded in "
          f"{result['load_s']} s")
    print(f"the old rule (candidate p95 vs the previous round's baseline p95 + {result['margin']:.0%}) would have "
          f"failed {result['old_rule_false_fails']} of {result['old_rule_comparisons']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
