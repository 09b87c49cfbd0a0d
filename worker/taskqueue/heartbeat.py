"""Heartbeats from inside Celery: a consumer bootstep for workers, a scheduler for beat.

What a heartbeat is, and the probe that reads it, live in :mod:`worker.ops.health`;
this module only hooks the writing into Celery's own loops, so a heartbeat stops
when the loop that does the work stops (not when a side thread would).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from celery.beat import PersistentScheduler

from worker.context import get_context
from worker.ops.health import BEAT, beat, worker_name
from worker.taskqueue.timer_step import TimerStep

log = logging.getLogger(__name__)


class WorkerHeartbeat(TimerStep):
    """Consumer bootstep: a heartbeat every ``HATZ_HEARTBEAT_INTERVAL`` on the consumer's timer."""

    def ticker(self, parent: Any) -> tuple[float, Callable[[], None]]:
        """Every heartbeat interval; a failed write is logged, the next one retries."""
        ctx = get_context()
        name = worker_name(parent.hostname)
        interval = float(ctx.settings.heartbeat_interval)

        def tick() -> None:
            try:
                beat(ctx.redis, ctx.keys, name, interval, queues=consumed_queues(parent))
            except redis.RedisError as exc:
                log.warning("heartbeat not written: %s", exc)

        return interval, tick


def consumed_queues(consumer: Any) -> list[str]:
    """The names of the queues ``consumer`` takes messages from right now."""
    task_consumer = getattr(consumer, "task_consumer", None)
    queues = getattr(task_consumer, "queues", None) or ()
    return [str(q.name) for q in queues]


class HeartbeatScheduler(PersistentScheduler):  # type: ignore[misc]
    """Celery's default beat scheduler, plus a heartbeat from its loop."""

    _last_beat = 0.0

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Run due entries as usual; beat at most every interval; sleep no longer than it."""
        delay = float(super().tick(*args, **kwargs))  # Celery is untyped
        ctx = get_context()
        interval = ctx.settings.heartbeat_interval
        now = time.monotonic()
        if now - self._last_beat >= interval:
            try:
                beat(ctx.redis, ctx.keys, BEAT, interval)
                self._last_beat = now
            except redis.RedisError as exc:
                log.warning("beat heartbeat not written: %s", exc)
        return float(min(delay, interval))
