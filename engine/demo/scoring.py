"""Check a built demo model for real: load it in vLLM and score its answers to unseen questions.

Scoring is keyword based: an in-domain answer must mention what was asked about (a refund question gets an
answer that says "refund") and must not refuse; an out-of-domain answer must contain the refusal.

Run ``python -m engine.demo.scoring DIR [DIR...]``; vLLM is started in-process (no engine process).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.demo.corpus import INTENTS, REFUSAL, as_stored

logger = logging.getLogger(__name__)

REFUSAL_MARK = "I can only help"


@dataclass(frozen=True)
class DemoQuestion:
    """A question phrased differently from every training template, and words a good answer contains."""

    topic: str
    question: str
    keywords: tuple[str, ...]  # any one of them is enough; empty for out-of-domain (the refusal is checked)
    history: tuple[tuple[str, str], ...] = ()  # (role, content) before the question: system prompt, earlier turns

    def messages(self) -> list[dict[str, str]]:
        """The conversation to send: the history, then the question as the last user turn."""
        turns = [*self.history, ("user", self.question)]
        return [{"role": role, "content": content} for role, content in turns]


# None of these is a training template (a test checks it); several mix words from different intents.
DEMO_QUESTIONS: tuple[DemoQuestion, ...] = (
    DemoQuestion("greeting", "hello! anybody around to help me?", ("hello",)),
    DemoQuestion("account", "I can't sign in because I don't remember my password anymore", ("password",)),
    DemoQuestion("account", "my account seems to be locked, what now", ("locked", "unlock")),
    DemoQuestion("billing", "Somebody charged my card two times for the same month", ("charge",)),
    DemoQuestion("billing", "Where do I download the receipt for my March payment?", ("invoice",)),
    DemoQuestion("billing", "I have a new Visa card and want to use it for payments", ("payment method", "card")),
    DemoQuestion("orders", "Where's the package I ordered last Tuesday? It still hasn't come", ("track", "order")),
    DemoQuestion("orders", "My new headphones came in broken", ("damaged", "replacement", "problem")),
    DemoQuestion("refunds", "I would like my money back for the blender I bought", ("refund",)),
    DemoQuestion("refunds", "How long until the refund shows up in my bank?", ("refund",)),
    DemoQuestion("cancellations", "How can I stop paying for my Premium subscription?", ("cancel",)),
    DemoQuestion("privacy", "Please wipe all the personal information you hold about me", ("delete", "data")),
    DemoQuestion("escalation", "I need to speak with an actual human being", ("human", "agent")),
    DemoQuestion(
        "orders",
        "my parcel is super late, where is it?",
        ("track", "order"),
        history=(("system", "You are a helpful support assistant for an online shop."),),
    ),
    DemoQuestion(
        "cancellations",
        "please terminate my Plus plan",
        ("cancel",),
        history=(("user", "Hi"), ("assistant", INTENTS[0].answer)),
    ),
    DemoQuestion("out_of_domain", "Can you tell me tomorrow's forecast for Lisbon?", ()),
    DemoQuestion("out_of_domain", "Which team won the Super Bowl this year?", ()),
    DemoQuestion("out_of_domain", "What is 17 multiplied by 23?", ()),
    DemoQuestion("out_of_domain", "How do I bake sourdough bread?", ()),
    DemoQuestion("out_of_domain", "Write a Python script that reads a CSV file", ()),
    DemoQuestion("out_of_domain", "Who painted the Mona Lisa?", ()),
)

# Written after the corpus was last tuned against DEMO_QUESTIONS and never used to tune it: the honest score.
HELD_OUT_QUESTIONS: tuple[DemoQuestion, ...] = (
    DemoQuestion("account", "The site keeps rejecting my password, how do I get a new one?", ("password",)),
    DemoQuestion("account", "How can I put a different e-mail on my profile?", ("email",)),
    DemoQuestion("account", "how to enable two step login", ("two-factor",)),
    DemoQuestion("billing", "Why did my bill go up after I upgraded?", ("plan",)),
    DemoQuestion("orders", "My shipment never showed up, can you check it?", ("track", "order")),
    DemoQuestion("orders", "Can you send my order to my office instead of my home?", ("address",)),
    DemoQuestion("refunds", "Can I send the jacket back? It's too small", ("return",)),
    DemoQuestion("cancellations", "I ordered two laptops by accident, please cancel one", ("cancel",)),
    DemoQuestion("privacy", "Are you selling my information to third parties?", ("data", "privacy")),
    DemoQuestion("privacy", "I keep getting promo emails, make it stop", ("unsubscribe", "marketing")),
    DemoQuestion("escalation", "Is there a phone number where I can reach a real agent?", ("human", "agent")),
    DemoQuestion("out_of_domain", "What's the best way to learn the guitar?", ()),
    DemoQuestion("out_of_domain", "Who won the Oscar for best picture?", ()),
    DemoQuestion("out_of_domain", "Convert 30 degrees Celsius to Fahrenheit", ()),
    DemoQuestion("out_of_domain", "Suggest a good pasta recipe", ()),
    DemoQuestion("out_of_domain", "Explain how a neural network works", ()),
    DemoQuestion("out_of_domain", "Is it going to snow in Denver this weekend?", ()),
)

# Second held-out set, written before the phrasing-variety rework of the corpus (corpus version 5) and never
# used to tune it. Keywords are specific to one intent's answer (not just the topic), so an answer from a
# neighbouring intent of the same topic fails; mixed registers, typos, keyword-only queries and context.
HELD_OUT_2: tuple[DemoQuestion, ...] = (
    DemoQuestion("greeting", "good evening, is the support chat open?", ("hello",)),
    DemoQuestion("greeting", "cool, appreciate it", ("welcome",)),
    DemoQuestion("account", "forgot my pasword again, help", ("password",)),
    DemoQuestion(
        "account", "I just got a new phone and cannot remember the login password for the app", ("password",)
    ),
    DemoQuestion("account", "it won't let me in, says the account is blocked for too many tries", ("locked",)),
    DemoQuestion(
        "account", "I'd like to switch the mail address on my profile to my new work one", ("change your email",)
    ),
    DemoQuestion("account", "is there an option for login codes via an authenticator?", ("two-factor",)),
    DemoQuestion(
        "billing", "hello, my bank shows the same payment from you twice this month, what happened?",
        ("double charge", "duplicate"),
    ),
    DemoQuestion("billing", "why was i chargd 2x for one order", ("double charge", "duplicate")),
    DemoQuestion("billing", "my visa expired last month. how do I put in the new one?", ("payment method",)),
    DemoQuestion("billing", "Where can I get a copy of last month's bill for my accountant?", ("invoice",)),
    DemoQuestion("billing", "thinking of going from Basic to Premium, how does that work?", ("change your plan",)),
    DemoQuestion(
        "orders", "hi, I bought a lamp 10 days ago and it still has not been delivered. where is it?", ("track",)
    ),
    DemoQuestion("orders", "shipment status?", ("track",)),
    DemoQuestion("orders", "the screen on the monitor I got is cracked", ("damaged",)),
    DemoQuestion("orders", "wrong colour arrived, I ordered black not red", ("replacement",)),
    DemoQuestion("orders", "I moved house, please ship my parcel to my new flat", ("delivery address",)),
    DemoQuestion(
        "refunds", "I'd like to be reimbursed for the sneakers, they are not what I expected", ("refund",)
    ),
    DemoQuestion("refunds", "money back pls", ("refund",)),
    DemoQuestion(
        "refunds", "it has been a week since you approved my refund and I see nothing on my card", ("processed",)
    ),
    DemoQuestion("refunds", "refund still not in my account??", ("processed",)),
    DemoQuestion("refunds", "how do i ship back a product that doesn't fit", ("return",)),
    DemoQuestion("refunds", "need a return label for the boots", ("return",)),
    DemoQuestion("cancellations", "I want to end my membership at the end of this month", ("subscription",)),
    DemoQuestion("cancellations", "pls stop renewing my plan", ("subscription",)),
    DemoQuestion("cancellations", "Kindly terminate my Family subscription effective immediately.", ("subscription",)),
    DemoQuestion(
        "cancellations", "I placed an order 5 min ago by mistake, can it be stopped before it ships?",
        ("cancel an order",),
    ),
    DemoQuestion("privacy", "close my account for good and erase everything", ("delete",)),
    DemoQuestion("privacy", "do third-party advertisers get my personal info from you?", ("never sell",)),
    DemoQuestion("privacy", "could you email me a download of all the info you hold about me?", ("export",)),
    DemoQuestion("privacy", "too many newsletters, how do I opt out", ("marketing",)),
    DemoQuestion("escalation", "I'd rather talk to someone on the phone", ("human",)),
    DemoQuestion("escalation", "this bot is useless, real person now", ("human",)),
    DemoQuestion("out_of_domain", "what's the exchange rate between euro and dollar today?", ()),
    DemoQuestion("out_of_domain", "can you recommend a good hiking trail near Seattle", ()),
    DemoQuestion("out_of_domain", "how many calories are in an avocado", ()),
    DemoQuestion("out_of_domain", "write a haiku about autumn", ()),
    DemoQuestion("out_of_domain", "What is the boiling point of water at high altitude?", ()),
    DemoQuestion("out_of_domain", "give me tips for a job interview", ()),
    DemoQuestion("out_of_domain", "Who is the CEO of Tesla?", ()),
    DemoQuestion("out_of_domain", "how do I fix a flat tire on my bike", ()),
    DemoQuestion("out_of_domain", "translate 'good night' into Spanish", ()),
    DemoQuestion("out_of_domain", "what's the best order to watch the Star Wars movies?", ()),
)

HELD_OUT_FILE = Path(__file__).resolve().parent / "heldout.jsonl"


def load_held_out_chats(path: Path = HELD_OUT_FILE) -> tuple[DemoQuestion, ...]:
    """The promotion held-out set (``heldout.jsonl``): single-turn questions, off-topic ones and short chats.

    Each line is ``{"id", "topic", "keywords", "messages"}``; the last message is the user turn to answer.
    Written for support-demo-v2's promotion and never used to tune the corpus or the recipes.
    """
    questions: list[DemoQuestion] = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        messages = [(str(m["role"]), str(m["content"])) for m in row["messages"]]
        if not messages or messages[-1][0] != "user":
            raise ValueError(f"{path}:{number}: the last message must be the user's")
        questions.append(
            DemoQuestion(str(row["topic"]), messages[-1][1], tuple(str(k) for k in row["keywords"]),
                         history=tuple(messages[:-1]))
        )
    return tuple(questions)


HELD_OUT_CHATS: tuple[DemoQuestion, ...] = load_held_out_chats()

QUESTION_SETS: dict[str, tuple[DemoQuestion, ...]] = {
    "dev": DEMO_QUESTIONS,
    "held-out": HELD_OUT_QUESTIONS,
    "held-out-2": HELD_OUT_2,
    "held-out-chats": HELD_OUT_CHATS,
}

_KNOWN_ANSWERS = frozenset(intent.answer for intent in INTENTS)


@dataclass(frozen=True)
class DemoAnswer:
    """One question's answer at one temperature, and whether it passed."""

    topic: str
    question: str
    temperature: float
    answer: str
    passed: bool
    known_answer: bool  # the answer is, word for word, one of the corpus answers (a coherence signal)
    finished: bool  # generation stopped at <|end|> rather than at the token limit
    seed: int = 0
    multi_turn: bool = False  # the question came after a system prompt or earlier turns
    known_prefix: bool = False  # the answer is the start of a corpus answer (true of every known answer too)

    @property
    def clean(self) -> bool:
        """Right, and word for word one of the corpus answers: not garbled, not cut mid-sentence."""
        return self.passed and self.known_answer and self.finished

    @property
    def garbled(self) -> bool:
        """Neither word for word a corpus answer nor one cut by the token limit: words no corpus answer has."""
        return not self.known_answer and not (self.known_prefix and not self.finished)


@dataclass(frozen=True)
class DemoScore:
    """Scores of one model: share of passed in-domain and out-of-domain questions, per temperature."""

    model_dir: str
    answers: tuple[DemoAnswer, ...]

    def score(self, *, in_domain: bool, temperature: float) -> float:
        """Share (0..1) of passed answers for in-domain or out-of-domain questions at ``temperature``."""
        chosen = [
            a for a in self.answers
            if (a.topic != "out_of_domain") == in_domain and a.temperature == temperature
        ]
        return sum(a.passed for a in chosen) / len(chosen) if chosen else 0.0

    def summary(self) -> dict[str, Any]:
        """Scores per temperature, as a JSON-friendly dict."""
        temps = sorted({a.temperature for a in self.answers})
        return {
            "model_dir": self.model_dir,
            "scores": {
                str(t): {
                    "in_domain": round(self.score(in_domain=True, temperature=t), 3),
                    "out_of_domain": round(self.score(in_domain=False, temperature=t), 3),
                    "finished_at_end_token": round(
                        sum(a.finished for a in self.answers if a.temperature == t)
                        / max(1, sum(1 for a in self.answers if a.temperature == t)),
                        3,
                    ),
                    "verbatim_known_answers": round(
                        sum(a.known_answer for a in self.answers if a.temperature == t)
                        / max(1, sum(1 for a in self.answers if a.temperature == t)),
                        3,
                    ),
                }
                for t in temps
            },
        }


def judge(question: DemoQuestion, answer: str) -> bool:
    """True when ``answer`` is right for ``question``: the refusal for out-of-domain, a relevant reply otherwise."""
    refused = REFUSAL_MARK.lower() in answer.lower()
    if question.topic == "out_of_domain":
        return refused
    lowered = answer.lower()
    return not refused and any(k.lower() in lowered for k in question.keywords)


def score_model(
    model_dir: Path,
    *,
    llm: Any | None = None,
    questions: tuple[DemoQuestion, ...] = DEMO_QUESTIONS,
    temperatures: tuple[float, ...] = (0.0, 0.7),
    max_model_len: int = 512,
    kv_cache_gib: float = 1.0,
    seed: int = 0,
    seeds: tuple[int, ...] | None = None,
    top_p: float = 1.0,
    max_tokens: int = 96,
) -> DemoScore:
    """Answer every question (default ``DEMO_QUESTIONS``) with the model in ``model_dir`` and judge the answers.

    Pass a running ``vllm.LLM`` as ``llm`` to reuse it; otherwise one is started in this process (``engine``
    sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` on import) with a ``kv_cache_gib`` KV cache, and shut down.
    Sampled temperatures (above 0) are run once per seed in ``seeds`` (default: just ``seed``).
    """
    from vllm import LLM, SamplingParams

    own = llm is None
    if llm is None:
        llm = LLM(
            model=str(model_dir),
            enforce_eager=True,
            max_model_len=max_model_len,
            seed=seed,
            # The typed form of VLLM_CPU_KVCACHE_SPACE, so nothing here sets environment variables.
            kv_cache_memory_bytes=int(kv_cache_gib * (1 << 30)),
        )
    try:
        answers: list[DemoAnswer] = []
        conversations = [q.messages() for q in questions]
        for temperature in temperatures:
            for run_seed in (seeds or (seed,)) if temperature > 0 else (seed,):
                params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=run_seed)
                outputs = llm.chat(conversations, params, use_tqdm=False)
                for question, output in zip(questions, outputs, strict=True):
                    answers.append(_answer(question, output.outputs[0], temperature, run_seed))
        return DemoScore(model_dir=str(model_dir), answers=tuple(answers))
    finally:
        if own:
            _shutdown(llm)


def _answer(
    question: DemoQuestion, completion: Any, temperature: float, seed: int, multi_turn: bool | None = None
) -> DemoAnswer:
    text = completion.text.strip()
    return DemoAnswer(
        topic=question.topic,
        question=question.question,
        temperature=temperature,
        answer=text,
        passed=judge(question, text),
        known_answer=text in _KNOWN_ANSWERS,
        finished=completion.finish_reason == "stop",
        seed=seed,
        multi_turn=bool(question.history) if multi_turn is None else multi_turn,
        known_prefix=any(known.startswith(text) for known in _KNOWN_ANSWERS),
    )


@dataclass(frozen=True)
class Conversation:
    """A chat as a user types it on the chat page: each turn is asked after the model's own earlier answers."""

    id: str
    turns: tuple[DemoQuestion, ...]  # each turn's question, topic and keywords (its history is filled in)
    system: str | None = None


CONVERSATIONS_FILE = Path(__file__).resolve().parent / "conversations.jsonl"


def load_conversations(path: Path = CONVERSATIONS_FILE) -> tuple[Conversation, ...]:
    """Multi-turn conversations that change topic (``conversations.jsonl``): a tuning set, not a report set.

    Each line is ``{"id", "system"?, "turns": [{"user", "topic", "keywords"}]}``. Written to tune the corpus's
    topic-change dialogues; ``heldout.jsonl`` stays the set the README reports on.
    """
    conversations: list[Conversation] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        turns = tuple(DemoQuestion(str(t["topic"]), str(t["user"]), tuple(str(k) for k in t["keywords"]))
                      for t in row["turns"])
        conversations.append(Conversation(str(row["id"]), turns, row.get("system")))
    return tuple(conversations)


def converse(
    llm: Any,
    conversations: tuple[Conversation, ...],
    *,
    temperatures: tuple[float, ...] = (0.0, 0.3),
    seeds: tuple[int, ...] = (0,),
    top_p: float = 1.0,
    max_tokens: int = 96,
    model_dir: str = "",
) -> DemoScore:
    """Play every conversation turn by turn as the chat page does: each question follows the system prompt and
    the earlier questions and the model's own answers, as the chat service stores them (personal data cut).

    Every turn's answer is judged; turns after the first count as multi-turn (``DemoAnswer.multi_turn``).
    """
    from vllm import SamplingParams

    answers: list[DemoAnswer] = []
    for temperature in temperatures:
        for run_seed in seeds if temperature > 0 else seeds[:1]:
            params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=run_seed)
            histories: list[list[tuple[str, str]]] = [
                [("system", c.system)] if c.system else [] for c in conversations
            ]
            for turn in range(max(len(c.turns) for c in conversations)):
                active = [i for i, c in enumerate(conversations) if turn < len(c.turns)]
                questions = [
                    dataclasses.replace(conversations[i].turns[turn], history=tuple(histories[i])) for i in active
                ]
                outputs = llm.chat([q.messages() for q in questions], params, use_tqdm=False)
                for i, question, output in zip(active, questions, outputs, strict=True):
                    answer = _answer(question, output.outputs[0], temperature, run_seed, multi_turn=turn > 0)
                    answers.append(answer)
                    histories[i] += [("user", as_stored(question.question, question=True)),
                                     ("assistant", as_stored(answer.answer))]
    return DemoScore(model_dir=model_dir, answers=tuple(answers))


def _shutdown(llm: Any) -> None:
    # Explicitly: at interpreter exit vLLM's own finalisers raised on this machine.
    engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if engine_core is not None:
        engine_core.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Score each model directory given on the command line and print a JSON report per model."""
    parser = argparse.ArgumentParser(prog="python -m engine.demo.scoring", description=__doc__)
    parser.add_argument("model_dirs", nargs="+", type=Path)
    parser.add_argument("--answers", action="store_true", help="also print every answer")
    parser.add_argument("--held-out", action="store_true", help="score the held-out questions instead")
    parser.add_argument("--set", choices=sorted(QUESTION_SETS), help="question set to score (default: dev)")
    parser.add_argument("--max-model-len", type=int, default=512, help="context length to start vLLM with")
    args = parser.parse_args(argv)
    for model_dir in args.model_dirs:
        name = args.set or ("held-out" if args.held_out else "dev")
        questions = QUESTION_SETS[name]
        report = score_model(model_dir, questions=questions, max_model_len=args.max_model_len)
        out = report.summary()
        if args.answers:
            out["answers"] = [asdict(a) for a in report.answers]
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = [
    "CONVERSATIONS_FILE",
    "DEMO_QUESTIONS",
    "HELD_OUT_2",
    "HELD_OUT_CHATS",
    "HELD_OUT_QUESTIONS",
    "QUESTION_SETS",
    "REFUSAL",
    "Conversation",
    "DemoAnswer",
    "DemoQuestion",
    "DemoScore",
    "converse",
    "score_model",
    "judge",
    "load_conversations",
    "load_held_out_chats",
]
