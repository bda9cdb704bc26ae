"""The draw: share, cap, per version and per family, reproducible, never flagged or reviewed exchanges, the lease."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from console.services import spot_checks as spot
from console.services.context import AppContext
from db import Database, DbConfig
from db import audit as audit_q
from db.tables import AppState, AuditEvent, ReviewItem, SpotCheck
from tests.review_fixtures import flag
from tests.spot_checks.support import exchange, many


@pytest.fixture
def people(make_user):
    return {"op": make_user("olga", "operator"), "admin": make_user("ada", "admin")}


def drawn(ctx) -> dict[int, tuple[str, int, str]]:
    """exchange id -> (rule, severity, item reason) of every spot check."""
    with ctx.db.session(readonly=True) as s:
        rows = s.execute(select(SpotCheck.exchange_id, SpotCheck.rule, ReviewItem.severity, ReviewItem.reason)
                         .join(ReviewItem, ReviewItem.id == SpotCheck.item_id))
        return {e: (r, sev, reason) for e, r, sev, reason in rows}


def events(ctx, action):
    with ctx.db.session(readonly=True) as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def test_no_rule_draws_nothing(ctx, people):
    many(ctx, people["op"], 5)
    assert spot.draw(ctx).drawn == 0 and drawn(ctx) == {}
    assert events(ctx, spot.SAMPLED) == []


def test_a_share_draws_about_that_share_reproducibly_and_audits_the_counts(ctx, people, clock):
    ids = many(ctx, people["op"], 200, created_at=clock.now - timedelta(hours=1))
    spot.set_rule(ctx, people["admin"], share_percent=25, daily_cap=1000)
    with ctx.db.session(readonly=True) as s:
        salt = s.get(AppState, spot.SALT_KEY)
    assert salt is None  # created by the first draw, not by the rule
    result = spot.draw(ctx)
    got = drawn(ctx)
    # The expected set, recomputed from the day's seed: the draw is reproducible by anyone with the database.
    with ctx.db.session(readonly=True) as s:
        seed = spot.day_seed(s.get(AppState, spot.SALT_KEY).value, clock.now.date())
    rule = spot.Rule(0.25, 1000)
    expected = {i for i in ids if spot.draw_value(seed, rule.key, i) < 0.25}
    assert set(got) == expected and result.drawn == len(expected)
    assert 30 <= len(expected) <= 70  # 25 % of 200, within ~3.5 standard deviations
    assert {reason for _, _, reason in got.values()} == {"spot_check"}
    sampled = events(ctx, spot.SAMPLED)
    assert len(sampled) == 1 and sampled[0].details["drawn"] == len(expected)
    assert sampled[0].details["rules"][rule.key] == {"candidates": 200, "drawn": len(expected),
                                                     "day_total": len(expected)}
    # A second round finds nothing new to draw: never the same exchange twice.
    assert spot.draw(ctx).drawn == 0 and drawn(ctx) == got


def test_the_daily_cap_stops_the_draw_and_holds_across_rounds(ctx, people, clock):
    many(ctx, people["op"], 40, created_at=clock.now - timedelta(hours=2))
    spot.set_rule(ctx, people["admin"], share_percent=100, daily_cap=7)
    assert spot.draw(ctx).drawn == 7
    many(ctx, people["op"], 10, created_at=clock.now - timedelta(minutes=5))
    assert spot.draw(ctx).drawn == 0 and len(drawn(ctx)) == 7
    # The next day has its own cap.
    clock.advance(days=1)
    many(ctx, people["op"], 10)
    clock.advance(minutes=1)
    assert spot.draw(ctx).drawn == 7 and len(drawn(ctx)) == 14


def test_flagged_blocked_reviewed_erroring_and_synthetic_exchanges_are_never_drawn(ctx, people, clock):
    earlier = clock.now - timedelta(hours=1)
    plain = many(ctx, people["op"], 3, created_at=earlier)
    flagged_item = flag(ctx, people["op"], created_at=earlier)
    blocked = exchange(ctx, people["op"], created_at=earlier, prompt_action="block", status="blocked",
                       findings=(("detoxify", "threat", 0.9, "block"),))
    flag_finding = exchange(ctx, people["op"], created_at=earlier, findings=(("detoxify", "insult", 0.8, "flag"),))
    failed = exchange(ctx, people["op"], created_at=earlier, status="error")
    load = exchange(ctx, people["op"], created_at=earlier, synthetic=True)
    redacted = exchange(ctx, people["op"], created_at=earlier,
                        findings=(("presidio", "EMAIL_ADDRESS", 0.9, "redact"),))
    reviewed = exchange(ctx, people["op"], created_at=earlier)
    with ctx.db.session() as s:  # sent to review by hand and decided: still never drawn
        from db.review.items import create_review_item

        create_review_item(s, exchange_id=reviewed, reason="manual", actor="olga").status = "decided"
    spot.set_rule(ctx, people["admin"], share_percent=100, daily_cap=100)
    spot.draw(ctx)
    with ctx.db.session(readonly=True) as s:
        flagged_exchange = s.get(ReviewItem, flagged_item).exchange_id
    got = set(drawn(ctx))
    # Redaction is not a flag: the redacted exchange is unflagged (whether the redaction missed something is
    # what a spot check asks).
    assert got == {*plain, redacted}
    assert not got & {flagged_exchange, blocked, flag_finding, failed, load, reviewed}


def test_a_version_rule_draws_only_that_version_and_a_family_rule_skips_what_its_scanners_found(ctx, people, clock):
    earlier = clock.now - timedelta(hours=1)
    v1 = many(ctx, people["op"], 5, created_at=earlier, model_version="demo-v1")
    v2 = many(ctx, people["op"], 5, created_at=earlier, model_version="demo-v2")
    spot.set_rule(ctx, people["admin"], share_percent=100, daily_cap=100, model_version="demo-v2")
    spot.draw(ctx)
    assert set(drawn(ctx)) == set(v2)
    redacted = exchange(ctx, people["op"], created_at=earlier, findings=(("presidio", "PHONE_NUMBER", 0.9, "redact"),))
    monitored = exchange(ctx, people["op"], created_at=earlier,
                         findings=(("presidio", "PERSON", 0.9, "monitor:redact"),))
    tox_monitored = exchange(ctx, people["op"], created_at=earlier,
                             findings=(("detoxify", "insult", 0.7, "monitor:flag"),))
    spot.set_rule(ctx, people["admin"], share_percent=100, daily_cap=100, family="pii")
    spot.draw(ctx)
    by_rule = {e: r for e, (r, _, _) in drawn(ctx).items()}
    pii_rule = spot.Rule(1.0, 100, family="pii").key
    assert {e for e, r in by_rule.items() if r == pii_rule} == {*v1, tox_monitored}
    assert redacted not in by_rule and monitored not in by_rule


def test_severity_is_drawn_from_the_policys_recent_items(ctx, people, clock):
    for _ in range(3):
        flag(ctx, people["op"], severity=3, created_at=clock.now - timedelta(days=2))
    many(ctx, people["op"], 10, created_at=clock.now - timedelta(hours=1))
    spot.set_rule(ctx, people["admin"], share_percent=100, daily_cap=100)
    spot.draw(ctx)
    assert {sev for _, sev, _ in drawn(ctx).values()} == {3}
    with ctx.db.session(readonly=True) as s:
        dues = {i.due_at - clock.now for i in s.scalars(select(ReviewItem).where(ReviewItem.reason == "spot_check"))}
    assert dues == {timedelta(hours=4)}  # severity 3's deadline, as a flagged item of severity 3 gets


def test_the_lease_lets_one_of_two_consoles_draw_a_round(ctx, people, clock):
    many(ctx, people["op"], 20, created_at=clock.now - timedelta(hours=1))
    spot.set_rule(ctx, people["admin"], share_percent=100, daily_cap=100)
    other_db = Database(DbConfig(url=ctx.settings.database_url))
    try:
        other = AppContext(ctx.settings, other_db, clock=clock)
        first, second = spot.SpotCheckTask(ctx, interval_s=600), spot.SpotCheckTask(other, interval_s=600)
        rounds = [first.run_round(), second.run_round()]
        assert [r.ran for r in rounds] == [True, False]
        assert len(drawn(ctx)) == 20
    finally:
        other_db.dispose()
    assert audit_q.verify_chain(ctx.db).ok


def test_two_drawers_on_postgresql_never_draw_one_exchange_twice(pg_db, clock, ctx):
    pg = AppContext(ctx.settings, pg_db, clock=clock)
    from console.services.access import Principal
    from db import users as users_q

    with pg_db.session() as s:
        op = users_q.create_user(s, "olga", None, ["operator"])
        admin = users_q.create_user(s, "ada", None, ["admin"])
        people = {"op": Principal(op.id, "olga", frozenset({"operator"})),
                  "admin": Principal(admin.id, "ada", frozenset({"admin"}))}
    many(pg, people["op"], 60, created_at=clock.now - timedelta(hours=1))
    spot.set_rule(pg, people["admin"], share_percent=100, daily_cap=25)
    second_db = Database(DbConfig(url=pg_db.engine.url.render_as_string(hide_password=False)))
    try:
        contexts = [pg, AppContext(ctx.settings, second_db, clock=clock)]
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def run(c: AppContext) -> None:
            barrier.wait()
            try:
                spot.draw(c)  # both draw at once, without the lease: only the unique draw row stands between them
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(c,)) for c in contexts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        with pg_db.session(readonly=True) as s:
            per_exchange = list(s.execute(select(ReviewItem.exchange_id, func.count())
                                          .group_by(ReviewItem.exchange_id)))
        # Each exchange at most once, and the two together kept to the cap.
        assert len(per_exchange) == 25 and {n for _, n in per_exchange} == {1}
        assert audit_q.verify_chain(pg_db).ok
    finally:
        second_db.dispose()
