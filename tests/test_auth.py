"""Local sign-in: argon2 hashes, lockout, idle timeout, disabled accounts, and the audit trail of each."""

from __future__ import annotations

import pytest

from console.services import auth
from console.services import users as users_svc
from console.services.errors import InvalidInput, LoginFailed, SessionEnded
from db import audit as audit_q
from db import users as users_q
from tests.conftest import STRONG_PASSWORD


def _actions(ctx, actor=None):
    with ctx.db.session() as s:
        return [e.action for e in audit_q.iter_events(s, actor=actor)]


def test_login_with_the_right_password_returns_the_principal_and_is_audited(ctx, make_user):
    make_user("alice", "operator")
    principal = auth.login(ctx, "Alice", STRONG_PASSWORD)
    assert principal.username == "alice" and principal.roles == frozenset({"operator"})
    assert "auth.login" in _actions(ctx, "alice")


def test_passwords_are_stored_as_argon2_hashes(ctx, make_user):
    make_user("alice", "operator")
    with ctx.db.session() as s:
        stored = users_q.get_user_by_username(s, "alice").password_hash
    assert stored.startswith("$argon2id$") and STRONG_PASSWORD not in stored


@pytest.mark.parametrize("username,password", [("alice", "wrong password!!"), ("nobody", STRONG_PASSWORD), ("", "x"),
                                                ("alice", "")], ids=["wrong-password", "unknown-user", "no-username",
                                                                     "no-password"])
def test_bad_credentials_are_refused_with_a_clear_message(ctx, make_user, username, password):
    make_user("alice", "operator")
    with pytest.raises(LoginFailed) as err:
        auth.login(ctx, username, password)
    assert str(err.value) in (auth.GENERIC_FAILURE, "Enter a username and a password.")


def test_failed_logins_lock_the_account_and_the_lock_expires(ctx, make_user, clock):
    make_user("alice", "operator")
    for _ in range(ctx.settings.lockout_threshold - 1):
        with pytest.raises(LoginFailed, match="Wrong username or password"):
            auth.login(ctx, "alice", "not the password")
    with pytest.raises(LoginFailed, match="locked"):
        auth.login(ctx, "alice", "not the password")
    # Even the right password is refused while locked.
    with pytest.raises(LoginFailed, match="locked until"):
        auth.login(ctx, "alice", STRONG_PASSWORD)
    assert "auth.locked" in _actions(ctx, "alice")
    clock.advance(minutes=ctx.settings.lockout_minutes + 1)
    assert auth.login(ctx, "alice", STRONG_PASSWORD).username == "alice"


def test_a_disabled_user_cannot_sign_in(ctx, make_user):
    admin = make_user("boss", "admin")
    op = make_user("op", "operator")
    users_svc.set_disabled(ctx, admin, op.user_id, True)
    with pytest.raises(LoginFailed, match="disabled"):
        auth.login(ctx, "op", STRONG_PASSWORD)


def test_idle_sessions_end_after_the_timeout_and_say_why(ctx, make_user, clock):
    op = make_user("op", "operator")
    last = auth.check_idle(ctx, op, None)
    clock.advance(minutes=ctx.settings.session_idle_minutes - 1)
    last = auth.check_idle(ctx, op, last)
    clock.advance(minutes=ctx.settings.session_idle_minutes + 1)
    with pytest.raises(SessionEnded, match="without activity"):
        auth.check_idle(ctx, op, last)
    assert "auth.session_expired" in _actions(ctx, "op")


def test_logout_is_audited(ctx, make_user):
    op = make_user("op", "operator")
    auth.logout(ctx, op)
    assert _actions(ctx, "op")[-1] == "auth.logout"


@pytest.mark.parametrize("password", ["short", "", "            "], ids=["too-short", "empty", "blank"])
def test_weak_passwords_are_refused(ctx, password):
    with pytest.raises(InvalidInput):
        users_svc.create_user_cli(ctx, "weak", password, ["operator"])


def test_sso_identities_are_matched_by_email_and_keep_console_roles(ctx, make_user):
    admin = make_user("boss", "admin")
    users_svc.add_user(ctx, admin, "jane", None, ["analyst"], email="Jane@Example.com")
    principal = auth.login_sso(ctx, "jane@example.com", "https://idp.example.com")
    assert principal.username == "jane" and principal.roles == frozenset({"analyst"})
    with pytest.raises(LoginFailed, match="no active account"):
        auth.login_sso(ctx, "stranger@example.com")


def test_admin_user_management_is_audited_with_the_actor(ctx, make_user):
    admin = make_user("boss", "admin")
    new = users_svc.add_user(ctx, admin, "carol", STRONG_PASSWORD, ["operator"])
    users_svc.set_roles(ctx, admin, new.id, ["operator", "reviewer"])
    users_svc.reset_password(ctx, admin, new.id, "another long password")
    users_svc.set_disabled(ctx, admin, new.id, True)
    actions = _actions(ctx, "boss")
    for expected in ("user.create", "user.roles", "user.password", "user.disable"):
        assert any(a.startswith(expected) for a in actions), (expected, actions)


@pytest.mark.parametrize("username,roles,message", [
    ("Bad Name", ["operator"], "username"),
    ("dup", ["operator"], "taken"),
    ("newbie", ["wizard"], "Unknown role"),
    ("newbie", [], "at least one role"),
], ids=["bad-username", "duplicate", "unknown-role", "no-role"])
def test_adding_a_user_with_bad_input_gives_a_clear_error(ctx, make_user, username, roles, message):
    admin = make_user("boss", "admin")
    make_user("dup", "operator")
    with pytest.raises(InvalidInput, match=message):
        users_svc.add_user(ctx, admin, username, STRONG_PASSWORD, roles)


def test_an_admin_cannot_disable_themselves_or_drop_their_own_admin_role(ctx, make_user):
    admin = make_user("boss", "admin")
    with pytest.raises(InvalidInput):
        users_svc.set_disabled(ctx, admin, admin.user_id, True)
    with pytest.raises(InvalidInput):
        users_svc.set_roles(ctx, admin, admin.user_id, ["operator"])
