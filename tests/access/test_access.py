"""Every service action x every role: allowed or refused on the server side, refusals recorded."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import console.services
from console.services import access
from console.services.errors import AccessDenied, SessionEnded
from db import audit as audit_q

ROLES = access.ALL_ROLES

# Written out by hand from the roles issue, not derived from the code under test.
EXPECTED = {
    "chat.use": {"operator"},
    "chat.send_to_review": {"operator"},
    # Issue 25, item 2: everyone who chats rates the answers of their own conversations.
    "chat.feedback": {"operator"},
    "dashboard.view": {"operator", "analyst", "admin"},
    "slo.manage": {"admin"},
    "loadtest.run": {"operator", "admin"},
    "review.work": {"reviewer"},
    "review.reveal_raw": {"reviewer"},
    "review.escalations": {"admin"},
    "promotion.approve": {"reviewer", "admin"},
    "promotion.view": {"reviewer", "admin"},
    "models.evaluate": {"admin", "reviewer"},
    "models.view": {"admin"},
    "models.register": {"admin"},
    "models.switch": {"admin"},
    # Issue 21, item 1: the one-person moves that remain, and the second admin who acknowledges them.
    "models.protect": {"admin"},
    "models.emergency_rollback": {"admin"},
    "models.acknowledge_emergency": {"admin"},
    "promotion.request": {"admin"},
    "users.manage": {"admin"},
    "users.erase": {"admin"},
    "users.erase_approve": {"admin"},
    # Issue 22, item 2: what only the command line did before its commands went through the guarded services.
    "retention.apply": {"admin"},
    "audit.rotate_key": {"admin"},
    "latency.rebuild": {"admin"},
    "policy.manage": {"admin"},
    "policy.view": {"admin", "reviewer"},
    "audit.search": {"analyst", "admin"},
    "audit.export": {"analyst", "admin"},
    "audit.export_raw": {"admin"},
    "audit.approve_export": {"admin"},
    "audit.verify": {"analyst", "admin"},
    # Issue 25, item 3: reviewers and admins see spot checks and the miss rate; only admins change the rules.
    "review.spot_checks": {"reviewer", "admin"},
    "review.spot_check_rules": {"admin"},
    # Issue 25, item 5: admins manage alert webhooks and read the delivery log.
    "alerts.manage": {"admin"},
}


# In the action table for the model-lifecycle work (issue 9) before any service performs them. When a service
# starts to, it takes its action out of this set.
NOT_YET_PERFORMED: set[str] = set()


def _public_services():
    found = []
    for mod_info in pkgutil.iter_modules(console.services.__path__):
        module = importlib.import_module(f"console.services.{mod_info.name}")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ != module.__name__ or name.startswith("_"):
                continue
            found.append((f"{mod_info.name}.{name}", fn))
    return found


SERVICES = _public_services()
# A service acts for a user when it takes (ctx, actor, ...); inspect sees through @requires to the signature.
GUARDED = [(name, fn) for name, fn in SERVICES if list(inspect.signature(fn).parameters)[:2] == ["ctx", "actor"]]


def test_the_action_table_matches_the_roles_issue():
    assert {a: {r.value for r in roles} for a, (roles, _) in access.ACTIONS.items()} == EXPECTED


def test_every_service_taking_an_actor_declares_its_action():
    unguarded = [name for name, fn in GUARDED if not hasattr(fn, "required_action")]
    assert unguarded == []


def test_only_services_taking_an_actor_are_decorated_with_requires():
    decorated = sorted(name for name, fn in SERVICES if hasattr(fn, "required_action"))
    assert decorated == sorted(name for name, _ in GUARDED)


def test_guarded_services_name_known_actions_and_perform_every_action_of_the_table():
    used = {fn.required_action for _, fn in GUARDED}
    assert used - set(access.ACTIONS) == set()
    assert NOT_YET_PERFORMED <= set(access.ACTIONS)
    # An action nobody performs is a hole in the table, or a service that lost its decorator.
    assert sorted(set(access.ACTIONS) - NOT_YET_PERFORMED - used) == []
    assert sorted(used & NOT_YET_PERFORMED) == []  # performed now: take it out of NOT_YET_PERFORMED


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", sorted(EXPECTED))
def test_authorize_allows_exactly_the_expected_roles(ctx, make_user, action, role):
    user = make_user(f"u-{role}", role)
    if role in EXPECTED[action]:
        assert access.authorize(ctx, user, action).username == user.username
    else:
        with pytest.raises(AccessDenied, match="do not allow"):
            access.authorize(ctx, user, action)
        with ctx.db.session() as s:
            denials = list(audit_q.iter_events(s, action="access.denied", actor=user.username))
        assert [d.details["action"] for d in denials] == [action]


# Allowed roles are exercised by each service's own tests; here every refused pair is called for real.
DENIED = [(name, fn, role) for name, fn in GUARDED for role in ROLES
          if role not in EXPECTED.get(getattr(fn, "required_action", ""), set())]


@pytest.mark.parametrize("name,fn,role", DENIED, ids=[f"{n}-{r}" for n, _, r in DENIED])
def test_guarded_service_refuses_roles_without_its_action(ctx, make_user, name, fn, role):
    user = make_user(f"u-{role}", role)
    with pytest.raises(AccessDenied):
        fn(ctx, user)


def test_a_user_with_several_roles_gets_the_union(ctx, make_user):
    user = make_user("multi", "operator", "analyst")
    assert access.allowed_pages(user.roles) == ["chat", "dashboard", "audit"]
    access.authorize(ctx, user, "audit.export")
    access.authorize(ctx, user, "chat.use")
    with pytest.raises(AccessDenied):
        access.authorize(ctx, user, "users.manage")


def test_a_disabled_users_session_stops_at_the_next_action(ctx, make_user):
    from console.services import users as users_svc

    admin = make_user("boss", "admin")
    op = make_user("op", "operator")
    access.authorize(ctx, op, "chat.use")
    users_svc.set_disabled(ctx, admin, op.user_id, True)
    with pytest.raises(SessionEnded):
        access.authorize(ctx, op, "chat.use")


def test_a_role_change_applies_at_the_next_action_without_signing_in_again(ctx, make_user):
    from console.services import users as users_svc

    admin = make_user("boss", "admin")
    op = make_user("op", "operator")
    users_svc.set_roles(ctx, admin, op.user_id, ["analyst"])
    with pytest.raises(AccessDenied):
        access.authorize(ctx, op, "chat.use")  # the stale principal still says operator
    assert access.authorize(ctx, op, "audit.export").roles == frozenset({"analyst"})


def test_separation_of_duties_refuses_acting_on_ones_own_object_and_records_it(ctx, make_user):
    rule = access.register_duty_rule(access.DutyRule(
        "test.own-object", "nobody approves their own request", owner_of=lambda s, obj: int(obj)))
    alice = make_user("alice", "reviewer")
    bob = make_user("bob", "reviewer")
    with ctx.db.session() as s:
        access.ensure_separation(ctx, s, bob, rule.name, str(alice.user_id))  # someone else's: fine
        with pytest.raises(access.SeparationOfDuties, match="own request"):
            access.ensure_separation(ctx, s, alice, rule.name, str(alice.user_id))
    with ctx.db.session() as s:
        events = list(audit_q.iter_events(s, action="access.denied", actor="alice"))
    assert events and events[-1].details["reason"] == "separation of duties"


def test_the_roles_are_the_four_the_product_defines() -> None:
    assert set(access.ALL_ROLES) == {"operator", "reviewer", "admin", "analyst"}


@pytest.mark.parametrize("reset", ["page", "cli"])
def test_a_password_reset_ends_the_users_open_sessions_at_their_next_click(ctx, make_user, reset):
    from console.services import auth
    from console.services import users as users_svc

    admin = make_user("boss", "admin")
    make_user("op", "operator")
    session = auth.login(ctx, "op", "correct horse battery staple")
    other_session = auth.login(ctx, "op", "correct horse battery staple")
    assert access.authorize(ctx, session, "chat.use").epoch == session.epoch
    if reset == "page":
        users_svc.reset_password(ctx, admin, session.user_id, "a brand new long password")
    else:
        shell = access.Principal.shell(ctx)
        users_svc.reset_password(ctx, shell, users_svc.find_user(ctx, shell, "op").id, "a brand new long password")
    for open_session in (session, other_session):
        with pytest.raises(SessionEnded, match="password was reset"):
            access.authorize(ctx, open_session, "chat.use")
    fresh = auth.login(ctx, "op", "a brand new long password")
    assert fresh.epoch == session.epoch + 1
    assert access.authorize(ctx, fresh, "chat.use").username == "op"
    # The admin who reset it keeps their own session.
    assert access.authorize(ctx, admin, "users.manage").username == "boss"
