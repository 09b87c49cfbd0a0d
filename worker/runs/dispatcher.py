"""The dispatcher: turns parked polls into countdown messages once they are near.

A countdown message is held by a worker, unacknowledged, from the moment the
worker fetches it until it is due: about 10 KB of the worker's RAM and 1.4 KB
of Redis (kombu's ``unacked`` hash and index) per message. 10,000 runs polling
every 60 s would keep 10,000 of them alive all the time, and a SIGKILLed worker
would strand all of them until ``visibility_timeout``.

So a poll due further off than ``HATZ_COUNTDOWN_HORIZON`` is *parked*: the
ledger's reschedule compare-and-set puts the run in ``Keys.parked`` (a zset
entry scored by when the poll is due) instead of publishing anything. Every
worker's main process runs :func:`dispatch_due` on its consumer timer
(:class:`worker.taskqueue.poll_dispatcher.PollDispatcher`): each
tick it takes the parked runs now within the horizon off that zset
(:meth:`~worker.store.ledger.Ledger.pop_parked`, one atomic script, so two workers
never both take one) and publishes their polls with the remaining countdown.
Polls still reach the pool as countdowns and run on time; only the long wait
moved from a message to a zset entry.

Failure cases: a worker that dies between the pop and the publish leaves the
run's ``next_at`` in the schedule, and the sweeper re-arms it after
``HATZ_SWEEP_GRACE`` like any lost countdown. A published poll carries the
run's current token; if the run moved on meanwhile (cancel, sweeper re-arm),
the poll is a stale message and does nothing, as always.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from config import Settings
from worker import task_names
from worker.context import Context
from worker.runs.poll_hints import HINT_SOURCES, poll_hint
from worker.store.ledger import POLLING_STATES
from worker.store.outbox import Next, Outbox, send_step

#: Runs taken off the parked zset per script call.
BATCH = 1000


def tick_interval(settings: Settings) -> float:
    """How often a worker looks for parked polls: well inside the horizon, at most 1 s."""
    horizon = settings.countdown_horizon
    return min(1.0, horizon / 4) if horizon > 0 else 1.0


def publish_batched(
    celery: Any, steps: Sequence[Next], *, outbox: Outbox | None = None, redis: Any = None
) -> None:
    """Publish ``steps`` in one Redis round trip: with an ``outbox`` (and the broker's
    ``redis``), as its messages ``LPUSH``ed in one pipeline; otherwise through one
    producer in kombu's ``Producer.batch`` (kombu >= 5.7). The main process's event
    loop waits on one round trip per tick instead of one per poll."""
    pushes = outbox.encode(steps) if outbox is not None and redis is not None else None
    if pushes is not None:
        pipe = redis.pipeline(transaction=False)
        for queue, payload in pushes:
            pipe.lpush(queue, payload)
        pipe.execute()
        return
    with celery.producer_or_acquire() as producer:
        batch = getattr(producer, "batch", None)
        with batch() if batch is not None else contextlib.nullcontext():
            for step in steps:
                send_step(celery, step, producer)


def dispatch_due(
    ctx: Context, publish: Callable[[Sequence[Next]], None], *, batch: int = BATCH
) -> int:
    """Publish every parked poll due within the horizon as a countdown; return how many.

    With the horizon set to 0 (parking off), runs parked before the change are
    still published, when due.
    """
    now = ctx.clock()
    window_end = now + max(0.0, ctx.settings.countdown_horizon)
    published = 0
    while True:
        popped = ctx.ledger.pop_parked(window_end, limit=batch, fields=HINT_SOURCES)
        steps = [
            Next(task_names.POLL, (run_id, run.token, poll_hint(run)), max(0.0, due - now))
            for run_id, due, run in popped
            if run and run.state in POLLING_STATES  # not ended or canceled since
        ]
        if steps:
            publish(steps)
        published += len(steps)
        if len(popped) < batch:
            return published
