"""Two consoles on one PostgreSQL store: a change proposed and approved through one is in force in the other after its
follower's next round; the backtest's chunked reads run on PostgreSQL too."""

from __future__ import annotations

from datetime import timedelta

from console.services import moderation
from console.services import policy as policy_svc
from console.services import policy_changes as changes
from console.services.access import Principal
from console.services.context import AppContext
from db import audit as audit_q
from db import safety as safety_q
from db import users as users_q
from db.config import DbConfig
from db.database import Database
from engine.safety.policy import Policy
from engine.safety.runner import ScannerRunner
from tests.policy.support import BASE, LOWER, seed


def test_an_approval_on_one_replica_reaches_the_other(pg_db, ctx):
    with pg_db.session() as s:
        safety_q.store_policy_version(s, BASE, None, actor="test")
        ids = {name: users_q.create_user(s, name, "x", ("admin",), actor="system").id for name in ("ada", "bob")}
    ada, bob = (Principal(ids[n], n, frozenset({"admin"})) for n in ("ada", "bob"))
    seed(pg_db, ids["ada"], [(ctx.now() - timedelta(days=1), [("prompt", "tox-block", "toxicity", 0.4)]),
                             (ctx.now() - timedelta(days=2), [("prompt", "tox-block", "toxicity", 0.1)])])
    other_db = Database(DbConfig(pg_db.config.url))
    try:
        stacks = [moderation.SafetyStack(ScannerRunner([]), Policy.from_toml(BASE), 1) for _ in range(2)]
        one = AppContext(ctx.settings, pg_db, safety_factory=lambda: stacks[0], clock=ctx.clock)
        two = AppContext(ctx.settings, other_db, safety_factory=lambda: stacks[1], clock=ctx.clock)
        request = changes.propose(one, ada, LOWER, "catch milder insults", 7)
        assert (request.backtest["exchanges"], request.backtest["changed"]) == (2, 1)
        changes.approve(one, bob, request.id)
        assert stacks[0].policy_version == 2 and stacks[1].policy_version == 1
        assert policy_svc.PolicyFollower(two, interval_s=60).run_once() == 2
        assert (stacks[1].policy.version, stacks[1].policy_version) == ("lower", 2)
        stale = changes.list_changes(two, ada)
        assert [(c.status, c.applied_version) for c in stale] == [("approved", 2)]
    finally:
        other_db.dispose()
    audit_q.integrate_pending(pg_db)  # on PostgreSQL events are queued, then chained just after the commit
    with pg_db.session() as s:
        assert [e.action for e in audit_q.iter_events(s) if e.action.startswith("policy.")] == [
            "policy.version", "policy.change_requested", "policy.version", "policy.change_approved"]
    assert audit_q.verify_chain(pg_db).ok
