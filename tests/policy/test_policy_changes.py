"""Policy changes are requests: proposed with a backtest, approved by another admin, audited; stale ones refused."""

from __future__ import annotations

from datetime import timedelta

import pytest

from console.services import policy as policy_svc
from console.services import policy_changes as changes
from console.services.access import SeparationOfDuties
from console.services.errors import AccessDenied, InvalidInput, NotFound
from db import audit as audit_q
from db import safety as safety_q
from tests.policy.support import BASE, LOWER, install_stack, seed


@pytest.fixture
def world(ctx, make_user):
    stack = install_stack(ctx)
    people = {"ada": make_user("ada", "admin"), "bob": make_user("bob", "admin"),
              "rita": make_user("rita", "reviewer"), "cy": make_user("cy", "operator")}
    return ctx, stack, people


def _events(ctx, action):
    with ctx.db.session() as s:
        return [e for e in audit_q.iter_events(s, action=action)]


def test_a_proposal_changes_nothing_until_another_admin_approves_it(world):
    ctx, stack, p = world
    view = changes.propose(ctx, p["ada"], LOWER, "catch milder insults", 7)
    assert (view.status, view.base_version, view.file_version, view.stale) == ("pending", 1, "lower", False)
    assert "threshold = 0.3" in view.diff and "-threshold = 0.5" in view.diff
    assert stack.policy.version == "base" and policy_svc.current(ctx, p["rita"]).version == 1
    approved = changes.approve(ctx, p["bob"], view.id, "fine")
    assert (approved.status, approved.applied_version, approved.decided_by) == ("approved", 2, "bob")
    assert (stack.policy.version, stack.policy_version) == ("lower", 2)
    with ctx.db.session() as s:
        assert safety_q.latest_policy_version(s).content == LOWER
    requested, = _events(ctx, "policy.change_requested")
    approved_ev, = _events(ctx, "policy.change_approved")
    base_sha, new_sha = safety_q.hashlib.sha256(BASE.encode()).hexdigest(), safety_q.hashlib.sha256(LOWER.encode()).hexdigest()
    assert (requested.details["old_sha256"], requested.details["new_sha256"]) == (base_sha, new_sha)
    assert requested.details["backtest"]["days"] == 7
    assert (approved_ev.actor, approved_ev.details["version"], approved_ev.details["new_sha256"]) == ("bob", 2, new_sha)
    assert audit_q.verify_chain(ctx.db).ok


def test_the_requester_cannot_approve_or_reject_their_own_request_whatever_their_roles(world):
    ctx, stack, p = world
    view = changes.propose(ctx, p["ada"], LOWER, "why not", 7)
    with pytest.raises(SeparationOfDuties):
        changes.approve(ctx, p["ada"], view.id)
    with pytest.raises(SeparationOfDuties):
        changes.reject(ctx, p["ada"], view.id, "no")
    assert stack.policy_version == 1
    assert changes.list_changes(ctx, p["ada"], "pending")[0].id == view.id


def test_reject_and_cancel_close_the_request_and_are_audited(world):
    ctx, stack, p = world
    first = changes.propose(ctx, p["ada"], LOWER, "one", 7)
    rejected = changes.reject(ctx, p["bob"], first.id, "too many items")
    assert (rejected.status, rejected.decision_note) == ("rejected", "too many items")
    second = changes.propose(ctx, p["ada"], LOWER, "again", 7)
    with pytest.raises(AccessDenied):
        changes.cancel(ctx, p["bob"], second.id)
    assert changes.cancel(ctx, p["ada"], second.id).status == "cancelled"
    with pytest.raises(InvalidInput, match="already cancelled"):
        changes.approve(ctx, p["bob"], second.id)
    assert [e.details["request"] for e in _events(ctx, "policy.change_rejected")] == [first.id]
    assert [e.details["request"] for e in _events(ctx, "policy.change_cancelled")] == [second.id]
    assert stack.policy_version == 1 and audit_q.verify_chain(ctx.db).ok


def test_a_request_whose_base_policy_is_no_longer_in_force_is_stale_and_cannot_be_approved(world):
    ctx, stack, p = world
    old = changes.propose(ctx, p["ada"], LOWER, "lower", 7)
    other = changes.propose(ctx, p["ada"], BASE.replace('"base"', '"other"'), "rename", 7)
    changes.approve(ctx, p["bob"], other.id)
    assert {v.id: v.stale for v in changes.list_changes(ctx, p["rita"], "pending")} == {old.id: True}
    with pytest.raises(InvalidInput, match="stale.*revision 1.*revision 2"):
        changes.approve(ctx, p["bob"], old.id)
    assert stack.policy.version == "other"
    assert changes.reject(ctx, p["bob"], old.id, "stale").status == "rejected"


def test_reviewers_view_requests_but_only_admins_propose_or_decide(world):
    ctx, stack, p = world
    view = changes.propose(ctx, p["ada"], LOWER, "x", 3)
    assert [v.id for v in changes.list_changes(ctx, p["rita"])] == [view.id]
    for fn, args in ((changes.propose, (LOWER, "x", 3)), (changes.approve, (view.id,)),
                     (changes.reject, (view.id, "no")), (changes.cancel, (view.id,))):
        with pytest.raises(AccessDenied):
            fn(ctx, p["rita"], *args)
    with pytest.raises(AccessDenied):
        changes.list_changes(ctx, p["cy"])


BAD = [
    ("invalid-toml", {"content": "version = [", "reason": "r", "days": 7}, "not valid"),
    ("bad-threshold", {"content": 'version = "x"\n[rules.prompt.toxicity]\nthreshold = 2\naction = "flag"\n',
                       "reason": "r", "days": 7}, r"rules\.prompt\.toxicity\.threshold"),
    ("empty-policy", {"content": "  ", "reason": "r", "days": 7}, "empty"),
    ("same-policy", {"content": BASE, "reason": "r", "days": 7}, "in force"),
    ("empty-reason", {"content": LOWER, "reason": "   ", "days": 7}, "reason"),
    ("days-zero", {"content": LOWER, "reason": "r", "days": 0}, "from 1 to 90"),
    ("days-10000", {"content": LOWER, "reason": "r", "days": 10_000}, "from 1 to 90"),
    ("days-fraction", {"content": LOWER, "reason": "r", "days": 2.5}, "whole number"),
    ("days-text", {"content": LOWER, "reason": "r", "days": "7"}, "whole number"),
    ("huge-policy", {"content": LOWER + "#" * 100_001, "reason": "r", "days": 7}, "at most 100,000"),
]


@pytest.mark.parametrize("kwargs,fragment", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_battery_a_bad_proposal_is_refused_naming_the_field_and_stores_nothing(world, kwargs, fragment):
    ctx, stack, p = world
    with pytest.raises(InvalidInput, match=fragment):
        changes.propose(ctx, p["ada"], **kwargs)
    assert changes.list_changes(ctx, p["ada"]) == [] and stack.policy_version == 1
    assert _events(ctx, "policy.change_requested") == []


def test_unknown_or_malformed_request_ids_are_refused(world):
    ctx, stack, p = world
    with pytest.raises(NotFound):
        changes.approve(ctx, p["bob"], 999)
    with pytest.raises(InvalidInput, match="positive whole number"):
        changes.reject(ctx, p["bob"], -1, "x")
    with pytest.raises(InvalidInput, match="status must be one of"):
        changes.list_changes(ctx, p["bob"], "open")


def test_a_second_console_follows_the_approved_version_on_its_next_round(world, tmp_path):
    """Two Database objects on one store: the approval on one console reaches the other's safety stack."""
    from console.services.context import AppContext
    from db.config import DbConfig
    from db.database import Database
    from tests.policy.support import install_stack as _install  # noqa: F401

    ctx, stack, p = world
    other_db = Database(DbConfig(url=ctx.settings.database_url))
    try:
        from console.services import moderation
        from engine.safety.policy import Policy
        from engine.safety.runner import ScannerRunner

        other_stack = moderation.SafetyStack(ScannerRunner([]), Policy.from_toml(BASE), 1)
        other = AppContext(ctx.settings, other_db, safety_factory=lambda: other_stack, clock=ctx.clock)
        view = changes.propose(ctx, p["ada"], LOWER, "x", 7)
        changes.approve(ctx, p["bob"], view.id)
        assert other_stack.policy_version == 1  # not yet: it has not looked
        follower = policy_svc.PolicyFollower(other, interval_s=60)
        assert follower.run_once() == 2
        assert (other_stack.policy.version, other_stack.policy_version) == ("lower", 2)
        assert follower.run_once() == 2  # nothing moved: stays
    finally:
        other_db.dispose()


def test_the_backtest_flips_exactly_the_exchanges_between_the_two_thresholds(world):
    ctx, stack, p = world
    now = ctx.now()
    uid = p["ada"].user_id
    tox = "tox-block"
    rows = [
        (now - timedelta(days=1), [("prompt", tox, "toxicity", 0.40)]),   # flips: flagged only under 0.3
        (now - timedelta(days=1), [("prompt", tox, "toxicity", 0.35)]),   # flips
        (now - timedelta(days=2), [("prompt", tox, "toxicity", 0.20)]),   # under both
        (now - timedelta(days=2), [("prompt", tox, "toxicity", 0.70)]),   # flagged under both
        (now - timedelta(days=2), [("output", tox, "toxicity", 0.60)]),   # output rule unchanged: flagged
        (now - timedelta(days=3), [("prompt", "system prompt/tox-block", "toxicity", 0.31)]),  # flips (system)
        (now - timedelta(days=3), [("prompt", "presidio", "EMAIL_ADDRESS", 0.9),
                                   ("output", tox, "threat", 0.95)]),    # blocked under both
        (now - timedelta(days=3), []),                                    # nothing found
        (now - timedelta(days=20), [("prompt", tox, "toxicity", 0.40)]),  # outside a 7-day window
    ]
    ids = seed(ctx.db, uid, rows)
    seed(ctx.db, uid, [(now - timedelta(days=1), [("prompt", tox, "toxicity", 0.4)])], synthetic=True)
    view = changes.propose(ctx, p["ada"], LOWER, "x", 7)
    bt = view.backtest
    assert bt["exchanges"] == 8
    assert (bt["items_before"], bt["items_after"], bt["changed"]) == (3, 6, 3)
    assert sorted(e["id"] for e in bt["examples"]) == sorted([ids[0], ids[1], ids[5]])
    by = {(r["direction"], r["label"]): r for r in bt["labels"]}
    assert (by["prompt", "toxicity"]["flag_before"], by["prompt", "toxicity"]["flag_after"]) == (1, 4)
    assert (by["output", "threat"]["block_before"], by["output", "threat"]["block_after"]) == (1, 1)
    assert (by["output", "toxicity"]["flag_before"], by["output", "toxicity"]["flag_after"]) == (1, 1)
    assert sum(d["exchanges"] for d in bt["daily"]) == 8
    assert sum(d["items_after"] - d["items_before"] for d in bt["daily"]) == 3
    example = {e.id: e for e in changes.examples(ctx, p["rita"], view.id)}[ids[0]]
    assert (example.before, example.after) == ("prompt allow, output allow", "prompt flag, output allow")
    assert example.prompt == "a stored prompt 0" and example.labels == "prompt.toxicity"
    longer = changes.propose(ctx, p["ada"], LOWER.replace('"lower"', '"lower30"'), "x", 30)
    assert (longer.backtest["exchanges"], longer.backtest["changed"]) == (9, 4)


def test_the_backtest_agrees_with_the_policy_engine_on_every_exchange(world):
    """The fast path (rules looked up once, scores compared) decides as Policy.decide does."""
    import random

    from console.services import backtest
    from engine.safety.base import Finding
    from engine.safety.policy import Policy

    ctx, stack, p = world
    rnd = random.Random(7)
    labels = [("tox-block", "toxicity"), ("tox-block", "threat"), ("presidio", "EMAIL_ADDRESS"),
              ("presidio", "PERSON"), ("tox-block", "insult")]
    labels.append(("injection", "jailbreak"))
    policies = [Policy.from_toml(BASE), Policy.from_toml(LOWER), Policy.from_toml(
        'version = "inj"\n[rules.prompt.jailbreak]\nthreshold = 0.5\naction = "flag"\nblock_threshold = 0.8\n'
        '[rules.output.default]\nthreshold = 0.6\naction = "redact"\n[rules.prompt.insult]\nthreshold = 0.2\n'
        'action = "block"\nmonitor_only = true\n')]
    for _ in range(300):
        fs = [(rnd.choice(["prompt", "output"]), *rnd.choice(labels), round(rnd.random(), 2))
              for _ in range(rnd.randint(0, 5))]
        for policy in policies:
            per_dir, _ = backtest._actions(backtest._Judge(policy), fs)
            for d in ("prompt", "output"):
                expected = policy.decide(d, [Finding(det, lab, sc, None, None, "") for dd, det, lab, sc in fs
                                             if dd == d]).action
                assert per_dir.get(d, "allow") == expected


def test_a_threshold_under_the_pii_floor_is_named_as_a_limit(world):
    from console.services import backtest
    from engine.safety.policy import Policy

    low = Policy.from_toml('version = "x"\n[rules.prompt.PERSON]\nthreshold = 0.1\naction = "flag"\n')
    assert "prompt.PERSON" in backtest.limits_for(low)[0]
    assert backtest.limits_for(Policy.from_toml(LOWER)) == []
