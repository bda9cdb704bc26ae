"""Errors a page may show to its user. Anything else escaping a service is a bug and should be loud."""

from __future__ import annotations


class ConsoleError(Exception):
    """Base of the user-facing errors raised by services; the message is safe to show."""


class InvalidInput(ConsoleError):
    """A form field, filter or argument has a value that cannot be used."""


class LoginFailed(ConsoleError):
    """Wrong credentials, a locked account or a disabled one."""


class SessionEnded(ConsoleError):
    """The signed-in user no longer exists, was disabled, or was idle too long: sign in again."""


class AccessDenied(ConsoleError):
    """The user's roles do not allow this page or action (the refusal is recorded)."""


class SeparationOfDuties(AccessDenied):
    """The action would let someone check their own work (approve their own request, review their own chat)."""


class NotFound(ConsoleError):
    """The object asked for does not exist (or the user may not know it exists)."""


class ModelUnavailable(ConsoleError):
    """No model can answer right now: none is served, it is loading or switching, or the engine failed.

    Services translate the engine's own errors into this one, so pages know a single error family.
    """


class StorageUnavailable(ConsoleError):
    """The database could not store something right now (locked by a long writer, or its disk is full).

    The message says what was and was not saved, and that trying again later may work.
    """


def is_locked(exc: BaseException) -> bool:
    """A database error that waiting may cure. SQLite: "database is locked"/"busy"; PostgreSQL: a lock timeout, a
    deadlock or a serialization failure. ``exc`` is SQLAlchemy's OperationalError (its ``orig`` the driver's)."""
    orig = getattr(exc, "orig", None)
    message = str(orig if orig is not None else exc).lower()
    return any(word in message for word in ("locked", "busy", "lock timeout", "deadlock", "could not serialize"))


def storage_problem(exc: BaseException) -> str:
    """What a database error means for the person waiting, in words ("the database is busy with ...")."""
    orig = getattr(exc, "orig", None)
    message = str(orig if orig is not None else exc).lower()
    if "full" in message or "no space" in message:
        return "the database's disk is full (tell an admin)"
    if is_locked(exc):
        return "the database is busy with another long write"
    return "the database is not available right now"
