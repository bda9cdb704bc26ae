"""A time limit for one scan, checked between the steps of a scan, so no text holds a scanner (and its lock) for long.

Python cannot stop a thread in the middle of a regex or a model call, so the limit is cooperative: the runner
checks it between scanners, Presidio between spaCy and each recognizer (under its lock), the toxicity models between
batches of windows. A scan over the limit raises :class:`ScanTimeout` at the next check and lets go of every lock on
the way out, so it holds the scanner at most one step past its limit (every regex step is linear: see
tests/safety/test_recognizers_redos.py). Time spent waiting for a scanner's lock does not count against the limit: a scan
queued behind another one gets its whole budget once it runs, so one slow text cannot get other people's refused.

The deadline in force travels in a context variable (:func:`scope`), so scanners need no extra argument and a
scanner that never checks it still works (the runner checks between scanners).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator


class ScanTimeout(RuntimeError):
    """A scan took longer than its limit and was stopped; ``limit_seconds`` is the limit, ``where`` the step."""

    def __init__(self, limit_seconds: float, where: str) -> None:
        super().__init__(f"the scan took longer than its limit of {limit_seconds:g} s (stopped at {where})")
        self.limit_seconds = limit_seconds
        self.where = where


class Deadline:
    """The end of one scan's time budget (monotonic clock); :meth:`check` raises :class:`ScanTimeout` past it."""

    def __init__(self, limit_seconds: float) -> None:
        if limit_seconds <= 0:
            raise ValueError("a scan time limit must be positive")
        self.limit_seconds = limit_seconds
        self._expires = time.monotonic() + limit_seconds
        self.steps = 0  # checks passed: how far a scan got, for logs and tests

    def remaining(self) -> float:
        return self._expires - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def check(self, where: str) -> None:
        """Raise :class:`ScanTimeout` when the budget is spent; ``where`` names the step that comes next."""
        if self.expired():
            raise ScanTimeout(self.limit_seconds, where)
        self.steps += 1

    def extend(self, seconds: float) -> None:
        """Give back time the scan spent waiting (for a lock another scan held), not working."""
        self._expires += max(seconds, 0.0)


_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("scan_deadline", default=None)


def current() -> Deadline | None:
    """The deadline of the scan running in this context, or None (no limit)."""
    return _current.get()


def check(where: str) -> None:
    """Check the current scan's deadline, if it has one (see :meth:`Deadline.check`)."""
    deadline = _current.get()
    if deadline is not None:
        deadline.check(where)


@contextlib.contextmanager
def scope(limit_seconds: float | None) -> Iterator[Deadline | None]:
    """Run the body under a new deadline of ``limit_seconds`` (None: no limit, and none inherited)."""
    token = _current.set(Deadline(limit_seconds) if limit_seconds is not None else None)
    try:
        yield _current.get()
    finally:
        _current.reset(token)


@contextlib.contextmanager
def hold(lock: threading.Lock) -> Iterator[None]:
    """Take a scanner's ``lock``; the wait is not charged to the current scan (see the module's text)."""
    began = time.monotonic()
    with lock:
        deadline = _current.get()
        if deadline is not None:
            deadline.extend(time.monotonic() - began)
        yield
