"""Completion callbacks: build the event, sign it (Standard Webhooks), deliver it.

Delivery has its own chain token (``callback_token``) in the run record, so a
duplicated or redelivered delivery task finds nothing to do: at most one
successful delivery per event. The one unavoidable window, a worker killed
after the receiver answered 2xx but before the ledger recorded it, costs at
most one extra delivery with the same ``webhook-id`` (receivers dedupe on it).

A delivery never changes the run's own state: only ``callback_*`` fields.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import requests

from worker import signing, task_names
from worker.context import Context
from worker.ledger import TERMINAL_STATES, Run, RunState
from worker.pipeline import Next

log = logging.getLogger(__name__)

EVENT_TYPES = {
    RunState.COMPLETED: "workflow_run.completed",
    RunState.FAILED: "workflow_run.failed",
    RunState.AMBIGUOUS: "workflow_run.failed",
    RunState.TIMED_OUT: "workflow_run.timed_out",
    RunState.REJECTED: "workflow_run.rejected",
    RunState.CANCELED: "workflow_run.canceled",
}
#: Status codes worth retrying; any other 4xx means the receiver said no.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
_MAX_BODY_EXCERPT = 200
_MAX_ATTEMPTS_KEPT = 20


def event_type(run: Run) -> str:
    """The event type for a terminal run."""
    return EVENT_TYPES[run.state]


def webhook_id(run: Run) -> str:
    """Stable across every retry and replay of this run's terminal event."""
    return f"msg_{run.run_id}_{event_type(run).rsplit('.', 1)[1]}"


def build_event(run: Run) -> dict[str, Any]:
    """The callback body for a terminal run."""
    documents: dict[str, Any] = run.get("documents") or {}
    steps = [
        {**step, "document": documents.get(step.get("step_id", ""))}
        for step in (run.get("step_outputs") or [])
    ]
    ended = run.get(f"{run.state.value.lower()}_at") or time.time()
    return {
        "type": event_type(run),
        "timestamp": datetime.fromtimestamp(float(ended), UTC).isoformat(),
        "sequence": int(run.get("callback_seq") or 0) + 1,
        "data": {
            "run_id": run.run_id,
            "job_id": run.get("job_id") or None,
            "app_id": run.get("app_id"),
            "status": run.state.value.lower(),
            "metadata": run.get("metadata") or {},
            "error": run.get("error") or None,
            "step_outputs": steps,
        },
    }


def _retry_after(response: requests.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def deliver_step(ctx: Context, run_id: str, token: int) -> list[Next]:
    """One delivery attempt of a run's callback; schedule a retry or dead-letter it."""
    s = ctx.settings
    lease = s.callback_connect_timeout + s.callback_timeout + 30.0
    run = ctx.ledger.claim(
        run_id,
        token,
        TERMINAL_STATES,
        lease,
        token_field="callback_token",
        fields={"callback_state": "sending"},
    )
    if run is None:
        return []
    token = int(run["callback_token"])
    url = str(run.get("callback_url") or "")
    event = build_event(run)
    body = json.dumps(event, separators=(",", ":")).encode()
    msg_id = webhook_id(run)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "hatz-worker-callbacks/0.1",
        **signing.headers(s.webhook_secrets(), msg_id, body),
    }
    attempt_no = len(run.get("callback_attempts") or []) + 1
    started = time.monotonic()
    response: requests.Response | None = None
    error = ""
    try:
        response = requests.post(
            url,
            data=body,
            headers=headers,
            timeout=(s.callback_connect_timeout, s.callback_timeout),
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        error = type(exc).__name__
    latency = round((time.monotonic() - started) * 1000, 1)
    record: dict[str, Any] = {"at": ctx.clock(), "latency_ms": latency}
    if response is not None:
        record["status"] = response.status_code
        record["body"] = response.text[:_MAX_BODY_EXCERPT]
    else:
        record["error"] = error
    ctx.metrics.callback_attempt(response.status_code if response is not None else None)
    attempts = [*(run.get("callback_attempts") or []), record][-_MAX_ATTEMPTS_KEPT:]
    fields: dict[str, Any] = {"callback_attempts": attempts, "callback_seq": event["sequence"]}

    if response is not None and 200 <= response.status_code < 300:
        fields["callback_state"] = "delivered"
        ctx.ledger.cas(
            run_id,
            states=TERMINAL_STATES,
            token=token,
            token_field="callback_token",
            unschedule=True,
            fields=fields,
        )
        log.info("run %s: callback delivered (%s)", run_id, response.status_code)
        return []

    status = response.status_code if response is not None else None
    retryable = status is None or status >= 500 or status in RETRYABLE_STATUS
    delays = s.callback_retry_delays
    if retryable and attempt_no < len(delays):
        delay = delays[attempt_no]
        hinted = _retry_after(response)
        if hinted is not None:
            delay = max(delay, hinted)
        fields["callback_state"] = "retrying"
        # Long waits (hours) are not held by a worker as countdowns: they would
        # outlive the visibility timeout. The ledger's schedule keeps them and
        # the sweeper publishes the retry when it is due.
        held = delay <= s.max_countdown()
        ok = ctx.ledger.cas(
            run_id,
            states=TERMINAL_STATES,
            token=token,
            token_field="callback_token",
            next_at=ctx.clock() + delay + (lease if held else 0.0),
            fields=fields,
        )
        log.warning(
            "run %s: callback attempt %d failed (%s); retry in %.1f s",
            run_id,
            attempt_no,
            status or error,
            delay,
        )
        return [Next(task_names.DELIVER_CALLBACK, (run_id, token), delay)] if ok and held else []

    fields["callback_state"] = "failed"
    reason = f"HTTP {status}" if status is not None else error
    fields["callback_error"] = f"{reason} after {attempt_no} attempt(s)"
    ok = ctx.ledger.cas(
        run_id,
        states=TERMINAL_STATES,
        token=token,
        token_field="callback_token",
        unschedule=True,
        fields=fields,
    )
    if ok:
        ctx.redis.zadd(ctx.keys.failed_callbacks, {run_id: ctx.clock()})
    log.error("run %s: callback dead-lettered: %s", run_id, fields["callback_error"])
    return []
