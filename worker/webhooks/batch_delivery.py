"""The ``batch.completed`` callback: build it, then deliver it the way run callbacks go.

One delivery path with run callbacks (:mod:`worker.webhooks.delivery`): the
same guarded send (the host resolved, every address checked, the connection
pinned to the checked one; no proxy, no redirects, a total deadline), the same
retry schedule (``HATZ_CALLBACK_RETRY_DELAYS``, jittered, ``Retry-After``
honoured), the same dead letters (listed by ``hatz-worker callbacks failed``,
re-sent by ``callbacks replay``) with the same ``webhook-id`` on every attempt.

Exactly once in effect: a delivery claims the batch by moving its
``callback_token`` ``t -> t+1`` before sending and records the outcome on
``t+1``, so a duplicated or stale task never delivers twice.

Nothing is lost between steps. While the callback is due, the batch sits on
``P:batch-callbacks`` scored by when its next delivery is due: put there
before the batch is marked finished, moved by the same compare-and-set that
claims a delivery (to the end of its lease) or schedules a retry, and taken
off by the one that records it delivered or dead-lettered. The batch sweep
(:func:`rearm_batch_callbacks`) re-arms a batch overdue by more than
``HATZ_SWEEP_GRACE``: a crash between finishing the batch and publishing its
delivery, a worker killed mid-send, a retry longer than a countdown may be.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker import task_names
from worker.batches.records import batch_cas, get_record, text
from worker.batches.results import result_rows
from worker.context import Context
from worker.errors import BatchNotFoundError, CallbackReplayError
from worker.ops.redaction import safe_url
from worker.store.ledger import RunState
from worker.store.outbox import Next
from worker.webhooks.delivery import (
    PICKUP_GRACE,
    Outcome,
    delivery_lease,
    encode,
    retry_delay,
    send,
)
from worker.webhooks.ssrf import Resolver

log = logging.getLogger(__name__)

BATCH_EVENT = "batch.completed"
_MAX_SUMMARY_FAILURES = 50
_MAX_ATTEMPTS_KEPT = 20
#: Callback states in which the batch's chain still has work (the sweep re-arms these).
ACTIVE_STATES = ("pending", "sending", "retrying")


def build_batch_event(ctx: Context, batch_id: str) -> dict[str, Any]:
    """The ``batch.completed`` body: counts and failed rows' errors; no document links."""
    record = get_record(ctx, batch_id)
    failures: list[dict[str, Any]] = []
    for row in result_rows(ctx, batch_id):
        if row["status"] != RunState.COMPLETED.value and len(failures) < _MAX_SUMMARY_FAILURES:
            failures.append(
                {
                    "row": row["row"],
                    "run_id": row["run_id"],
                    "status": row["status"].lower(),
                    "error": row.get("error") or None,
                }
            )
    finished = float(record.get("finished_at") or ctx.clock())
    return {
        "type": BATCH_EVENT,
        "timestamp": datetime.fromtimestamp(finished, UTC).isoformat(),
        "data": {
            "batch_id": batch_id,
            "app_id": record.get("app_id"),
            "schedule": record.get("schedule") or None,
            "batch_key": record.get("batch_key") or None,
            "counts": {**(record.get("counts") or {}), "skipped": int(record.get("skipped") or 0)},
            "bad_rows": [b["row"] for b in record.get("bad_rows") or []],
            "created_at": record.get("created_at"),
            "finished_at": record.get("finished_at"),
            "failures": failures,
        },
    }


def webhook_id(batch_id: str) -> str:
    """The ``webhook-id`` of a batch's callback: the same on every attempt and replay."""
    return f"msg_batch_{batch_id}_completed"


def schedule_batch_callback(ctx: Context, batch_id: str) -> None:
    """Put a finishing batch's callback on the schedule, before the batch says it is due.

    A crash after this leaves an entry the sweep drops (the callback is not due
    yet); a crash after the batch is marked finished leaves one it re-arms.
    """
    ctx.redis.zadd(ctx.keys.batch_callbacks, {batch_id: ctx.clock() + PICKUP_GRACE})


def deliver_batch_callback(
    ctx: Context, batch_id: str, token: int, *, resolver: Resolver | None = None
) -> list[Next]:
    """One delivery attempt of the batch's callback; the retry to publish, if any.

    2xx: delivered. A retryable failure schedules a retry per
    ``HATZ_CALLBACK_RETRY_DELAYS`` (delays longer than a countdown may be wait on
    ``P:batch-callbacks`` for the sweep); anything else, or retries exhausted,
    dead-letters it.
    """
    lease = delivery_lease(ctx)
    claimed = batch_cas(
        ctx,
        batch_id,
        {"callback_token": [str(token)], "callback_state": ["pending", "retrying"]},
        {"callback_token": token + 1, "callback_state": "sending"},
        schedule=ctx.keys.batch_callbacks,
        due_at=ctx.clock() + lease,
    )
    if not claimed:
        return []
    token += 1
    record = get_record(ctx, batch_id)
    url = str(record.get("callback_url") or "")
    body = encode(build_batch_event(ctx, batch_id))
    outcome = send(ctx, url, webhook_id(batch_id), body, resolver=resolver)
    ctx.metrics.callback_attempt(outcome.status)
    tries = int(record.get("callback_tries") or 0) + 1
    attempts = [*(record.get("callback_attempts") or []), _attempt(ctx, outcome)]
    attempt = _BatchAttempt(batch_id, token, tries, attempts[-_MAX_ATTEMPTS_KEPT:], safe_url(url))
    if outcome.ok:
        _record(ctx, attempt, {"callback_state": "delivered", "callback_error": ""}, None)
        ctx.redis.zrem(ctx.keys.failed_batch_callbacks, batch_id)
        log.info("batch %s: callback delivered to %s (%s)", batch_id, attempt.where, outcome.status)
        return []
    if outcome.retryable and tries < len(ctx.settings.callback_retry_delays):
        return _retry(ctx, attempt, outcome, lease)
    _dead_letter(ctx, attempt, outcome)
    return []


@dataclass(frozen=True)
class _BatchAttempt:
    """One delivery attempt, as the steps after the send see it."""

    batch_id: str
    token: int
    tries: int
    attempts: list[dict[str, Any]]
    where: str  # the URL, redacted for logs


def _attempt(ctx: Context, outcome: Outcome) -> dict[str, Any]:
    """The attempt as the batch record keeps it: when, and the status or the error."""
    answer = {"status": outcome.status} if outcome.status else {"error": outcome.error}
    return {"at": ctx.clock(), "latency_ms": outcome.latency_ms, **answer}


def _record(
    ctx: Context, attempt: _BatchAttempt, fields: dict[str, Any], due_at: float | None
) -> bool:
    """Record the attempt on the token it claimed; on the schedule until ``due_at`` (or off)."""
    return batch_cas(
        ctx,
        attempt.batch_id,
        {"callback_token": [str(attempt.token)]},
        {
            **fields,
            "callback_tries": attempt.tries,
            "callback_rearms": 0,
            "callback_attempts": attempt.attempts,
        },
        schedule=ctx.keys.batch_callbacks,
        due_at=due_at,
    )


def _retry(ctx: Context, attempt: _BatchAttempt, outcome: Outcome, lease: float) -> list[Next]:
    """Record a retryable failure; the retry as a countdown, or left to the sweep when long."""
    delay = retry_delay(ctx, attempt.tries, outcome)
    held = delay <= ctx.settings.max_countdown()
    due_at = ctx.clock() + delay + (lease if held else 0.0)
    if not _record(ctx, attempt, {"callback_state": "retrying"}, due_at):
        return []  # the sweep re-armed the chain meanwhile: its task carries on
    log.warning(
        "batch %s: callback to %s failed (attempt %d: %s); retry in %.1f s",
        attempt.batch_id,
        attempt.where,
        attempt.tries,
        outcome.summary(),
        delay,
    )
    if not held:
        return []
    return [Next(task_names.DELIVER_BATCH_CALLBACK, (attempt.batch_id, attempt.token), delay)]


def _dead_letter(ctx: Context, attempt: _BatchAttempt, outcome: Outcome) -> None:
    """Give the callback up: list it as a dead letter first, then record it failed."""
    error = f"{outcome.summary()} after {attempt.tries} attempt(s)"
    ctx.redis.zadd(ctx.keys.failed_batch_callbacks, {attempt.batch_id: ctx.clock()})
    fields = {"callback_state": "failed", "callback_error": error}
    if _record(ctx, attempt, fields, None):
        log.error(
            "batch %s: callback to %s dead-lettered: %s", attempt.batch_id, attempt.where, error
        )


# --- the sweep ----------------------------------------------------------------------------


def rearm_batch_callbacks(ctx: Context, *, limit: int = 200) -> list[Next]:
    """Re-arm batch callbacks overdue by more than ``HATZ_SWEEP_GRACE`` (the batch sweep).

    A bumped token retires the lost task should it ever surface. A chain the
    sweep had to re-arm ``HATZ_INTERNAL_ERROR_LIMIT`` times without an attempt
    being recorded (its task keeps dying) is dead-lettered instead.
    """
    s = ctx.settings
    now = ctx.clock()
    overdue = ctx.redis.zrangebyscore(
        ctx.keys.batch_callbacks, "-inf", now - s.sweep_grace, start=0, num=limit
    )
    steps: list[Next] = []
    for raw in overdue:
        batch_id = text(raw)
        try:
            record = get_record(ctx, batch_id)
        except BatchNotFoundError:
            ctx.redis.zrem(ctx.keys.batch_callbacks, batch_id)
            continue
        steps += _rearm_one(ctx, batch_id, record)
    return steps


def _rearm_one(ctx: Context, batch_id: str, record: dict[str, Any]) -> list[Next]:
    state = str(record.get("callback_state") or "")
    token = int(record.get("callback_token") or 0)
    condition = {"callback_token": [str(token)], "callback_state": [state]}
    schedule = ctx.keys.batch_callbacks
    if state not in ACTIVE_STATES:
        # Delivered, dead-lettered, or not due yet (its batch is still running).
        batch_cas(ctx, batch_id, condition, {}, schedule=schedule, due_at=None)
        return []
    rearms = int(record.get("callback_rearms") or 0) + 1
    if rearms > ctx.settings.internal_error_limit:
        error = f"gave up: the delivery task was lost {rearms - 1} times in a row"
        ctx.redis.zadd(ctx.keys.failed_batch_callbacks, {batch_id: ctx.clock()})
        fields = {"callback_state": "failed", "callback_error": error, "callback_token": token + 1}
        batch_cas(ctx, batch_id, condition, fields, schedule=schedule, due_at=None)
        log.error("batch %s: callback dead-lettered: %s", batch_id, error)
        return []
    fields = {
        "callback_token": token + 1,
        "callback_state": "pending" if state == "pending" else "retrying",
        "callback_rearms": rearms,
    }
    due_at = ctx.clock() + ctx.settings.sweep_grace + delivery_lease(ctx)
    if not batch_cas(ctx, batch_id, condition, fields, schedule=schedule, due_at=due_at):
        return []
    log.warning("batch %s: callback delivery lost; re-armed (%d)", batch_id, rearms)
    return [Next(task_names.DELIVER_BATCH_CALLBACK, (batch_id, token + 1))]


# --- dead letters and replay ----------------------------------------------------------------


@dataclass(frozen=True)
class FailedBatchCallback:
    """A dead-lettered batch callback, as ``hatz-worker callbacks failed`` lists it."""

    batch_id: str
    failed_at: float
    url: str
    webhook_id: str
    error: str
    attempts: int
    batch_state: str
    #: The last delivery attempt as recorded; not in :meth:`as_dict` (see FailedCallback).
    last_attempt: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "batch_id": self.batch_id,
            "failed_at": self.failed_at,
            "url": self.url,
            "event": BATCH_EVENT,
            "webhook_id": self.webhook_id,
            "error": self.error,
            "attempts": self.attempts,
            "batch_state": self.batch_state,
        }


def failed_batch_callbacks(ctx: Context, *, limit: int = 1000) -> list[FailedBatchCallback]:
    """Dead-lettered batch callbacks, oldest first, with the last error (URLs without query)."""
    rows: list[tuple[Any, float]] = list(
        ctx.redis.zrange(ctx.keys.failed_batch_callbacks, 0, limit - 1, withscores=True)  # type: ignore[arg-type]
    )
    found: list[FailedBatchCallback] = []
    for raw_id, score in rows:
        batch_id = text(raw_id)
        try:
            record = get_record(ctx, batch_id)
        except BatchNotFoundError:  # expired: nothing left to replay
            ctx.redis.zrem(ctx.keys.failed_batch_callbacks, batch_id)
            continue
        if record.get("callback_state") != "failed":
            continue  # listed before its record was written, or replayed since
        attempts = list(record.get("callback_attempts") or [])
        found.append(
            FailedBatchCallback(
                batch_id=batch_id,
                failed_at=float(score),
                url=safe_url(str(record.get("callback_url") or "")),
                webhook_id=webhook_id(batch_id),
                error=str(record.get("callback_error") or ""),
                attempts=int(record.get("callback_tries") or 0),
                batch_state=str(record.get("state") or ""),
                last_attempt=attempts[-1] if attempts else None,
            )
        )
    return found


def replay_batch_callback(ctx: Context, batch_id: str) -> list[Next]:
    """Restart a dead-lettered batch callback; return the delivery task to publish.

    The event keeps its ``webhook-id``; timestamp and signature are fresh. Raises
    :class:`BatchNotFoundError` for an unknown batch and :class:`CallbackReplayError`
    when its callback is not dead-lettered.
    """
    record = get_record(ctx, batch_id)
    state = str(record.get("callback_state") or "")
    token = int(record.get("callback_token") or 0)
    fields = {
        "callback_token": token + 1,
        "callback_state": "pending",
        "callback_tries": 0,
        "callback_rearms": 0,
        "callback_error": "",
    }
    restarted = state == "failed" and batch_cas(
        ctx,
        batch_id,
        {"callback_token": [str(token)], "callback_state": ["failed"]},
        fields,
        schedule=ctx.keys.batch_callbacks,
        due_at=ctx.clock() + PICKUP_GRACE,
    )
    if not restarted:
        raise CallbackReplayError(
            f"batch {batch_id}'s callback is {state or 'none'}, not dead-lettered: "
            "nothing to replay"
        )
    log.info("batch %s: callback replay requested", batch_id)
    return [Next(task_names.DELIVER_BATCH_CALLBACK, (batch_id, token + 1))]
