"""A job a console process runs every few seconds on a daemon thread (reconciler, watch window, reaper)."""

from __future__ import annotations

import logging
import threading
from typing import Self

logger = logging.getLogger(__name__)


class PeriodicTask:
    """Runs :meth:`run_once` every ``interval_s`` on a daemon thread named ``name`` until :meth:`stop`.

    An error in one round is logged and the next round runs anyway: these jobs keep the console serving.
    Tests call :meth:`run_once` directly.
    """

    def __init__(self, interval_s: float, *, name: str) -> None:
        self.interval_s, self.name = interval_s, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> object:
        """One round of the job; subclasses say what it does and what it returns."""
        raise NotImplementedError

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
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # a bug in one round must not end the job for the rest of the process's life
                logger.exception("%s: unexpected error", self.name)
