"""The parked-poll dispatcher as a consumer bootstep of every worker's main process.

What it does is :func:`worker.runs.dispatcher.dispatch_due` (see that module);
this is only how Celery runs it: on the consumer's timer, every
:func:`~worker.runs.dispatcher.tick_interval`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from worker.context import get_context
from worker.runs.dispatcher import dispatch_due, publish_batched, tick_interval
from worker.store.outbox import Next, Outbox
from worker.taskqueue.timer_step import TimerStep

#: Under the dispatcher's name, as before it became a module of its own.
log = logging.getLogger("worker.runs.dispatcher")


class PollDispatcher(TimerStep):
    """Consumer bootstep: :func:`dispatch_due` on the consumer's timer."""

    def ticker(self, parent: Any) -> tuple[float, Callable[[], None]]:
        """Every :func:`tick_interval`; a failed tick is logged and the next one retries."""
        ctx = get_context()
        celery = parent.app
        outbox = Outbox(celery)  # this process's own: messages name their origin

        def publish(steps: Sequence[Next]) -> None:
            publish_batched(celery, steps, outbox=outbox, redis=ctx.redis)

        def tick() -> None:
            try:
                dispatch_due(ctx, publish)
            except Exception as exc:  # never stop the timer; the next tick retries
                log.warning("dispatcher: parked polls not published this tick: %s", exc)

        return tick_interval(ctx.settings), tick
