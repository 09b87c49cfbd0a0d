"""The ``batch.completed`` callback: build it, sign it, send it, retry or give up.

Sent like a run's callback: Standard Webhooks signing and the guarded
transport (:func:`worker.webhooks.delivery.send`: the checked address pinned,
no proxy, no redirects, a total deadline). One difference stays for now: the
addresses a batch callback's host resolves to are not checked, because its URL
was only ever checked at creation (form and literal address) and batch
callbacks keep that policy until they get run callbacks' full guard.

Exactly once in effect: a delivery claims the batch by moving its
``callback_token`` ``t -> t+1`` before sending and records the outcome on
``t+1``, so a duplicated task never delivers twice.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from worker import task_names
from worker.batches.records import batch_cas, get_record
from worker.batches.results import result_rows
from worker.context import Context
from worker.errors import CallbackReplayError
from worker.store.ledger import RunState
from worker.store.outbox import Next
from worker.webhooks.delivery import Outcome, encode, send

log = logging.getLogger(__name__)

BATCH_EVENT = "batch.completed"
_MAX_SUMMARY_FAILURES = 50
_MAX_ATTEMPTS_KEPT = 20


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


def deliver_batch_callback(ctx: Context, batch_id: str, token: int) -> list[Next]:
    """One delivery attempt of the batch's callback; a retry is scheduled on failure.

    Claimed by a CAS on the batch's ``callback_token``, so a duplicated task
    never delivers twice.
    """
    claimed = batch_cas(
        ctx,
        batch_id,
        {"callback_token": [str(token)], "callback_state": ["pending", "retrying"]},
        {"callback_token": token + 1, "callback_state": "sending"},
    )
    if not claimed:
        return []
    token += 1
    record = get_record(ctx, batch_id)
    body = encode(build_batch_event(ctx, batch_id))
    msg_id = f"msg_batch_{batch_id}_completed"
    outcome = send(ctx, str(record["callback_url"]), msg_id, body, check_addresses=False)
    attempts = [*(record.get("callback_attempts") or []), _attempt(ctx, outcome)]
    return _record_outcome(ctx, batch_id, token, outcome, attempts)


def _attempt(ctx: Context, outcome: Outcome) -> dict[str, Any]:
    """The attempt as the batch record keeps it: when, and the status or the error."""
    answer = {"status": outcome.status} if outcome.status else {"error": outcome.error}
    return {"at": ctx.clock(), **answer}


def _record_outcome(
    ctx: Context, batch_id: str, token: int, outcome: Outcome, attempts: list[dict[str, Any]]
) -> list[Next]:
    """Record the attempt: delivered, retrying (the retry task) or failed for good."""
    s = ctx.settings
    what = outcome.status or outcome.error
    if outcome.ok:
        _set_callback_state(ctx, batch_id, token, "delivered", attempts)
        log.info("batch %s: callback delivered (%s)", batch_id, outcome.status)
        return []
    delays = s.callback_retry_delays
    tries = len(attempts)
    if outcome.retryable and tries < len(delays) and delays[tries] <= s.max_countdown():
        delay = delays[tries]
        _set_callback_state(ctx, batch_id, token, "retrying", attempts)
        log.warning("batch %s: callback failed (%s); retry in %.1f s", batch_id, what, delay)
        return [Next(task_names.DELIVER_BATCH_CALLBACK, (batch_id, token), delay)]
    _set_callback_state(ctx, batch_id, token, "failed", attempts)
    log.error("batch %s: callback failed for good (%s)", batch_id, what)
    return []


def _set_callback_state(
    ctx: Context, batch_id: str, token: int, state: str, attempts: list[dict[str, Any]]
) -> None:
    batch_cas(
        ctx,
        batch_id,
        {"callback_token": [str(token)]},
        {"callback_state": state, "callback_attempts": attempts[-_MAX_ATTEMPTS_KEPT:]},
    )


def replay_batch_callback(ctx: Context, batch_id: str) -> list[Next]:
    """Restart a batch callback that failed for good; return the delivery task to publish.

    Raises :class:`~worker.errors.BatchNotFoundError` for an unknown batch and
    :class:`CallbackReplayError` when its callback did not fail.
    """
    record = get_record(ctx, batch_id)
    token = int(record.get("callback_token") or 0)
    restarted = batch_cas(
        ctx,
        batch_id,
        {"callback_token": [str(token)], "callback_state": ["failed"]},
        {"callback_token": token + 1, "callback_state": "pending"},
    )
    if not restarted:
        state = record.get("callback_state") or "none"
        raise CallbackReplayError(
            f"batch {batch_id}'s callback is {state}, not failed: nothing to replay"
        )
    log.info("batch %s: callback replay requested", batch_id)
    return [Next(task_names.DELIVER_BATCH_CALLBACK, (batch_id, token + 1))]
