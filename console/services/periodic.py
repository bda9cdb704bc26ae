"""A job a console process runs every few seconds on a daemon thread (reconciler, watch window, reaper).

Some jobs must run once per interval however many console replicas share the database (checkpoints, retention,
the watch window, canary decisions): they pass ``job=`` and take a lease on their ``job_runs`` row before each
round (:mod:`db.jobs`). Others are per process by nature and take none: a reconciler drives its own process's
engine towards the desired version, a health sampler samples its own engine, a compare reaper ends its own
child engines; every replica must run those.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from db import jobs
from db.types import utcnow

if TYPE_CHECKING:
    from db.database import Database

logger = logging.getLogger(__name__)

# A crashed holder's lease runs out after this long at least (a live holder frees it at the end of each round).
MIN_LEASE_S = 60.0


@dataclass(frozen=True)
class Round:
    """What :meth:`PeriodicTask.run_round` did: whether this process ran the round, and what it returned."""

    ran: bool
    result: object = None


class PeriodicTask:
    """Runs :meth:`run_once` every ``interval_s`` on a daemon thread named ``name`` until :meth:`stop`.

    With ``job`` (a ``job_runs`` name) and ``db``, a round runs only in the replica that claims the job's lease for
    this interval (:meth:`run_round`); the others skip it. ``lease_s`` (default: the interval, at least a minute)
    is how long a holder that dies mid-round keeps the job from the others. ``tick_s`` (default: the interval) is
    how often the thread tries a round: a leased job with a long interval ticks more often, so its first round comes
    a tick after start and a replica restarted more often than the interval still runs it when it is due (the lease
    row remembers when the job last ran anywhere).

    An error in one round is logged and the next round runs anyway: these jobs keep the console serving.
    Tests call :meth:`run_once` directly for one round's work (it never claims), or :meth:`run_round` for the lease.
    """

    def __init__(self, interval_s: float, *, name: str, job: str | None = None, db: Database | None = None,
                 lease_s: float | None = None, tick_s: float | None = None) -> None:
        if job is not None and db is None:
            raise ValueError("a job that runs once across replicas needs the database its lease is in")
        self.interval_s, self.name = interval_s, name
        self.job, self.db = job, db
        self.lease_s = max(interval_s, MIN_LEASE_S) if lease_s is None else lease_s
        self.tick_s = interval_s if tick_s is None else tick_s
        self.holder = jobs.holder_id()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> object:
        """One round of the job; subclasses say what it does and what it returns."""
        raise NotImplementedError

    def run_round(self) -> Round:
        """One tick of the thread: :meth:`run_once`, in this replica only if it claims the job for this interval."""
        if self.job is None or self.db is None:
            return Round(True, self.run_once())
        if not jobs.claim(self.db, self.job, holder=self.holder, interval_s=self.interval_s, lease_s=self.lease_s,
                          now=utcnow()):
            return Round(False)
        try:
            return Round(True, self.run_once())
        finally:
            try:
                jobs.finish(self.db, self.job, holder=self.holder, now=utcnow())
            except Exception:  # the lease then expires on its own; the round's own error (if any) is the one to see
                logger.exception("%s: could not release the lease on %s", self.name, self.job)

    def start(self) -> Self:
        """Start the rounds on a daemon thread; returns the task."""
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the rounds (the one under way finishes first, up to a few seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.run_round()
            except Exception:  # a bug in one round must not end the job for the rest of the process's life
                logger.exception("%s: unexpected error", self.name)
