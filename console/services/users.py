"""User administration (admins only) and the first admin created by ``llm-console init``.

The command line acts as the users row ``shell:<OS user>`` (:meth:`console.services.access.Principal.shell`): it is
listed here like any account and an admin can disable it (then that OS user's commands are refused), but it has no
password and no email, and never gets either, so neither sign-in reaches it. No console username holds ':'."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from console.services.access import ALL_ROLES, Principal, requires, shell_os_user
from console.services.auth import MAX_USERNAME_CHARS, canonical_email, check_password_rules, hash_password
from console.services.context import AppContext
from console.services.errors import InvalidInput, NotFound
from console.services.text import clean_text, has_format_characters, is_clean, optional_text
from db import sessions as sessions_q
from db import users as users_q

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from db.tables import User

_USERNAME = re.compile(rf"^[a-z0-9][a-z0-9._-]{{1,{MAX_USERNAME_CHARS - 1}}}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_DISPLAY_NAME_CHARS = 200
SYSTEM_ACTOR = "system"


@dataclass(frozen=True)
class UserView:
    id: int
    username: str
    display_name: str | None
    email: str | None
    roles: tuple[str, ...]
    disabled: bool
    locked_until: datetime | None
    last_login_at: datetime | None


def _view(user: User) -> UserView:
    return UserView(user.id, user.username, user.display_name, user.email, tuple(sorted(user.roles)),
                    bool(user.disabled), user.locked_until, user.last_login_at)


def validate_roles(roles: Iterable[str]) -> list[str]:
    roles = sorted(set(roles))
    unknown = [r for r in roles if r not in ALL_ROLES]
    if unknown:
        raise InvalidInput(f"Unknown role(s): {', '.join(unknown)}. Roles are: {', '.join(ALL_ROLES)}.")
    return roles


def validate_username(username: str) -> str:
    username = (username or "").strip().lower()
    if len(username) > MAX_USERNAME_CHARS:
        raise InvalidInput(f"A username has at most {MAX_USERNAME_CHARS} characters; this one has {len(username):,}.")
    if not _USERNAME.fullmatch(username):
        raise InvalidInput(
            f"A username has 2-{MAX_USERNAME_CHARS} characters: lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    if users_q.is_reserved_username(username):
        reserved = ", ".join(sorted(users_q.RESERVED_USERNAMES))
        raise InvalidInput(f"The username {username!r} is reserved: the console writes {reserved} as the actor of "
                           "its own audit entries. Choose another.")
    return username


def _validate_email(email: str | None) -> str | None:
    # Stored in the form single sign-on compares (NFKC, casefold); refuses lookalike characters.
    if email and has_format_characters(email):
        raise InvalidInput("An email address cannot hold invisible formatting characters (such as a right-to-left "
                           "override).")
    email = canonical_email(email) or None
    if email is not None and not _EMAIL.match(email):
        raise InvalidInput(f"{email!r} is not an email address.")
    return email


def _validate_display_name(display_name: str | None) -> str | None:
    return optional_text(display_name, "the display name", MAX_DISPLAY_NAME_CHARS)


def _create(ctx: AppContext, actor: str, actor_id: int | None, username: str, password: str | None,
            roles: Iterable[str], display_name: str | None, email: str | None) -> UserView:
    username = validate_username(username)  # its pattern refuses NULs and surrogates with the usual message
    for value, what in ((password, "password"), (email, "email address")):
        if value is not None and not is_clean(value):
            raise InvalidInput(f"The {what} holds a character that cannot be stored (a NUL or a broken surrogate).")
    display_name = None if display_name is None else clean_text(display_name)
    roles = validate_roles(roles)
    if not roles:
        raise InvalidInput("Give the user at least one role.")
    email = _validate_email(email)
    display_name = _validate_display_name(display_name)
    password_hash = None
    if password is not None:
        check_password_rules(password, ctx.settings.min_password_length)
        password_hash = hash_password(password)
    elif email is None:
        raise InvalidInput("A user without a password signs in with single sign-on and needs an email.")
    with ctx.db.session() as s:
        if users_q.get_user_by_username(s, username) is not None:
            raise InvalidInput(f"The username {username!r} is taken.")
        if email and users_q.get_user_by_email(s, email) is not None:
            raise InvalidInput(f"The email {email!r} belongs to another user.")
        user = users_q.create_user(s, username=username, password_hash=password_hash, roles=roles,
                                   display_name=display_name, email=email,
                                   actor=actor, actor_id=actor_id)
        return _view(user)


def bootstrap_admin(ctx: AppContext, username: str, password: str) -> UserView | None:
    """Create the first admin if no console account exists yet; return it, or None when one does. The shell's
    own row (``shell:<OS user>``, made by a command run before this) is not an account anyone can sign in with."""
    with ctx.db.session() as s:
        if any(shell_os_user(u.username) is None for u in users_q.list_users(s)):
            return None
    # The first account can also chat, so a new installation can be tried at once; the other duties
    # (reviewer, analyst) are given to other people on the Users page.
    return _create(ctx, SYSTEM_ACTOR, None, username, password, ["admin", "operator"], "Administrator", None)


@requires("users.manage")
def list_users(ctx: AppContext, actor: Principal) -> list[UserView]:
    with ctx.db.session(readonly=True) as s:
        return [_view(u) for u in users_q.list_users(s)]


@requires("users.manage")
def add_user(ctx: AppContext, actor: Principal, username: str, password: str | None, roles: Iterable[str],
             display_name: str | None = None, email: str | None = None) -> UserView:
    return _create(ctx, actor.username, actor.user_id, username, password, roles, display_name, email)


def _by_name(s: Session, username: str) -> User:
    user = users_q.get_user_by_username(s, (username or "").strip().lower()[:MAX_USERNAME_CHARS + 1])
    if user is None:
        raise NotFound(f"No user named {username[:MAX_USERNAME_CHARS]!r}.")
    return user


@requires("users.manage")
def find_user(ctx: AppContext, actor: Principal, username: str) -> UserView:
    """The user named ``username`` (the command line names people; the other services take ids)."""
    with ctx.db.session(readonly=True) as s:
        return _view(_by_name(s, username))


@requires("users.manage")
def unlock(ctx: AppContext, actor: Principal, user_id: int) -> UserView:
    """Clear a user's failed sign-ins and lock; audited as ``user.unlock``."""
    with ctx.db.session() as s:
        user = _load(s, user_id)
        users_q.unlock(s, user.id, actor=actor.username, actor_id=actor.user_id)
        return _view(user)


def _load(s: Session, user_id: int) -> User:
    user = users_q.get_user(s, user_id)
    if user is None:
        raise NotFound(f"No user with id {user_id}.")
    return user


@requires("users.manage")
def set_roles(ctx: AppContext, actor: Principal, user_id: int, roles: Iterable[str]) -> UserView:
    roles = validate_roles(roles)
    with ctx.db.session() as s:
        user = _load(s, user_id)
        if user.id == actor.user_id and "admin" not in roles:
            raise InvalidInput("You cannot remove your own admin role; ask another admin.")
        before = set(user.roles)
        users_q.set_roles(s, user.id, roles, actor=actor.username, actor_id=actor.user_id)
        if set(roles) != before:  # the browser sessions end: the person signs in again with the new roles
            sessions_q.end_user_sessions(s, user.id, sessions_q.ROLES_CHANGED, ctx.now(), actor=actor.username,
                                         actor_id=actor.user_id)
        return _view(user)


@requires("users.manage")
def set_disabled(ctx: AppContext, actor: Principal, user_id: int, disabled: bool) -> UserView:
    with ctx.db.session() as s:
        user = _load(s, user_id)
        if user.id == actor.user_id and disabled:
            raise InvalidInput("You cannot disable your own account.")
        users_q.set_disabled(s, user.id, disabled, actor=actor.username, actor_id=actor.user_id)
        if disabled:
            sessions_q.end_user_sessions(s, user.id, sessions_q.DISABLED, ctx.now(), actor=actor.username,
                                         actor_id=actor.user_id)
        return _view(user)


@requires("users.manage")
def reset_password(ctx: AppContext, actor: Principal, user_id: int, new_password: str) -> UserView:
    """Set a new password: clears the lock and ends the user's open sessions at their next click; audited."""
    check_password_rules(new_password, ctx.settings.min_password_length)
    with ctx.db.session() as s:
        user = _load(s, user_id)
        if shell_os_user(user.username) is not None:
            raise InvalidInput(f"{user.username} is the command line of the OS user {shell_os_user(user.username)}: "
                               "it has no password and never signs in to the console.")
        users_q.set_password_hash(s, user.id, hash_password(new_password), actor=actor.username,
                                  actor_id=actor.user_id)
        sessions_q.end_user_sessions(s, user.id, sessions_q.PASSWORD_RESET, ctx.now(), actor=actor.username,
                                     actor_id=actor.user_id)
        return _view(user)
