"""A consumer bootstep that runs one function on the consumer's timer.

Used by the worker heartbeat (:mod:`worker.ops.health`) and the parked-poll
dispatcher (:mod:`worker.taskqueue.poll_dispatcher`): both run in the worker's main process,
start once the worker consumes, and stop when the consumer stops or restarts
after a lost broker connection (Celery then starts them again).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from celery import bootsteps


class TimerStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs :meth:`ticker`'s function at start, then every interval, on the consumer's timer."""

    requires: ClassVar[set[str]] = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def ticker(self, parent: Any) -> tuple[float, Callable[[], None]]:
        """The interval (s) and the function to run; the function must not raise."""
        raise NotImplementedError

    def start(self, parent: Any) -> None:
        """Run now (the worker is consuming), then every interval."""
        interval, tick = self.ticker(parent)
        tick()
        self.tref = parent.timer.call_repeatedly(interval, tick)

    def stop(self, parent: Any) -> None:
        """Stop (shutdown, or the consumer restarts after a lost connection)."""
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop
