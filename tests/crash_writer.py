"""A console process that does nothing but write, for the crash battery (tests/test_crash.py kills it with SIGKILL).

``python -m tests.crash_writer DATA_DIR USER_ID:USERNAME ...`` runs one thread per operator. Each thread chats
through the real chat service (``chat.start_turn`` and its stream; the engine is a scripted host at our own seam,
so no model is needed), a new conversation every few turns. Only after the service returned, i.e. after the
transaction committed, it prints what the client saw acknowledged and flushes: ``ack <request id> <exchange id>``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from console.services import chat
from console.services.access import Principal
from console.services.context import AppContext
from console.settings import Settings
from db import Database, DbConfig
from engine.types import ChatMessage, GenerationResult, ModelSpec, SamplingSettings

MODEL = ModelSpec(name="scripted-v1", source="scripted")
ANSWER = "Your order left our warehouse this morning and should reach you within two working days. " * 3
TURNS_PER_CONVERSATION = 5


@dataclass
class ScriptedStream:
    """A finished answer streamed word by word, with the result the real host's stream carries."""

    request_id: str
    prompt_tokens: int
    result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        words = [w + " " for w in ANSWER.split()]
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
        return ScriptedStream(request_id or "", sum(len(m.content.split()) for m in messages))


def _environment(data_dir: Path) -> dict[str, str]:
    return {"LLM_CONSOLE_DATA_DIR": str(data_dir), "LLM_CONSOLE_ENGINE_AUTOSTART": "false",
            "LLM_CONSOLE_SAFETY_ENABLED": "false"}


def write_forever(ctx: AppContext, who: Principal, out: threading.Lock) -> None:
    conversation: int | None = None
    n = 0
    while True:
        turn = chat.start_turn(ctx, who, conversation, f"Where is order {who.user_id}-{n}?",
                               temperature=0.7, top_p=0.95, max_tokens=64)
        for _ in turn.deltas():
            pass
        outcome = turn.outcome
        assert outcome is not None and outcome.status == "ok", outcome
        with out:
            print(f"ack {turn.request_id} {outcome.exchange_id}", flush=True)
        n += 1
        conversation = None if n % TURNS_PER_CONVERSATION == 0 else turn.conversation_id


def main(argv: list[str]) -> None:
    data_dir = Path(argv[0])
    settings = Settings.from_env(_environment(data_dir))
    ctx = AppContext(settings, Database(DbConfig(url=settings.database_url)), host_factory=lambda: ScriptedHost())
    operators = []
    for spec in argv[1:]:
        user_id, _, username = spec.partition(":")
        operators.append(Principal(int(user_id), username, frozenset({"operator"})))
    out = threading.Lock()
    threads = [threading.Thread(target=write_forever, args=(ctx, who, out), daemon=True) for who in operators]
    for t in threads:
        t.start()
    for t in threads:
        t.join()  # until killed (or a writer fails: its traceback goes to stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
