"""An interrupted creation: a batch left ``creating`` is abandoned and its held runs canceled.

A creation that dies half-way (a worker killed while a scheduled batch was
being created, a CLI interrupted) leaves a batch ``creating`` and some held
runs. The batch is indexed (and its runs listed in ``P:batch:<id>:created``)
from the start, so the batch sweep finds it: after :data:`CREATING_GRACE` it
is ``abandoned`` and those runs CANCELED (so they no longer hold its batch
key, and they expire like any ended run). The batch's record and lists then
expire after ``HATZ_RUN_RETENTION``, like a finished batch's
(:func:`expire_abandoned`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from worker.batches.records import batch_cas, text
from worker.context import Context
from worker.store.ledger import RunState

log = logging.getLogger(__name__)

#: A batch still ``creating`` this long after it started was interrupted: abandon it.
CREATING_GRACE = 600.0
#: The error recorded on an abandoned batch and on each of its canceled runs.
ABANDONED = "batch creation was interrupted; its runs were canceled"


def cancel_runs(ctx: Context, run_ids: Iterable[str]) -> None:
    """Cancel held runs that never got going (QUEUED only: anything else is left alone)."""
    for run_id in run_ids:
        ctx.ledger.cas(
            run_id, states={RunState.QUEUED}, to=RunState.CANCELED, fields={"error": ABANDONED}
        )


def expire_abandoned(ctx: Context, batch_id: str) -> None:
    """Give an abandoned batch's record and lists ``HATZ_RUN_RETENTION``; drop its creation list.

    Whatever a creation still pushed after the abandonment (its row and pending
    lists) goes with them.
    """
    keys, life = ctx.keys, ctx.settings.run_retention
    pipe = ctx.redis.pipeline(transaction=True)
    for key in (
        keys.batch(batch_id),
        keys.batch_rows(batch_id),
        keys.batch_pending(batch_id),
        keys.batch_inflight(batch_id),
    ):
        pipe.expire(key, life)
    pipe.delete(keys.batch_created(batch_id))
    pipe.execute()


def abandon_if_stale(ctx: Context, batch_id: str) -> bool:
    """Abandon a batch whose creation started over :data:`CREATING_GRACE` s ago; say if it did.

    The compare-and-set ``creating -> abandoned`` comes first, so a creation still
    finishing cannot revive the batch (its own last step is ``creating -> running``).
    """
    started = ctx.redis.hget(ctx.keys.batch(batch_id), "created_at")
    if started is None or ctx.clock() - float(text(started)) < CREATING_GRACE:
        return False
    fields = {"state": "abandoned", "finished_at": ctx.clock(), "error": ABANDONED}
    if not batch_cas(ctx, batch_id, {"state": ["creating"]}, fields):
        return False
    created = [text(r) for r in ctx.redis.lrange(ctx.keys.batch_created(batch_id), 0, -1)]
    cancel_runs(ctx, created)
    expire_abandoned(ctx, batch_id)
    ctx.redis.zrem(ctx.keys.active_batches, batch_id)
    log.warning("batch %s: %s (%d run(s))", batch_id, ABANDONED, len(created))
    return True
