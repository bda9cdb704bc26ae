"""Searching the audit log: every filter, keyset pages while events keep arriving, the events around one event,
searches and opened events are audited, and bad filter input is refused with a clear message."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from console.services import audit_search as search_svc
from console.services.access import Principal
from console.services.context import AppContext
from console.services.errors import AccessDenied, InvalidInput, NotFound
from db import Database
from db import audit as audit_q
from db import audit_search as aq
from db import model_versions as versions_q
from db.tables import AuditEvent

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


@pytest.fixture
def analyst(make_user: Callable[..., Principal]) -> Principal:
    return make_user("ana", "analyst")


class EventClock:
    """The time db.audit stamps on the next event (our own seam: append_event reads ``utcnow``)."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def event_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[EventClock]:
    clock = EventClock()
    monkeypatch.setattr(audit_q, "utcnow", clock)
    yield clock


def _add(ctx: AppContext, actor: str = "someone", action: str = "test.event", **kw: Any) -> int:
    with ctx.db.session() as s:
        return audit_q.append_event(s, actor=actor, action=action, **kw).seq


def _find(ctx: AppContext, limit: int = 500, before_seq: int | None = None, **flt: Any) -> list[int]:
    with ctx.db.session(readonly=True) as s:
        return [e.seq for e in aq.search_events(s, aq.EventQuery(**flt), before_seq=before_seq, limit=limit)]


# --- each filter -----------------------------------------------------------------------------------------------


def test_the_time_range_is_to_the_minute_since_inclusive_until_exclusive(ctx, analyst, event_clock):
    seqs = {}
    for label, at in [("before", T0 + timedelta(seconds=59)), ("start", T0 + timedelta(minutes=1)),
                      ("inside", T0 + timedelta(minutes=5, seconds=59)), ("end", T0 + timedelta(minutes=6)),
                      ("after", T0 + timedelta(hours=1))]:
        event_clock.now = at
        seqs[label] = _add(ctx, action=f"range.{label}")
    # Seconds in a bound are dropped: 09:01:45 means 09:01, so the event at 09:01:00 is in.
    flt = search_svc.AuditFilter(since=T0 + timedelta(minutes=1, seconds=45), until=T0 + timedelta(minutes=6, seconds=30),
                                 action_prefix="range.")
    page = search_svc.search(ctx, analyst, flt)
    assert [r["seq"] for r in page.rows] == [seqs["inside"], seqs["start"]]
    # A naive bound is UTC.
    naive = search_svc.AuditFilter(since=datetime(2026, 11, 26, 9, 6), action_prefix="range.")
    assert [r["seq"] for r in search_svc.search(ctx, analyst, naive).rows] == [seqs["after"], seqs["end"]]


def test_the_actor_filter_is_exact(ctx, analyst):
    ada = _add(ctx, actor="ada")
    _add(ctx, actor="ada2")
    _add(ctx, actor="ADA")
    rows = search_svc.search(ctx, analyst, search_svc.AuditFilter(actor=" ada ")).rows
    assert [r["seq"] for r in rows] == [ada]


def test_the_action_prefix_escapes_like_wildcards_and_the_exact_action_is_exact(ctx, analyst):
    underscore = _add(ctx, action="x_y.done")
    _add(ctx, action="xzy.done")
    percent = _add(ctx, action="p%q.done")
    longer = _add(ctx, action="x_y.done.more")
    assert _find(ctx, action_prefix="x_y") == [longer, underscore]
    assert _find(ctx, action_prefix="p%") == [percent]
    assert _find(ctx, action_prefix="%") == []
    assert _find(ctx, action="x_y.done") == [underscore]
    rows = search_svc.search(ctx, analyst, search_svc.AuditFilter(action_prefix="x_y.", action="x_y.done")).rows
    assert [r["seq"] for r in rows] == [underscore]


def test_the_target_filters_match_type_and_id_alone_or_together(ctx):
    a = _add(ctx, object_type="user", object_id=7)
    b = _add(ctx, object_type="user", object_id=8)
    c = _add(ctx, object_type="exchange", object_id=7)
    assert _find(ctx, object_type="user") == [b, a]
    assert _find(ctx, object_id="7") == [c, a]
    assert _find(ctx, object_type="user", object_id="7") == [a]


def test_the_model_version_filter_finds_exchanges_and_events_about_the_version(ctx, analyst):
    with ctx.db.session() as s:
        version = versions_q.register_model_version(s, name="v1", source="hub/model", actor="adam")
        version_id = version.id
    register = _find(ctx, action="model.register")
    exchange = _add(ctx, action="chat.exchange", details={"model_version": "v1", "tokens": 3})
    _add(ctx, action="chat.exchange", details={"model_version": "v10"})
    _add(ctx, action="chat.exchange", details={"note": "about v1"})
    _add(ctx, action="user.create", object_type="user", object_id=version_id)  # same id, other kind of object
    rows = search_svc.search(ctx, analyst, search_svc.AuditFilter(model_version="v1")).rows
    assert [r["seq"] for r in rows] == [exchange, *register]
    assert register and rows[-1]["object_id"] == str(version_id)


@pytest.mark.parametrize("needle,hit", [
    ("REFUND", "refund"), ("50%", "50%"), ("a_b", "a_b"), ("zoë", "ZOË"), ("ZOË", "zoë"), ("Zoë", "zOË"),
    ('say "hi"', 'say "hi"'), ("back\\slash", "back\\slash"),
], ids=["case", "percent", "underscore", "non-ascii", "non-ascii-upper", "non-ascii-mixed", "quotes", "backslash"])
def test_free_text_is_a_case_insensitive_substring_of_the_details_with_wildcards_literal(ctx, analyst, needle, hit):
    wanted = _add(ctx, action="text.case", details={"reason": f"prefix {hit} suffix"})
    _add(ctx, action="text.case", details={"reason": "50 percent, ab, zoe, say hi, backslash"})
    rows = search_svc.search(ctx, analyst, search_svc.AuditFilter(action_prefix="text.", text=needle)).rows
    assert [r["seq"] for r in rows] == [wanted]


def test_filters_combine(ctx):
    hit = _add(ctx, actor="ada", action="review.decide", object_type="item", object_id=1, details={"note": "ok"})
    _add(ctx, actor="ada", action="review.decide", object_type="item", object_id=2, details={"note": "ok"})
    _add(ctx, actor="bob", action="review.decide", object_type="item", object_id=1, details={"note": "ok"})
    assert _find(ctx, actor="ada", action_prefix="review.", object_id="1", text="OK") == [hit]


# --- keyset pages ------------------------------------------------------------------------------------------------


def test_keyset_pages_never_skip_or_repeat_while_events_are_appended_between_fetches(ctx, analyst):
    for n in range(23):
        _add(ctx, action="page.event", details={"n": n})
    flt = search_svc.AuditFilter(action_prefix="page.")
    expected = _find(ctx, action_prefix="page.")
    seen: list[int] = []
    before: int | None = None
    pages = 0
    while True:
        page = search_svc.search(ctx, analyst, flt, before_seq=before, limit=5)
        pages += 1
        seen += [r["seq"] for r in page.rows]
        for n in range(3):  # matching events arrive between every two fetches
            _add(ctx, action="page.event", details={"late": n})
        if page.next_before_seq is None:
            break
        assert page.next_before_seq == page.rows[-1]["seq"]
        before = page.next_before_seq
    assert seen == expected  # every event that existed at the first fetch, once, newest first
    assert pages == 5
    # The newest page now starts with the late arrivals.
    assert search_svc.search(ctx, analyst, flt, limit=1).rows[0]["seq"] > expected[0]


def test_the_last_page_has_no_next_cursor_even_when_it_is_full(ctx, analyst):
    for _ in range(4):
        _add(ctx, action="full.event")
    flt = search_svc.AuditFilter(action_prefix="full.")
    first = search_svc.search(ctx, analyst, flt, limit=2)
    second = search_svc.search(ctx, analyst, flt, before_seq=first.next_before_seq, limit=2)
    assert len(first.rows) == len(second.rows) == 2
    assert first.next_before_seq is not None and second.next_before_seq is None


# --- events around one ---------------------------------------------------------------------------------------------


def test_events_around_gives_n_before_the_event_and_n_after_in_seq_order(ctx):
    seqs = [_add(ctx, action="around.event") for _ in range(20)]
    middle = seqs[10]
    with ctx.db.session(readonly=True) as s:
        assert [e.seq for e in aq.events_around(s, middle, 3)] == list(range(middle - 3, middle + 4))
        assert [e.seq for e in aq.events_around(s, 1, 2)] == [1, 2, 3]
        assert [e.seq for e in aq.events_around(s, seqs[-1], 2)] == [seqs[-1] - 2, seqs[-1] - 1, seqs[-1]]
        assert [e.seq for e in aq.events_around(s, seqs[-1] + 100, 2)] == [seqs[-1] - 1, seqs[-1]]


def test_opening_an_event_returns_it_with_its_neighbours_and_is_audited(ctx, analyst):
    seqs = [_add(ctx, action="open.event", details={"n": n}) for n in range(12)]
    event, around = search_svc.event_detail(ctx, analyst, seqs[6])
    assert event["seq"] == seqs[6] and event["details"] == {"n": 6}
    assert [r["seq"] for r in around] == list(range(seqs[6] - search_svc.AROUND, seqs[6] + search_svc.AROUND + 1))
    with ctx.db.session(readonly=True) as s:
        last = audit_q.latest_event(s, "audit.view_event")
    assert last is not None and last.actor == "ana" and last.object_id == str(seqs[6])
    with pytest.raises(NotFound):
        search_svc.event_detail(ctx, analyst, seqs[-1] + 1000)


def test_distinct_actions_are_listed_once_and_sorted(ctx, analyst):
    for action in ("b.two", "a.one", "b.two"):
        _add(ctx, action=action)
    listed = search_svc.actions(ctx, analyst)
    assert listed == sorted(set(listed)) and {"a.one", "b.two"} <= set(listed)


# --- auditing and access ---------------------------------------------------------------------------------------------


def test_every_search_is_audited_with_its_filter_and_cursor_and_does_not_list_itself(ctx, analyst):
    _add(ctx, actor="ada", action="audited.event")
    page = search_svc.search(ctx, analyst, search_svc.AuditFilter(actor="ada", text="x%y"), before_seq=999, limit=10)
    with ctx.db.session(readonly=True) as s:
        last = audit_q.latest_event(s, "audit.search")
    assert last is not None and last.actor == "ana" and last.actor_id == analyst.user_id
    assert last.details == {"filter": {"actor": "ada", "text": "x%y"}, "before_seq": 999, "limit": 10,
                            "rows": len(page.rows)}
    newest = search_svc.search(ctx, analyst, search_svc.AuditFilter())
    assert newest.rows[0]["seq"] == last.seq  # the previous search is in the log; this one is not yet
    with ctx.db.session(readonly=True) as s:
        assert audit_q.latest_event(s, "audit.search").seq == last.seq + 1


def test_an_operator_may_not_search_and_the_refusal_is_recorded(ctx, make_user):
    olivia = make_user("olivia", "operator")
    with pytest.raises(AccessDenied):
        search_svc.search(ctx, olivia, search_svc.AuditFilter())
    with ctx.db.session(readonly=True) as s:
        denied = audit_q.latest_event(s, "access.denied")
        searched = audit_q.latest_event(s, "audit.search")
    assert denied is not None and denied.details["action"] == "audit.search" and searched is None


# --- bad input ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flt,message", [
    (search_svc.AuditFilter(since=T0 + timedelta(hours=1), until=T0), "start"),
    (search_svc.AuditFilter(since=T0 + timedelta(seconds=10), until=T0 + timedelta(seconds=50)), "before the end"),
    (search_svc.AuditFilter(actor="a" * 201), "actor filter is too long"),
    (search_svc.AuditFilter(action_prefix="a" * 101), "action prefix filter is too long"),
    (search_svc.AuditFilter(text="t" * 201), "text filter is too long"),
    (search_svc.AuditFilter(object_id="12\n13"), "target id filter contains control characters"),
    (search_svc.AuditFilter(text="nul\x00"), "text filter contains control characters"),
    (search_svc.AuditFilter(model_version="v\x1b[31m"), "model version filter contains control characters"),
    (search_svc.AuditFilter(actor=42), "actor filter must be text"),  # type: ignore[arg-type]
    (search_svc.AuditFilter(since="yesterday"), "start must be a date"),  # type: ignore[arg-type]
], ids=["start-after-end", "same-minute", "long-actor", "long-prefix", "long-text", "newline", "nul", "escape",
        "not-text", "not-a-time"])
def test_bad_filter_input_is_refused_with_a_clear_message_and_nothing_is_audited(ctx, analyst, flt, message):
    with pytest.raises(InvalidInput, match=message):
        search_svc.search(ctx, analyst, flt)
    with ctx.db.session(readonly=True) as s:
        assert audit_q.latest_event(s, "audit.search") is None


@pytest.mark.parametrize("kwargs", [{"before_seq": 0}, {"before_seq": "5"}, {"before_seq": True}, {"limit": 0},
                                    {"limit": search_svc.MAX_PAGE_ROWS + 1}, {"limit": 2.5}],
                         ids=["zero-cursor", "text-cursor", "bool-cursor", "zero-limit", "huge-limit", "float-limit"])
def test_bad_cursors_and_page_sizes_are_refused(ctx, analyst, kwargs):
    with pytest.raises(InvalidInput):
        search_svc.search(ctx, analyst, search_svc.AuditFilter(), **kwargs)


def test_a_filter_round_trips_through_its_dict_form(ctx):
    flt = search_svc.AuditFilter(since=T0, until=T0 + timedelta(days=1), actor="ada", action_prefix="auth.",
                                 object_type="user", object_id="3", model_version="v1", text="x", action="auth.login")
    assert search_svc.AuditFilter.from_dict(flt.to_dict()) == flt.validated()
    with pytest.raises(InvalidInput):
        search_svc.AuditFilter.from_dict({"colour": "red"})


# --- the same queries on PostgreSQL (JSON path, JSON as text, LIKE escapes) -----------------------------------------



def _exercise_every_filter(database: Database) -> None:
    with database.session() as s:
        version = versions_q.register_model_version(s, name="v1", source="hub/model", actor="adam")
        version_id = version.id

    def add(**kw: Any) -> int:
        with database.session() as s:
            event_id = audit_q.append_event(s, **{"actor": "someone", "action": "pg.event", **kw}).id
        audit_q.integrate_pending(database)  # on PostgreSQL the event is queued, then chained (its seq)
        with database.session(readonly=True) as s:
            return s.scalar(select(AuditEvent.seq).where(AuditEvent.id == event_id))

    chat = add(actor="ada", action="chat.exchange", object_type="exchange", object_id=5,
               details={"model_version": "v1", "note": "Zoë said 50% a_b"})
    other = add(actor="ada2", action="chat_x", details={"model_version": "v10", "note": "zoe said 50 ab"})
    pages = [add(action="pg.page") for _ in range(7)]

    def find(before_seq: int | None = None, limit: int = 100, **flt: Any) -> list[int]:
        with database.session(readonly=True) as s:
            return [e.seq for e in aq.search_events(s, aq.EventQuery(**flt), before_seq=before_seq, limit=limit)]

    register = find(action="model.register")
    assert len(register) == 1
    assert find(actor="ada") == [chat]
    assert find(action_prefix="chat_") == [other]
    assert find(action_prefix="chat.", object_type="exchange", object_id="5") == [chat]
    assert find(model_version="v1") == [chat, *register]
    assert find(object_type="model_version", object_id=str(version_id)) == register
    assert find(text="ZOË SAID 50%") == [chat]
    assert find(text="a_b") == [chat]
    assert find(text="%") == [chat]
    assert find(action="pg.page", limit=3) == pages[::-1][:3]
    assert find(action="pg.page", before_seq=pages[3], limit=3) == [pages[2], pages[1], pages[0]]
    with database.session(readonly=True) as s:
        assert [e.seq for e in aq.events_around(s, pages[3], 2)] == pages[1:6]
        assert {"chat.exchange", "chat_x", "pg.page", "model.register"} <= set(aq.distinct_actions(s))


def test_every_filter_at_the_database_level(ctx):
    _exercise_every_filter(ctx.db)


def test_every_filter_at_the_database_level_on_postgresql(pg_db):
    _exercise_every_filter(pg_db)
