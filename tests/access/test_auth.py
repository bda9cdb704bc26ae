"""Local sign-in: argon2 hashes, lockout, idle timeout, disabled accounts, and the audit trail of each."""

from __future__ import annotations

import pytest

from console.services import auth
from console.services import users as users_svc
from console.services.access import Principal
from console.services.errors import InvalidInput, LoginFailed, SessionEnded
from console.settings import parse_networks
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


def _failure_reasons(ctx, name):
    """Reasons of the failed sign-ins as ``name``: an account's own (its actor) or a name that matched none."""
    with ctx.db.session() as s:
        return [e.details.get("reason") for e in audit_q.iter_events(s, action="auth.login_failed")
                if name in (e.actor, e.details.get("username"))]


def test_failed_logins_lock_the_account_and_the_lock_expires(ctx, make_user, clock):
    make_user("alice", "operator")
    for _ in range(ctx.settings.lockout_threshold):
        with pytest.raises(LoginFailed, match="Wrong username or password"):
            auth.login(ctx, "alice", "not the password")
    # Even the right password is refused while locked, with the same message.
    with pytest.raises(LoginFailed, match="Wrong username or password"):
        auth.login(ctx, "alice", STRONG_PASSWORD)
    assert "auth.locked" in _actions(ctx, "alice")
    assert _failure_reasons(ctx, "alice")[-1] == "locked"
    clock.advance(minutes=ctx.settings.lockout_minutes + 1)
    assert auth.login(ctx, "alice", STRONG_PASSWORD).username == "alice"


def test_one_failure_after_a_lock_expires_counts_from_zero_and_does_not_lock_again(ctx, make_user, clock):
    make_user("alice", "operator")
    for _ in range(ctx.settings.lockout_threshold):
        with pytest.raises(LoginFailed):
            auth.login(ctx, "alice", "not the password")
    clock.advance(minutes=ctx.settings.lockout_minutes + 1)
    with pytest.raises(LoginFailed):  # one bad try just after the lock expired
        auth.login(ctx, "alice", "not the password")
    with ctx.db.session(readonly=True) as s:
        stored = users_q.get_user_by_username(s, "alice")
        assert stored.failed_login_count == 1 and stored.locked_until is None
    assert auth.login(ctx, "alice", STRONG_PASSWORD).username == "alice"
    assert _actions(ctx, "alice").count("auth.locked") == 1


def _disable(ctx, admin, user):
    users_svc.set_disabled(ctx, admin, user.user_id, True)


def _lock(ctx, admin, user):
    for _ in range(ctx.settings.lockout_threshold):
        with pytest.raises(LoginFailed):
            auth.login(ctx, user.username, "not the password")


@pytest.mark.parametrize("username,password,prepare,reason", [
    ("nobody", STRONG_PASSWORD, None, "unknown user"),
    ("op", STRONG_PASSWORD, _disable, "disabled"),
    ("op", STRONG_PASSWORD, _lock, "locked"),
    ("op", "not the password", None, "wrong password"),
], ids=["unknown", "disabled", "locked", "wrong-password"])
def test_every_failed_sign_in_gives_one_message_and_the_audit_log_keeps_the_reason(ctx, make_user, username,
                                                                                    password, prepare, reason):
    admin = make_user("boss", "admin")
    op = make_user("op", "operator")
    if prepare:
        prepare(ctx, admin, op)
    with pytest.raises(LoginFailed) as err:
        auth.login(ctx, username, password)
    assert str(err.value) == auth.GENERIC_FAILURE == (
        "Wrong username or password, or the account cannot sign in right now.")
    assert _failure_reasons(ctx, username)[-1] == reason


def test_a_disabled_user_cannot_sign_in(ctx, make_user):
    admin = make_user("boss", "admin")
    op = make_user("op", "operator")
    users_svc.set_disabled(ctx, admin, op.user_id, True)
    with pytest.raises(LoginFailed, match="Wrong username or password"):
        auth.login(ctx, "op", STRONG_PASSWORD)


# --- throttling -------------------------------------------------------------------------------------------------


def test_sign_in_attempts_are_throttled_per_client_and_the_refusal_is_audited(ctx, make_user, clock):
    make_user("alice", "operator")
    limit = ctx.settings.login_attempts_per_minute
    for _ in range(limit):
        assert auth.login(ctx, "alice", STRONG_PASSWORD, client="ip:203.0.113.7").username == "alice"
    # Even the right password is refused once the client has used its attempts.
    with pytest.raises(LoginFailed) as err:
        auth.login(ctx, "alice", STRONG_PASSWORD, client="ip:203.0.113.7")
    assert str(err.value) == "Too many sign-in attempts; wait a minute."
    with ctx.db.session(readonly=True) as s:
        [event] = list(audit_q.iter_events(s, action="auth.login_throttled"))
    assert event.object_id == "ip:203.0.113.7" and (event.actor, event.details["username"]) == ("anonymous", "alice")
    # Another client is not affected, and the first one may try again a minute later.
    assert auth.login(ctx, "alice", STRONG_PASSWORD, client="ip:198.51.100.1").username == "alice"
    clock.advance(seconds=61)
    assert auth.login(ctx, "alice", STRONG_PASSWORD, client="ip:203.0.113.7").username == "alice"


def test_the_attempt_limit_is_a_setting_with_a_default_of_ten(ctx, tmp_path):
    from console.settings import Settings
    from tests.conftest import console_env

    assert ctx.settings.login_attempts_per_minute == 10
    env = console_env(tmp_path, LLM_CONSOLE_LOGIN_ATTEMPTS_PER_MINUTE="3")
    assert Settings.from_env(env).login_attempts_per_minute == 3


T0 = __import__("datetime").datetime(2026, 1, 1, tzinfo=__import__("datetime").UTC)


@pytest.mark.parametrize("attempts,expected", [
    ([0, 1, 2], [True, True, True]),
    ([0, 1, 2, 3], [True, True, True, False]),
    ([0, 1, 2, 59, 60], [True, True, True, False, True]),
    ([0, 30, 45, 61, 62, 89, 91], [True, True, True, True, False, False, True]),
], ids=["within-limit", "one-too-many", "window-slides", "refused-attempts-do-not-count"])
def test_the_sliding_window_allows_three_attempts_in_any_minute(attempts, expected):
    from datetime import timedelta

    limiter = auth.SlidingWindowLimiter()
    assert [limiter.allow("k", T0 + timedelta(seconds=t), 3) for t in attempts] == expected


def test_the_limiter_keeps_a_bounded_number_of_clients():
    limiter = auth.SlidingWindowLimiter(max_keys=100)
    for n in range(1000):
        assert limiter.allow(f"client-{n}", T0, 3)
    assert len(limiter._log) <= 100


@pytest.mark.parametrize("forwarded,remote,session,key", [
    ("203.0.113.7", "10.0.0.2", "s1", "ip:10.0.0.2"),
    ("198.51.100.9, 203.0.113.7", "10.0.0.2", "s1", "ip:10.0.0.2"),
    (None, "10.0.0.2", "s1", "ip:10.0.0.2"),
    ("  ", None, "s1", "session:s1"),
    ("203.0.113.7", None, "s1", "session:s1"),
    (None, None, None, "unknown"),
], ids=["forwarded-ignored", "hops-ignored", "remote-address", "session", "forwarded-without-socket", "nothing"])
def test_without_trusted_proxies_the_client_key_is_the_socket_address_never_a_header(forwarded, remote, session,
                                                                                       key):
    # X-Forwarded-For is whatever the client wrote unless a proxy we trust wrote it: with no trusted proxy
    # configured, every new forged value would have been a fresh throttle key (issue 21).
    assert auth.client_key(forwarded, remote, session) == key


TRUSTED = parse_networks("10.0.0.0/8, 192.0.2.1, 2001:db8::/32")


@pytest.mark.parametrize("forwarded,remote,key", [
    ("203.0.113.7", "10.0.0.2", "ip:203.0.113.7"),
    ("198.51.100.9, 203.0.113.7", "10.0.0.2", "ip:203.0.113.7"),
    ("198.51.100.9, 203.0.113.7, 10.1.2.3, 192.0.2.1", "10.0.0.2", "ip:203.0.113.7"),
    ("198.51.100.9, 2001:db8::5", "2001:db8::1", "ip:198.51.100.9"),
    ("10.9.9.9, 10.1.1.1", "10.0.0.2", "ip:10.9.9.9"),
    ("203.0.113.7", "198.51.100.50", "ip:198.51.100.50"),
    (None, "10.0.0.2", "ip:10.0.0.2"),
    ("not-an-address, 10.1.1.1", "10.0.0.2", "ip:not-an-address"),
], ids=["one-hop", "forged-left-hop", "chain-of-proxies", "ipv6-proxy", "all-trusted", "untrusted-socket",
        "no-header", "garbage-hop"])
def test_with_trusted_proxies_the_client_key_is_the_right_most_untrusted_hop(forwarded, remote, key):
    assert auth.client_key(forwarded, remote, "s1", TRUSTED) == key


def test_a_forged_forwarded_for_does_not_escape_the_sign_in_throttle(ctx, monkeypatch):
    # No trusted proxy: a client rotating X-Forwarded-For is still one client (its socket address).
    limit = ctx.settings.login_attempts_per_minute
    for n in range(limit):
        with pytest.raises(LoginFailed):
            auth.login(ctx, "nobody", "wrong", client=auth.client_key(f"198.51.100.{n}", "203.0.113.7", "s"))
    with pytest.raises(LoginFailed, match="Too many"):
        auth.login(ctx, "nobody", "wrong", client=auth.client_key("198.51.100.250", "203.0.113.7", "s"))


@pytest.mark.parametrize("value,error", [
    ("", None), ("10.0.0.0/8", None), ("10.0.0.1 ,fd00::/8", None), ("10.0.0.300", "LLM_CONSOLE_TRUSTED_PROXIES"),
    ("proxy.example", "LLM_CONSOLE_TRUSTED_PROXIES"),
], ids=["empty", "cidr", "list", "bad-address", "hostname"])
def test_the_trusted_proxies_setting_takes_addresses_and_networks(value, error):
    from console.settings import Settings, SettingsError

    if error is None:
        assert Settings.from_env({"LLM_CONSOLE_TRUSTED_PROXIES": value}).trusted_proxies == parse_networks(value)
    else:
        with pytest.raises(SettingsError, match=error):
            Settings.from_env({"LLM_CONSOLE_TRUSTED_PROXIES": value})


# --- bounded input ----------------------------------------------------------------------------------------------


def test_a_10_mb_username_is_refused_and_its_audit_event_stays_small(ctx):
    huge = "a" * 10_000_000
    with pytest.raises(LoginFailed, match="at most 64 characters"):
        auth.login(ctx, huge, STRONG_PASSWORD, client="ip:203.0.113.7")
    with ctx.db.session(readonly=True) as s:
        [event] = list(audit_q.iter_events(s, action="auth.login_failed"))
    stored = len(event.actor) + len(event.object_id or "") + len(__import__("json").dumps(event.details, default=str))
    assert stored < 500
    # No account has that name: it goes into the (erasable) details, never into the chained actor column.
    assert event.actor == "anonymous" and event.object_id is None
    assert event.details["username"].startswith("a" * 64)
    assert "truncated, 10,000,000 characters" in event.details["username"]
    assert event.details["reason"] == "too long"


def test_a_huge_password_is_refused_without_hashing_it(ctx, make_user):
    make_user("alice", "operator")
    with pytest.raises(LoginFailed, match="at most 1,024"):
        auth.login(ctx, "alice", "x" * 10_000_000)


@pytest.mark.parametrize("field,value,message", [
    ("username", "a" * 65, "at most 64 characters; this one has 65"),
    ("password", "p" * 1025, "at most 1,024 characters"),
    ("email", "a" * 250 + "@example.com", "at most 254 characters"),
    ("display_name", "D" * 201, "201 characters; the limit is 200"),
], ids=["username", "password", "email", "display-name"])
def test_every_user_field_is_bounded_with_a_clear_message(ctx, make_user, field, value, message):
    admin = make_user("boss", "admin")
    fields = {"username": "newbie", "password": STRONG_PASSWORD, "email": None, "display_name": None}
    fields[field] = value
    with pytest.raises(InvalidInput, match=message):
        users_svc.add_user(ctx, admin, fields["username"], fields["password"], ["operator"],
                           display_name=fields["display_name"], email=fields["email"])
    with ctx.db.session(readonly=True) as s:
        assert [u.username for u in users_q.list_users(s)] == ["boss"]


def test_a_username_of_64_characters_is_accepted(ctx, make_user):
    admin = make_user("boss", "admin")
    assert users_svc.add_user(ctx, admin, "u" * 64, STRONG_PASSWORD, ["operator"]).username == "u" * 64


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
        users_svc.add_user(ctx, Principal.shell(ctx), "weak", password, ["operator"])


IDP = "https://idp.example.com"


def _claims(email, sub="sub-jane", iss=IDP, verified=True):
    return {"is_logged_in": True, "iss": iss, "sub": sub, "email": email, "email_verified": verified}


def _bound(ctx, username):
    with ctx.db.session(readonly=True) as s:
        user = users_q.get_user_by_username(s, username)
        return user.sso_issuer, user.sso_subject


def test_sso_identities_are_matched_by_email_and_keep_console_roles(ctx, make_user):
    admin = make_user("boss", "admin")
    users_svc.add_user(ctx, admin, "jane", None, ["analyst"], email="Jane@Example.com")
    principal = auth.login_sso(ctx, _claims("jane@example.com"))
    assert principal.username == "jane" and principal.roles == frozenset({"analyst"})
    with pytest.raises(LoginFailed, match="no active account"):
        auth.login_sso(ctx, _claims("stranger@example.com", sub="sub-stranger"))


@pytest.mark.parametrize("verified,signs_in", [
    (True, True), ("true", True), (False, False), ("false", False), (None, False), ("yes", False),
], ids=["true", "string-true", "false", "string-false", "missing", "yes"])
def test_sso_requires_the_provider_to_have_verified_the_email(ctx, make_user, verified, signs_in):
    make_user("jane", "analyst", email="jane@example.com")
    claims = _claims("jane@example.com", verified=verified)
    if signs_in:
        assert auth.login_sso(ctx, claims).username == "jane"
    else:
        with pytest.raises(LoginFailed, match="not verified"):
            auth.login_sso(ctx, claims)
        assert _bound(ctx, "jane") == (None, None)
        assert _failure_reasons(ctx, "jane@example.com")[-1] == "sso: email not verified"


def test_the_first_sso_sign_in_binds_the_account_and_a_changed_email_still_signs_in(ctx, make_user):
    make_user("jane", "analyst", email="jane@example.com")
    auth.login_sso(ctx, _claims("jane@example.com"))
    assert _bound(ctx, "jane") == (IDP, "sub-jane")
    assert "user.sso_bound" in _actions(ctx, "jane")
    # The provider now says jane@new.example: the bound identity (iss, sub) still signs in to the same account.
    assert auth.login_sso(ctx, _claims("jane@new.example")).username == "jane"


@pytest.mark.parametrize("claims", [
    _claims("jane@example.com", sub="sub-mallory"),
    _claims("jane@example.com", iss="https://other-idp.example.com"),
], ids=["other-subject", "other-issuer"])
def test_another_identity_with_the_email_of_a_bound_account_is_refused(ctx, make_user, claims):
    make_user("jane", "analyst", email="jane@example.com")
    auth.login_sso(ctx, _claims("jane@example.com"))
    with pytest.raises(LoginFailed, match="no active account"):
        auth.login_sso(ctx, claims)
    assert _failure_reasons(ctx, "jane@example.com")[-1] == "sso: account bound to another sso identity"
    assert _bound(ctx, "jane") == (IDP, "sub-jane")


@pytest.mark.parametrize("email", ["\u212aate@example.com", "\u212aATE@EXAMPLE.COM", "kate@exa\uff4dple.com"],
                         ids=["kelvin-sign", "kelvin-sign-upper", "fullwidth-m"])
def test_sso_refuses_an_email_that_only_matches_after_unicode_normalisation(ctx, make_user, email):
    make_user("kate", "admin", email="kate@example.com")
    with pytest.raises(LoginFailed, match="normalisation"):
        auth.login_sso(ctx, _claims(email, sub="sub-kelvin"))
    assert _bound(ctx, "kate") == (None, None)


def test_sso_compares_emails_after_nfkc_and_casefold(ctx, make_user):
    make_user("kate", "admin", email="Kate@Example.COM")
    assert auth.login_sso(ctx, _claims("KATE@example.com", sub="sub-kate")).username == "kate"


@pytest.mark.parametrize("email", ["\u212aate@example.com", "stra\u00dfe@example.com"], ids=["kelvin-sign", "sharp-s"])
def test_an_admin_cannot_register_an_email_that_changes_under_normalisation(ctx, make_user, email):
    admin = make_user("boss", "admin")
    with pytest.raises(InvalidInput, match="normalisation"):
        users_svc.add_user(ctx, admin, "kate", None, ["operator"], email=email)


def test_a_disabled_sso_account_is_refused_and_not_bound(ctx, make_user):
    admin = make_user("boss", "admin")
    jane = make_user("jane", "analyst", email="jane@example.com")
    users_svc.set_disabled(ctx, admin, jane.user_id, True)
    with pytest.raises(LoginFailed, match="no active account"):
        auth.login_sso(ctx, _claims("jane@example.com"))
    assert _bound(ctx, "jane") == (None, None)


# --- single sign-on configuration --------------------------------------------------------------------------------

GOOD_SECRET = "k3Jx9vQ2mT7pW4sL8nB6cR1yH5gF0dZa"


@pytest.mark.parametrize("config,problem", [
    (None, None),
    ({}, None),
    ({"cookie_secret": GOOD_SECRET, "client_id": "console"}, None),
    ({"cookie_secret": "replace-with-a-long-random-string"}, "placeholder"),
    ({"cookie_secret": "  replace-with-a-long-random-string "}, "placeholder"),
    ({"cookie_secret": GOOD_SECRET[:31]}, "shorter than 32"),
    ({"cookie_secret": "short" + " " * 40}, "shorter than 32"),
    ({"cookie_secret": "\t" + GOOD_SECRET[:20] + " " * 20 + "\n"}, "shorter than 32"),
    ({"cookie_secret": ""}, "without a cookie_secret"),
    ({"client_id": "console"}, "without a cookie_secret"),
    ({"cookie_secret": 12345678901234567890123456789012345}, "without a cookie_secret"),
], ids=["not-configured", "empty-section", "good", "placeholder", "placeholder-padded", "31-chars",
        "short-padded-with-spaces", "short-padded-around", "empty", "missing", "not-a-string"])
def test_single_sign_on_with_a_weak_cookie_secret_is_refused(config, problem):
    found = auth.sso_config_problem(config)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and "token_urlsafe" in found


def test_the_examples_cookie_secret_is_refused():
    import tomllib
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / ".streamlit" / "secrets.toml.example"
    config = tomllib.loads(example.read_text())["auth"]
    assert "placeholder" in (auth.sso_config_problem(config) or "")


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
