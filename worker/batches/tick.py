"""The batch's one idempotent step: free slots of ended runs, release held runs, finish.

Releasing is one Lua script (:data:`_RELEASE`): while the batch's in-flight
set has fewer than ``max_in_flight`` members it moves the next pending run id
into that set, atomically, so concurrent releases never exceed the limit. The
released run is then scheduled and its ``hatz.submit`` published, and from
there it is an ordinary run: polling, callbacks and the sweeper just work.

:func:`worker.runs.finish.finish` publishes a tick whenever a batch run ends;
the periodic batch sweep ticks every active batch, which recovers a tick lost
to a crash (a slot is never lost: the in-flight set is re-derived from the run
records). Finishing is a compare-and-set (``running -> finished``), so the
batch-level ``batch.completed`` callback is queued exactly once.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from worker import task_names
from worker.batches.abandon import abandon_if_stale
from worker.batches.records import batch_cas, get_record, row_run_ids, run_states, text
from worker.batches.status import count_states
from worker.context import Context
from worker.runs.submit import submit_hint
from worker.store.ledger import RunState
from worker.store.outbox import Next
from worker.webhooks.batch_delivery import rearm_batch_callbacks, schedule_batch_callback

log = logging.getLogger(__name__)

#: Held runs are due this far in the future: never re-armed before release.
HELD_FOR = 10 * 365 * 86400.0
#: After release, the sweeper may re-arm the run's submit this long after it was due.
_FIRST_DUE_IN = 60.0

# KEYS: pending list, in-flight set. ARGV: max in flight.
# Returns the released run id, or false when the batch is full or nothing is pending.
_RELEASE = """
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[1]) then return false end
local run_id = redis.call('LPOP', KEYS[1])
if not run_id then return false end
redis.call('SADD', KEYS[2], run_id)
return run_id
"""


def tick(ctx: Context, batch_id: str) -> list[Next]:
    """The batch's one idempotent step: free slots of ended runs, release, maybe finish.

    Safe to run any number of times, concurrently: slots are taken by
    :data:`_RELEASE` atomically and given back by removing a run that the
    ledger says is terminal. Returns the submits (and the batch callback) to publish.
    """
    keys = ctx.keys
    state = ctx.redis.hget(keys.batch(batch_id), "state")
    if state is None or text(state) != "running":
        if state is not None and text(state) == "creating":
            abandon_if_stale(ctx, batch_id)
        elif state is None or text(state) in ("finished", "abandoned"):
            ctx.redis.zrem(keys.active_batches, batch_id)
        return []
    steps = _prune(ctx, batch_id) + _release(ctx, batch_id)
    if ctx.redis.llen(keys.batch_pending(batch_id)) == 0 and not ctx.redis.scard(
        keys.batch_inflight(batch_id)
    ):
        steps += _finish(ctx, batch_id)
    return steps


def sweep_batches(ctx: Context, *, limit: int = 200) -> list[Next]:
    """Tick every active batch (beat, every ``HATZ_SWEEP_INTERVAL``): recovers lost ticks;
    and re-arm batch callbacks whose delivery is overdue (lost)."""
    steps: list[Next] = []
    for batch_id in ctx.redis.zrange(ctx.keys.active_batches, 0, limit - 1):
        steps += tick(ctx, text(batch_id))
    return steps + rearm_batch_callbacks(ctx, limit=limit)


def _prune(ctx: Context, batch_id: str) -> list[Next]:
    """Free the slots of in-flight runs that ended; make due a released run still held."""
    inflight_key = ctx.keys.batch_inflight(batch_id)
    steps: list[Next] = []
    inflight = [text(m) for m in ctx.redis.smembers(inflight_key)]
    held_after = ctx.clock() + HELD_FOR / 2
    for run_id, run_state in zip(inflight, run_states(ctx, inflight), strict=True):
        if run_state is None or run_state.is_terminal:
            ctx.redis.srem(inflight_key, run_id)
        elif run_state is RunState.QUEUED:
            # Released, but the process died before making it due: do it now.
            run = ctx.ledger.get(run_id)
            if run is not None and float(run.get("next_at") or 0) > held_after:
                step = _schedule_release(ctx, run_id)
                steps += [step] if step else []
    return steps


def _release(ctx: Context, batch_id: str) -> list[Next]:
    """Move pending runs into the free slots, atomically; their submits."""
    keys = ctx.keys
    limit = int(ctx.redis.hget(keys.batch(batch_id), "max_in_flight") or 1)
    release = ctx.redis.register_script(_RELEASE)
    steps: list[Next] = []
    while True:
        released = release(
            keys=[keys.batch_pending(batch_id), keys.batch_inflight(batch_id)], args=[limit]
        )
        if not released:
            return steps
        run_id = text(released)
        step = _schedule_release(ctx, run_id)
        if step is None:  # ended while pending (canceled): give the slot straight back
            ctx.redis.srem(keys.batch_inflight(batch_id), run_id)
            continue
        steps.append(step)


def _schedule_release(ctx: Context, run_id: str) -> Next | None:
    """Make a released (held) run due now; its submit task, or None if it already ended."""
    result = ctx.ledger.cas(
        run_id, states={RunState.QUEUED}, next_at=ctx.clock() + _FIRST_DUE_IN, return_record=True
    )
    if not result or result.record is None:
        return None
    return Next(task_names.SUBMIT, (run_id, result.record.token, submit_hint(result.record)))


def _finish(ctx: Context, batch_id: str) -> list[Next]:
    """Close a batch whose runs all ended (``running -> finished``, once); its callback
    and a schedule firing queued behind it."""
    states = run_states(ctx, row_run_ids(ctx, batch_id))
    if any(s is not None and not s.is_terminal for s in states):
        return []  # a run is still going (e.g. released by another tick just now)
    counts = count_states(states)
    record = get_record(ctx, batch_id)
    has_callback = bool(record.get("callback_url"))
    fields: dict[str, Any] = {"state": "finished", "finished_at": ctx.clock(), "counts": counts}
    if has_callback:
        fields["callback_state"] = "pending"
        # On the callback schedule first: a crash after the compare-and-set below
        # leaves a due callback the sweep re-arms, never one nobody sends.
        schedule_batch_callback(ctx, batch_id)
    if not batch_cas(ctx, batch_id, {"state": ["running"]}, fields):
        return []  # another tick finished it first
    ctx.redis.zrem(ctx.keys.active_batches, batch_id)
    ctx.redis.expire(ctx.keys.batch(batch_id), ctx.settings.run_retention)
    ctx.redis.expire(ctx.keys.batch_rows(batch_id), ctx.settings.run_retention)
    log.info("batch %s finished: %s", batch_id, json.dumps(counts, sort_keys=True))
    steps: list[Next] = []
    if has_callback:
        steps.append(Next(task_names.DELIVER_BATCH_CALLBACK, (batch_id, 0)))
    schedule = str(record.get("schedule") or "")
    # A firing of this schedule queued behind this batch (overlap "queue") goes now;
    # HDEL is atomic, so exactly one finisher sends it.
    if schedule and ctx.redis.hdel(ctx.keys.schedule_state(schedule), "queued"):
        steps.append(Next(task_names.FIRE_SCHEDULE, (schedule, "queued")))
    return steps
