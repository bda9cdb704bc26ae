"""Print both demo versions' scores on the held-out questions: greedy and at the chat page's default sampling.

Run ``python -m engine.demo.compare [--models-dir data/models] [--all] [--json]`` after the models are built.
Each model is loaded in vLLM in this process (one after the other) and answers every question of the chosen sets
(default: ``held-out-chats``, the promotion set in ``heldout.jsonl``, and ``conversations``) greedily and at
temperature 0.3 / top-p 0.95 (the chat page's defaults) with several seeds. ``conversations``
(``conversations.jsonl``, a tuning set) are played turn by turn as on the chat page: each question after the
model's own earlier answers. A support answer is right when it does not refuse and mentions what was asked
about; an off-topic one when it is the refusal; "clean" additionally means the answer is word for word one of the
corpus answers and ended at the end token. "Garbled" means the answer is neither word for word one of the corpus
answers nor the start of one cut by the token limit; the last lines count garbled answers over every set run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.demo.scoring import (
    QUESTION_SETS,
    DemoAnswer,
    DemoScore,
    converse,
    load_conversations,
    score_model,
)

CHAT_TEMPERATURE = 0.3  # console/views/chat.py: the Temperature slider's default
CHAT_TOP_P = 0.95  # and the Top-p slider's
CHAT_MAX_TOKENS = 256
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
CONVERSATIONS = "conversations"  # the set of chats played turn by turn (see converse)
DEFAULT_SETS = ("held-out-chats", CONVERSATIONS)
ALL_SETS = (*sorted(QUESTION_SETS), CONVERSATIONS)


@dataclass(frozen=True)
class Score:
    """Counts for one model, one question set and one temperature (summed over the seeds for sampling)."""

    support_right: int
    support_total: int
    declined: int
    off_topic_total: int
    chats_right: int
    chats_total: int
    clean: int
    total: int
    garbled: int = 0

    @classmethod
    def of(cls, answers: Sequence[DemoAnswer]) -> Score:
        support = [a for a in answers if a.topic != "out_of_domain"]
        off_topic = [a for a in answers if a.topic == "out_of_domain"]
        chats = [a for a in answers if a.multi_turn]
        return cls(
            support_right=sum(a.passed for a in support), support_total=len(support),
            declined=sum(a.passed for a in off_topic), off_topic_total=len(off_topic),
            chats_right=sum(a.passed for a in chats), chats_total=len(chats),
            clean=sum(a.clean for a in answers), total=len(answers), garbled=sum(a.garbled for a in answers),
        )

    @property
    def right(self) -> int:
        return self.support_right + self.declined

    def line(self) -> str:
        return (f"support {self.support_right}/{self.support_total}, off-topic declined "
                f"{self.declined}/{self.off_topic_total}, chats {self.chats_right}/{self.chats_total}, "
                f"all right {self.right}/{self.total}, clean {self.clean}/{self.total}, "
                f"garbled {self.garbled}/{self.total}")


def scores(report: DemoScore) -> dict[float, Score]:
    """The report's scores per temperature."""
    temps = sorted({a.temperature for a in report.answers})
    return {t: Score.of([a for a in report.answers if a.temperature == t]) for t in temps}


def compare(
    model_dirs: dict[str, Path],
    *,
    sets: Sequence[str] = DEFAULT_SETS,
    seeds: tuple[int, ...] = DEFAULT_SEEDS,
    temperature: float = CHAT_TEMPERATURE,
) -> dict[str, dict[str, DemoScore]]:
    """Score every model on every set; returns ``{model name: {set name: report}}``."""
    from vllm import LLM

    from engine.demo.scoring import _shutdown

    results: dict[str, dict[str, DemoScore]] = {}
    for name, model_dir in model_dirs.items():
        config = json.loads((model_dir / "config.json").read_text())
        llm = LLM(model=str(model_dir), enforce_eager=True, max_model_len=int(config["max_position_embeddings"]),
                  seed=0, kv_cache_memory_bytes=1 << 29)
        try:
            results[name] = {
                set_name: converse(llm, load_conversations(), temperatures=(0.0, temperature), seeds=seeds,
                                   top_p=CHAT_TOP_P, max_tokens=CHAT_MAX_TOKENS, model_dir=str(model_dir))
                if set_name == CONVERSATIONS else
                score_model(model_dir, llm=llm, questions=QUESTION_SETS[set_name],
                         temperatures=(0.0, temperature), seeds=seeds, top_p=CHAT_TOP_P,
                         max_tokens=CHAT_MAX_TOKENS)
                for set_name in sets
            }
        finally:
            _shutdown(llm)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.demo.compare", description=__doc__)
    parser.add_argument("--models-dir", type=Path, default=Path("data/models"))
    parser.add_argument("--model", action="append", help="version name(s) (default: support-demo-v1 and -v2)")
    parser.add_argument("--set", action="append", choices=ALL_SETS,
                        help=f"question set(s) (default: {' and '.join(DEFAULT_SETS)})")
    parser.add_argument("--all", action="store_true", help="every question set and the conversations")
    parser.add_argument("--seeds", type=int, default=len(DEFAULT_SEEDS), help="sampling seeds (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON, with every answer")
    parser.add_argument("--wrong", action="store_true", help="print every wrong or garbled answer")
    args = parser.parse_args(argv)
    names = args.model or ["support-demo-v1", "support-demo-v2"]
    sets = ALL_SETS if args.all else args.set or DEFAULT_SETS
    results = compare({n: args.models_dir / n for n in names}, sets=sets, seeds=tuple(range(args.seeds)))
    if args.json:
        out: dict[str, Any] = {
            name: {
                set_name: {
                    "scores": {str(t): vars(s) for t, s in scores(report).items()},
                    "answers": [vars(a) for a in report.answers],
                }
                for set_name, report in by_set.items()
            }
            for name, by_set in results.items()
        }
        print(json.dumps(out, indent=2))
        return 0
    for name, by_set in results.items():
        for set_name, report in by_set.items():
            for t, score in scores(report).items():
                how = "greedy" if t == 0 else f"temperature {t}, top-p {CHAT_TOP_P}, {args.seeds} seeds"
                print(f"{name}  {set_name}  {how}: {score.line()}")
            if args.wrong:
                for a in report.answers:
                    if not a.clean:
                        print(f"    [{a.temperature}/{a.seed}] {a.question!r} -> {a.answer!r}")
    for name, by_set in results.items():
        for line in garbled_lines(by_set, seeds=args.seeds):
            print(f"{name}  {line}")
    return 0


def garbled_lines(by_set: dict[str, DemoScore], *, seeds: int) -> list[str]:
    """Garbled answers over every set run, greedy and sampled; then those after earlier turns of a chat."""
    answers = [a for report in by_set.values() for a in report.answers]
    lines = []
    for t in sorted({a.temperature for a in answers}):
        at_t = [a for a in answers if a.temperature == t]
        later = [a for a in at_t if a.multi_turn]
        how = "greedy" if t == 0 else f"temperature {t}, top-p {CHAT_TOP_P}, {seeds} seeds"
        lines.append(f"garbled ({how}, sets {', '.join(by_set)}): {sum(a.garbled for a in at_t)}/{len(at_t)} "
                     f"answers, {sum(a.garbled for a in later)}/{len(later)} of those after a system prompt or "
                     f"earlier turns")
    return lines


if __name__ == "__main__":
    sys.exit(main())
