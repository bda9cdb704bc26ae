"""A console process that does nothing but write, for the crash battery (tests/db/test_crash.py kills it with SIGKILL).

``python -m tests.crash_writer DATA_DIR USER_ID:USERNAME[:hang] ...`` runs one thread per operator. Each thread
chats through the real chat service (``chat.start_turn`` and its stream; the engine is a scripted host at our own
seam, so no model is needed), a new conversation every few turns. Only after the service returned, i.e. after the
transaction committed, it prints what the client saw acknowledged and flushes: ``ack <request id> <exchange id>``.

Every prompt carries an email address, which the (scripted, pattern-only) PII scanner finds: the stored prompt is
redacted and the raw one kept apart. When the model is asked, i.e. after the prompt was stored as a pending exchange,
the host prints ``asked <request id>`` (``asked <request id> hang`` for an operator marked ``:hang``, whose model
never finishes its answer: that turn is in flight when the process is killed).
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from console.services import chat, moderation
from console.services.access import Principal
from console.services.context import AppContext
from console.settings import Settings
from db import Database, DbConfig
from db import safety as safety_q
from engine.safety.base import Finding
from engine.safety.policy import Policy
from engine.safety.runner import ScannerRunner
from engine.types import ChatMessage, GenerationResult, ModelSpec, SamplingSettings

MODEL = ModelSpec(name="scripted-v1", source="scripted")
ANSWER = "Your order left our warehouse this morning and should reach you within two working days. " * 3
TURNS_PER_CONVERSATION = 5
HANG_MARKER = "Please hold on"
OUT = threading.Lock()
# Everything allowed; stored text is redacted all the same (every PII span is cut), and the raw prompt is kept.
POLICY = Policy.from_toml('version = "crash"\noutput_mode = "stream_then_scan"\nkeep_raw_text = true\n'
                          '[rules.prompt.default]\naction = "allow"\n[rules.output.default]\naction = "allow"\n')


def say(line: str) -> None:
    with OUT:
        print(line, flush=True)


class EmailScanner:
    """A pattern-only PII scanner at our own seam (Presidio's name, so its spans are redacted when stored)."""

    name = "presidio"
    version = "crash-1"
    labels = ("EMAIL_ADDRESS",)
    pattern = re.compile(r"[\w.-]+@[\w-]+\.[\w.]+")

    def scan(self, text: str) -> tuple[Finding, ...]:
        return tuple(Finding("presidio", "EMAIL_ADDRESS", 0.99, m.start(), m.end(), self.version)
                     for m in self.pattern.finditer(text))


@dataclass
class ScriptedStream:
    """A finished answer streamed word by word, with the result the real host's stream carries."""

    request_id: str
    prompt_tokens: int
    result: GenerationResult | None = None

    hang: bool = False

    def __iter__(self) -> Iterator[str]:
        words = [w + " " for w in ANSWER.split()]
        if self.hang:  # the first word, then nothing until the process is killed
            yield words[0]
            threading.Event().wait()
        yield from words
        self.result = GenerationResult(
            request_id=self.request_id, model_version=MODEL.name, text="".join(words), finish_reason="stop",
            prompt_tokens=self.prompt_tokens, output_tokens=len(words), queue_s=0.0, ttft_s=0.001,
            mean_itl_s=0.0001, e2e_s=0.002, aborted=False,
        )

    def cancel(self) -> None:
        pass


class ScriptedHost:
    """The engine host's chat surface, answering at once (our own seam)."""

    serving = MODEL

    def stream_chat(self, messages: list[ChatMessage], sampling: SamplingSettings, *,
                    request_id: str | None = None) -> ScriptedStream:
        hang = HANG_MARKER in messages[-1].content
        say(f"asked {request_id}" + (" hang" if hang else ""))  # the prompt is stored (pending) by now
        return ScriptedStream(request_id or "", sum(len(m.content.split()) for m in messages), hang=hang)


def _environment(data_dir: Path) -> dict[str, str]:
    return {"LLM_CONSOLE_DATA_DIR": str(data_dir), "LLM_CONSOLE_ENGINE_AUTOSTART": "false",
            "LLM_CONSOLE_SAFETY_ENABLED": "false"}


def write_forever(ctx: AppContext, who: Principal, hang: bool) -> None:
    conversation: int | None = None
    n = 0
    while True:
        ask = HANG_MARKER if hang else "Where is order"
        turn = chat.start_turn(ctx, who, conversation, f"{ask} {who.user_id}-{n}? Mail {who.username}@example.com",
                               temperature=0.7, top_p=0.95, max_tokens=64)
        for _ in turn.deltas():
            pass
        outcome = turn.outcome
        assert outcome is not None and outcome.status == "ok", outcome
        say(f"ack {turn.request_id} {outcome.exchange_id}")
        n += 1
        conversation = None if n % TURNS_PER_CONVERSATION == 0 else turn.conversation_id


def main(argv: list[str]) -> None:
    data_dir = Path(argv[0])
    settings = Settings.from_env(_environment(data_dir))
    db = Database(DbConfig(url=settings.database_url))
    with db.session() as s:
        version = safety_q.store_policy_version(s, POLICY.source_text, None, actor="crash-writer").version
    stack = moderation.SafetyStack(ScannerRunner([EmailScanner()]), POLICY, version)
    ctx = AppContext(settings, db, host_factory=lambda: ScriptedHost(), safety_factory=lambda: stack)
    operators = []
    for spec in argv[1:]:
        user_id, username, *flags = spec.split(":")
        operators.append((Principal(int(user_id), username, frozenset({"operator"})), "hang" in flags))
    threads = [threading.Thread(target=write_forever, args=(ctx, who, hang), daemon=True) for who, hang in operators]
    for t in threads:
        t.start()
    for t in threads:
        t.join()  # until killed (or a writer fails: its traceback goes to stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
