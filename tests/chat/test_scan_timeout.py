"""No prompt can stall the console (issue 21, High item 3): a safety scan that takes longer than its limit (setting
``scan_timeout_seconds``) is stopped at its next step, lets go of the scanner's lock, and the prompt is refused with
a message naming the limit (or the answer withheld), on the audit chain.

Real slowness depends on the machine, so the slow parts are stand-ins at our own seams (a scanner, a Presidio
recognizer added with ``PresidioScanner.add_recognizer``) that sleep a fixed time per call. The assertions count
calls, never measure durations: a sleep lasts at least what it was asked, so a limit shorter than two sleeps is
always spent before the last of several stand-ins runs, however loaded the machine.
"""

from __future__ import annotations

import textwrap
import threading
import time

import pytest

from console.services import chat as chat_svc
from console.services import moderation
from console.services.errors import InvalidInput
from console.settings import Settings
from db import audit as audit_q
from db import chat as chat_q
from db import safety as safety_q
from engine.safety.deadline import Deadline, ScanTimeout
from engine.safety.incremental import StreamingScan
from engine.safety.policy import Policy
from engine.safety.runner import ScannerRunner
from tests.conftest import console_env
from tests.safety_fixtures import CannedHost

MARKER = "SLOWDOWN"
STEP_SECONDS = 0.4
LIMIT_SECONDS = 0.5  # spent after two steps of STEP_SECONDS, whatever the machine does


class SlowScanner:
    """A stand-in scanner: each scan of a text holding MARKER sleeps STEP_SECONDS; other texts pass at once."""

    labels = ("toxicity",)
    version = "slow-test"

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def scan(self, text: str) -> tuple:
        if MARKER in text:
            self.calls.append(self.name)
            time.sleep(STEP_SECONDS)
        return ()


def _slow_runner(calls: list[str], count: int = 5, limit: float | None = LIMIT_SECONDS) -> ScannerRunner:
    return ScannerRunner([SlowScanner(f"slow-{i}", calls) for i in range(count)], timeout_seconds=limit)


# --- the runner and the deadline ---------------------------------------------------------------------------------

def test_a_scan_over_its_limit_stops_at_the_next_scanner_and_names_the_limit():
    calls: list[str] = []
    with pytest.raises(ScanTimeout) as raised:
        _slow_runner(calls).scan(f"please {MARKER} now")
    assert raised.value.limit_seconds == LIMIT_SECONDS and "0.5 s" in str(raised.value)
    assert 1 <= len(calls) <= 2, calls  # two sleeps spend the limit: the other three scanners never ran


def test_a_scan_without_a_limit_or_within_it_runs_every_scanner():
    calls: list[str] = []
    assert _slow_runner(calls, limit=None).scan(f"{MARKER}").findings == ()
    assert len(calls) == 5
    assert _slow_runner(calls).scan("an ordinary prompt").findings == ()  # nothing slow: well within the limit


def test_a_deadline_does_not_charge_the_time_spent_waiting_for_a_lock():
    from engine.safety import deadline

    lock = threading.Lock()
    lock.acquire()
    threading.Timer(0.3, lock.release).start()
    with deadline.scope(0.2) as limit:
        assert isinstance(limit, Deadline)
        with deadline.hold(lock):  # waits ~0.3 s for the lock: more than the whole limit
            deadline.check("after the wait")  # still within budget: the wait was given back
    assert limit.steps == 1


def test_the_runners_limit_must_be_positive():
    with pytest.raises(ValueError):
        ScannerRunner([], timeout_seconds=0)


def test_a_streamed_answer_whose_scan_goes_over_the_limit_raises_at_its_end():
    calls: list[str] = []
    scan = StreamingScan(_slow_runner(calls))
    scan.feed(f"The answer. It says {MARKER}. ")
    with pytest.raises(ScanTimeout):
        scan.finish()
    assert len(calls) < 5 * 2  # neither the background segment nor the rescan at the end ran every scanner


# --- Presidio: the lock is let go at the limit, so another chat's scan completes -----------------------------------

@pytest.fixture(scope="module")
def presidio_with_slow_recognizers():
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    from engine.safety.pii import PresidioScanner

    calls: list[int] = []
    started = threading.Event()

    class SlowRecognizer(EntityRecognizer):
        def load(self) -> None:
            pass

        def analyze(self, text, entities, nlp_artifacts=None) -> list[RecognizerResult]:  # noqa: ANN001
            if MARKER in text:
                calls.append(1)
                started.set()
                time.sleep(STEP_SECONDS)
            return []

    scanner = PresidioScanner()
    for i in range(6):
        scanner.add_recognizer(SlowRecognizer(supported_entities=["PERSON"], name=f"Slow{i}"))
    return scanner, calls, started


def test_a_slow_recognizer_lets_go_of_the_scanner_lock_at_the_limit_so_another_chats_scan_completes(
        presidio_with_slow_recognizers):
    scanner, calls, started = presidio_with_slow_recognizers
    calls.clear()
    started.clear()
    outcome: dict[str, object] = {}

    def slow_chat() -> None:
        try:
            ScannerRunner([scanner], timeout_seconds=1.0).scan(f"{MARKER} please help me, John Smith")
            outcome["slow"] = "finished"
        except ScanTimeout as exc:
            outcome["slow"] = exc

    first = threading.Thread(target=slow_chat)
    first.start()
    assert started.wait(120)  # the slow scan is inside a recognizer: it holds Presidio's lock now
    # Another user's prompt, scanned with no limit of its own: it waits for the lock, then completes.
    report = ScannerRunner([scanner]).scan("Please write to jane.doe@example.com about my order")
    slow_calls_by_then = len(calls)
    first.join(120)
    assert "EMAIL_ADDRESS" in report.labels
    assert isinstance(outcome["slow"], ScanTimeout) and outcome["slow"].where.startswith("recognizer ")
    # The other scan finished before the slow one had run its six recognizers: the lock was let go at the limit
    # (1 s: at most three sleeps of 0.4 s), not after all six (2.4 s).
    assert slow_calls_by_then <= 3 and len(calls) <= 3, calls


# --- the chat service: refused prompts, withheld answers, on the audit chain ----------------------------------------

POLICY = textwrap.dedent("""
    version = "timeout-test"
    output_mode = "stream_then_scan"
    keep_raw_text = false
    [rules.prompt.default]
    action = "allow"
    [rules.output.default]
    action = "allow"
""")


@pytest.fixture
def slow_chat(ctx, make_user):
    with ctx.db.session() as s:
        version = safety_q.store_policy_version(s, POLICY, None, actor="test").version
    calls: list[str] = []
    stack = moderation.SafetyStack(_slow_runner(calls), Policy.from_toml(POLICY), version)
    host = CannedHost()
    ctx.safety_factory = lambda: stack
    ctx.host_factory = lambda: host
    return ctx, make_user("olivia", "operator"), host


def _events(ctx, action: str) -> list:
    with ctx.db.session(readonly=True) as s:
        return list(audit_q.iter_events(s, action=action))


def test_a_prompt_whose_scan_goes_over_the_limit_is_refused_naming_the_limit_audited_and_never_stored(slow_chat):
    ctx, op, host = slow_chat
    with pytest.raises(InvalidInput) as refused:
        chat_svc.start_turn(ctx, op, None, f"Help {MARKER} " * 50, temperature=0.0, top_p=1.0, max_tokens=16)
    assert isinstance(refused.value, moderation.ScanTooSlow)
    message = str(refused.value)
    assert "longer than 0.5 s to check" in message and "Shorten it" in message
    assert host.asked == 0
    with ctx.db.session(readonly=True) as s:
        assert chat_q.list_conversations(s, op.user_id) == []
    [event] = _events(ctx, moderation.SCAN_TIMEOUT_ACTION)
    assert event.actor == "olivia"
    assert event.details["outcome"] == "refused" and event.details["direction"] == "prompt"
    assert event.details["limit_seconds"] == LIMIT_SECONDS and event.details["chars"] == len(f"Help {MARKER} " * 50)
    assert MARKER not in str(event.details)  # sizes and the step, never the text
    assert audit_q.verify_chain(ctx.db).ok


def test_a_system_prompt_whose_scan_goes_over_the_limit_is_refused_as_the_system_prompt(slow_chat):
    ctx, op, host = slow_chat
    with pytest.raises(moderation.ScanTooSlow, match="The system prompt took longer than 0.5 s"):
        chat_svc.start_turn(ctx, op, None, "Hello", system_prompt=f"Be {MARKER}", temperature=0.0, top_p=1.0,
                            max_tokens=16)
    assert host.asked == 0
    assert _events(ctx, moderation.SCAN_TIMEOUT_ACTION)[0].details["source"] == moderation.SYSTEM_PROMPT


def test_an_answer_whose_scan_goes_over_the_limit_is_withheld_stored_as_withheld_and_audited(slow_chat):
    ctx, op, host = slow_chat
    host.answers.append(f"Here is what you asked. {MARKER} Jane Doe, 12 Main St.")
    turn = chat_svc.start_turn(ctx, op, None, "Where is my order?", temperature=0.0, top_p=1.0, max_tokens=16)
    "".join(turn.deltas())
    outcome = turn.outcome
    assert outcome is not None and outcome.saved
    assert "The answer was withheld: it took longer than 0.5 s" in (outcome.notice or "")
    with ctx.db.session(readonly=True) as s:
        ex = chat_q.get_exchange(s, outcome.exchange_id)
        assert ex.response == moderation.SLOW_OUTPUT_STORED.format(limit=LIMIT_SECONDS)  # not the unchecked text
        assert ex.output_action == "block"
    [event] = _events(ctx, moderation.SCAN_TIMEOUT_ACTION)
    assert event.details["outcome"] == "withheld" and event.object_id == str(outcome.exchange_id)
    assert audit_q.verify_chain(ctx.db).ok


def test_the_scan_limit_is_a_setting_of_two_seconds_by_default(tmp_path):
    assert Settings.from_env(console_env(tmp_path)).scan_timeout_seconds == 2.0
    assert Settings.from_env(console_env(tmp_path, LLM_CONSOLE_SCAN_TIMEOUT_SECONDS="5")).scan_timeout_seconds == 5.0


def test_the_consoles_safety_stack_scans_with_the_settings_limit(tmp_path, ctx, monkeypatch):
    from engine.safety import runner as runner_module

    built: list[float | None] = []

    def build_runner(pii_config=None, toxicity_config=None, timeout_seconds=None):  # noqa: ANN001
        built.append(timeout_seconds)
        return ScannerRunner([], timeout_seconds), None

    monkeypatch.setattr(runner_module, "build_runner", build_runner)  # our own seam: no models loaded here
    settings = Settings.from_env(console_env(tmp_path, LLM_CONSOLE_SCAN_TIMEOUT_SECONDS="3.5"))
    stack = moderation.build_safety_stack(settings, ctx.db)
    assert built == [3.5] and stack.runner.timeout_seconds == 3.5
