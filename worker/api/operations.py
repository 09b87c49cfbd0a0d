"""The Python API for operators: dead letters and their replay, the breaker, the API budget,
heartbeats, queue depths and counts of runs by state.

What the web console (``worker/console/``) and any other operator tool read
and do, so they need not reach into the run steps, the webhooks or Celery.

>>> from worker.api.operations import dead_letters, replay_dead_letter
>>> for letter in dead_letters():
...     replay_dead_letter(letter.kind, letter.id)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from celery import Celery

from worker import task_names
from worker.batches.records import get_record, list_batches
from worker.batches.results import result_rows
from worker.batches.status import BatchStatus, batch_status
from worker.context import Context, get_context
from worker.errors import BatchNotFoundError, CallbackReplayError, RunNotFoundError
from worker.limits.breaker import breaker_state
from worker.ops import health
from worker.ops.metrics import state_counter_field
from worker.store.ledger import ACTIVE_STATES, RunState
from worker.webhooks.batch_delivery import (
    BATCH_EVENT,
    failed_batch_callbacks,
    replay_batch_callback,
)
from worker.webhooks.delivery import failed_callbacks, replay_callback

DeadLetterKind = Literal["run", "batch"]

# KEYS: run hashes. Returns state, count, state, count, ... over them (one round trip
# instead of one HGET per run in flight).
_COUNT_STATES = """
local counts = {}
for _, key in ipairs(KEYS) do
  local state = redis.call('HGET', key, 'state')
  if state then counts[state] = (counts[state] or 0) + 1 end
end
local out = {}
for state, n in pairs(counts) do
  out[#out + 1] = state
  out[#out + 1] = n
end
return out
"""
_COUNT_CHUNK = 2000


@dataclass(frozen=True)
class DeadLetter:
    """A callback given up on: a run's (``P:callbacks:failed``) or a batch's."""

    kind: DeadLetterKind
    id: str
    failed_at: float
    url: str
    event: str
    error: str
    attempts: int
    last_attempt: dict[str, Any] | None


def dead_letters(*, context: Context | None = None, limit: int = 1000) -> list[DeadLetter]:
    """Every dead-lettered run callback and failed batch callback, oldest first.

    URLs are shown without their query string (it may hold a secret).
    """
    ctx = context or get_context()
    found: list[DeadLetter] = []
    for failed in failed_callbacks(ctx, limit=limit):
        found.append(
            DeadLetter(
                kind="run",
                id=failed.run_id,
                failed_at=failed.failed_at,
                url=failed.url,
                event=failed.event,
                error=failed.error,
                attempts=failed.attempts,
                last_attempt=failed.last_attempt,
            )
        )
    for letter in failed_batch_callbacks(ctx, limit=limit):
        found.append(
            DeadLetter(
                kind="batch",
                id=letter.batch_id,
                failed_at=letter.failed_at,
                url=letter.url,
                event=BATCH_EVENT,
                error=letter.error,
                attempts=letter.attempts,
                last_attempt=letter.last_attempt,
            )
        )
    return sorted(found, key=lambda d: d.failed_at)


def replay_dead_letter(
    kind: DeadLetterKind,
    letter_id: str,
    *,
    context: Context | None = None,
    celery: Celery | None = None,
) -> None:
    """Re-send one dead-lettered callback (same ``webhook-id``, fresh signature).

    Raises :class:`~worker.errors.CallbackReplayError` when it is not dead-lettered
    (any more), :class:`~worker.errors.RunNotFoundError` or
    :class:`~worker.errors.BatchNotFoundError` when unknown.
    """
    ctx = context or get_context()
    steps = (
        replay_callback(ctx, letter_id) if kind == "run" else replay_batch_callback(ctx, letter_id)
    )
    from worker.taskqueue.app import publish

    publish(steps, celery)


def replay_all(*, context: Context | None = None, celery: Celery | None = None) -> dict[str, str]:
    """Replay every dead letter; ``{id: "queued" | why not}``."""
    ctx = context or get_context()
    outcome: dict[str, str] = {}
    for letter in dead_letters(context=ctx):
        try:
            replay_dead_letter(letter.kind, letter.id, context=ctx, celery=celery)
        except (CallbackReplayError, RunNotFoundError, BatchNotFoundError) as exc:
            outcome[letter.id] = str(exc)
        else:
            outcome[letter.id] = "queued"
    return outcome


def breaker(*, context: Context | None = None) -> dict[str, Any]:
    """The credit-overage breaker: ``state`` and, while open, ``retry_in``, ``last_error``..."""
    return breaker_state(context or get_context())


def api_budget(*, context: Context | None = None) -> dict[str, float]:
    """The shared Hatz API budget: ``rate`` (requests/s, 0 = none) and ``tokens`` left."""
    ctx = context or get_context()
    raw = ctx.redis.hget(ctx.keys.api_budget, "tokens")
    return {
        "rate": float(ctx.settings.api_max_rps),
        "tokens": float(raw) if raw is not None else float(ctx.settings.api_max_rps),
    }


def heartbeats(*, context: Context | None = None) -> list[health.Heartbeat]:
    """Every worker and beat heartbeat present, with its age in seconds."""
    ctx = context or get_context()
    return health.all_heartbeats(ctx.redis, ctx.keys)


def queue_depths(*, context: Context | None = None) -> dict[str, int]:
    """Messages waiting on each Celery queue, plus polls parked in Redis and runs scheduled."""
    ctx = context or get_context()
    pipe = ctx.redis.pipeline(transaction=False)
    for queue in task_names.ALL_QUEUES:
        pipe.llen(queue)
    pipe.zcard(ctx.keys.parked)
    pipe.zcard(ctx.keys.schedule)
    sizes = [int(n) for n in pipe.execute()]
    depths = dict(zip(task_names.ALL_QUEUES, sizes, strict=False))
    depths["parked polls"] = sizes[-2]
    depths["scheduled runs"] = sizes[-1]
    return depths


def state_counts(*, context: Context | None = None, max_active: int = 50_000) -> dict[str, int]:
    """Runs by state: non-terminal ones counted from the schedule (at most ``max_active``
    read), terminal ones from the counters every state change adds to (since Redis began).
    """
    ctx = context or get_context()
    counts = dict.fromkeys((s.value for s in RunState), 0)
    ids = [_text(i) for i in ctx.redis.zrange(ctx.keys.schedule, 0, max_active - 1)]
    script = ctx.redis.register_script(_COUNT_STATES)
    for start in range(0, len(ids), _COUNT_CHUNK):
        keys = [ctx.keys.run(i) for i in ids[start : start + _COUNT_CHUNK]]
        found = script(keys=keys)
        for state, n in zip(found[::2], found[1::2], strict=True):
            if RunState(_text(state)) in ACTIVE_STATES:
                counts[_text(state)] += int(n)
    fields = [state_counter_field(s) for s in RunState if s not in ACTIVE_STATES]
    totals = ctx.redis.hmget(ctx.keys.metrics, fields)
    for state, total in zip((s for s in RunState if s not in ACTIVE_STATES), totals, strict=True):
        counts[state.value] = int(float(total or 0))
    return counts


def recent_batches(*, context: Context | None = None, limit: int = 50) -> list[BatchStatus]:
    """The newest batches with live counts, newest first."""
    ctx = context or get_context()
    found = []
    for record in list_batches(ctx, limit=limit):
        try:
            found.append(batch_status(ctx, str(record["batch_id"])))
        except BatchNotFoundError:
            continue
    return found


def batch_rows(batch_id: str, *, context: Context | None = None) -> list[dict[str, Any]]:
    """One dict per row of a batch, in row order (row, run_id, status, error, outputs...)."""
    return result_rows(context or get_context(), batch_id)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class CallbackOutcome:
    """Where a (replayed) callback stands: ``delivered``, ``pending``, ``retrying``,
    ``failed``... and its last attempt."""

    kind: DeadLetterKind
    id: str
    state: str
    last_attempt: dict[str, Any] | None

    @property
    def settled(self) -> bool:
        """True once it was delivered or given up on again."""
        return self.state in ("delivered", "failed", "skipped", "unknown")


def callback_outcome(
    kind: DeadLetterKind, letter_id: str, *, context: Context | None = None
) -> CallbackOutcome:
    """The callback state of a run or batch and its last attempt (``unknown`` if expired)."""
    ctx = context or get_context()
    record: dict[str, Any] | None
    if kind == "run":
        record = ctx.ledger.get(letter_id)
    else:
        try:
            record = get_record(ctx, letter_id)
        except BatchNotFoundError:
            record = None
    if record is None:
        return CallbackOutcome(kind, letter_id, "unknown", None)
    attempts = list(record.get("callback_attempts") or [])
    state = str(record.get("callback_state") or "none")
    return CallbackOutcome(kind, letter_id, state, attempts[-1] if attempts else None)
