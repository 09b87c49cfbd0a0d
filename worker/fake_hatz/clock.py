"""Clocks: the fake reads time through one callable so tests can freeze it.

Job progress, timestamps, presigned-URL expiry and the call log all use the
clock given to :class:`~worker.fake_hatz.FakeHatz` (``time.time`` by default).
A :class:`ManualClock` makes job progress and URL expiry fully deterministic;
injected latency and hangs still use real time, since they delay real sockets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: A callable returning the current time as Unix epoch seconds.
Clock = Callable[[], float]


class ManualClock:
    """A clock that moves only when told to; safe to share between threads.

    >>> clock = ManualClock(start=1_700_000_000.0)
    >>> clock.advance(1.5)
    1700000001.5
    """

    def __init__(self, start: float | None = None) -> None:
        """Start at ``start`` epoch seconds, or at the current wall time."""
        self._now = time.time() if start is None else float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """Return the current (frozen) time in epoch seconds."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` (never backwards) and return the new time."""
        if seconds < 0:
            raise ValueError("a ManualClock cannot go backwards")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now: float) -> None:
        """Jump to ``now`` epoch seconds, which must not be earlier than the current time."""
        with self._lock:
            if now < self._now:
                raise ValueError("a ManualClock cannot go backwards")
            self._now = float(now)
