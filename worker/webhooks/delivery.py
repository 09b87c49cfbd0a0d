"""Callbacks: build each event, sign it (Standard Webhooks), deliver it, retry or dead-letter it.

A run emits up to two events (:mod:`worker.webhooks.events`): ``workflow_run.started``
when asked for, then its terminal event. One delivery chain per run sends them
in sequence order; ``callback_seq`` records the last one delivered.

Exactly once in effect. The chain has its own token (``callback_token``): a
delivery task claims the run by moving it ``t -> t+1`` *before* sending and
records the outcome with a compare-and-set on ``t+1`` *after*, so a
duplicated, redelivered or stale task finds nothing to do and never sends a
second time. Every change here is such a compare-and-set, pinned to the run
state it was computed from (the pipeline may end the run meanwhile; then the
change is recomputed). The one window left: a worker killed after the
receiver answered 2xx but before the ledger recorded it. The sweeper re-arms
the chain once the delivery's lease is over, which costs at most one extra
delivery, with the same ``webhook-id`` (receivers dedupe on it).

A delivery never changes the run's own state: only ``callback_*`` fields.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from worker import task_names
from worker.context import Context
from worker.errors import CallbackReplayError, UnsafeCallbackURLError
from worker.ops import log_context
from worker.ops.redaction import safe_url
from worker.retry_after import parse_retry_after
from worker.runs.documents import refresh_documents
from worker.runs.timing import jittered
from worker.store.ledger import Run, RunState
from worker.store.outbox import Next
from worker.webhooks import events, signing
from worker.webhooks import transport as webhook_transport
from worker.webhooks.events import Event
from worker.webhooks.ssrf import Resolver, resolve_callback_url

log = logging.getLogger(__name__)

#: The event type of each terminal state (kept for callers of the earlier API).
EVENT_TYPES = events.TERMINAL_EVENTS
#: Status codes worth retrying besides 5xx; any other 4xx means the receiver said no.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
USER_AGENT = "hatz-worker-callbacks/0.1"
_MAX_BODY_EXCERPT = 200
_MAX_ERROR_CHARS = 300
_MAX_ATTEMPTS_KEPT = 20
_MAX_RETRY_AFTER = 3600.0
#: Time a delivery task may need beyond its HTTP timeouts before the sweeper may re-arm it.
_LEASE_MARGIN = 30.0
#: When a replayed or queued delivery counts as lost if nobody picked it up.
PICKUP_GRACE = 120.0
#: Callback states in which the chain still has work (the sweeper re-arms these).
ACTIVE_CALLBACK_STATES = frozenset({"pending", "sending", "retrying"})


# --- the event --------------------------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def build_event(run: Run, event: Event) -> dict[str, Any]:
    """The callback body of ``event`` for ``run`` (README "Callbacks" shows the shape)."""
    documents: dict[str, Any] = run.get("documents") or {}
    steps = []
    if event.type != events.STARTED:
        for step in run.get("step_outputs") or []:
            doc = documents.get(step.get("step_id", ""))
            document = (
                {"url": doc.get("url"), "expires_at": doc.get("expires_at")}
                if isinstance(doc, dict)
                else None
            )
            if document is not None and isinstance(doc, dict) and doc.get("archive"):
                document["archive"] = doc["archive"]  # {url, sha256, size} (HATZ_ARCHIVE_URL)
            steps.append({**step, "document": document})
    if event.type == events.STARTED:
        status = RunState.RUNNING.value.lower()
        happened = run.get("running_at")
    else:
        status = run.state.value.lower()
        happened = run.get(f"{status}_at")
    return {
        "type": event.type,
        "timestamp": _iso(float(happened or run.get("updated_at") or time.time())),
        "sequence": event.sequence,
        "data": {
            "run_id": run.run_id,
            "job_id": run.get("job_id") or None,
            "app_id": run.get("app_id"),
            "status": status,
            "metadata": run.get("metadata") or {},
            "error": (run.get("error") or None) if event.type != events.STARTED else None,
            "step_outputs": steps,
        },
    }


def encode(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed)."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=False).encode()


def signed_headers(ctx: Context, msg_id: str, body: bytes) -> dict[str, str]:
    """Content type, user agent and the Standard Webhooks headers, signed now."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **signing.headers(ctx.settings.webhook_secrets(), msg_id, body),
    }


# --- one HTTP attempt -----------------------------------------------------------------


@dataclass
class Outcome:
    """One delivery attempt: the status (None when no answer) or the error."""

    status: int | None = None
    error: str = ""
    refused: bool = False
    latency_ms: float = 0.0
    body: str = ""
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        """A 2xx answer."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        """Timeouts, connection errors, 408/409/425/429 and 5xx; never a guard refusal."""
        if self.refused:
            return False
        return self.status is None or self.status >= 500 or self.status in RETRYABLE_STATUS

    def summary(self) -> str:
        """``HTTP 503`` or the error."""
        return f"HTTP {self.status}" if self.status is not None else self.error


def send(
    ctx: Context,
    url: str,
    msg_id: str,
    body: bytes,
    *,
    resolver: Resolver | None = None,
) -> Outcome:
    """Check ``url`` with the SSRF guard, resolve and pin it, and POST once, signed now.

    Every callback goes through here, run and batch events alike: the host is
    resolved, every address it resolves to is checked, and the connection goes
    to the checked address.
    """
    s = ctx.settings
    started = time.monotonic()
    try:
        target = resolve_callback_url(url, s, resolver)
    except UnsafeCallbackURLError as exc:
        return Outcome(error=f"refused by the SSRF guard: {exc.reason}", refused=True)
    except (OSError, UnicodeError, ValueError) as exc:
        return Outcome(error=f"dns: {type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS])
    try:
        response = webhook_transport.post(
            target,
            body,
            signed_headers(ctx, msg_id, body),
            connect_timeout=s.callback_connect_timeout,
            total_timeout=s.callback_timeout,
        )
    except webhook_transport.DeliveryError as exc:
        latency = round((time.monotonic() - started) * 1000, 1)
        return Outcome(error=str(exc)[:_MAX_ERROR_CHARS], latency_ms=latency)
    return Outcome(
        status=response.status,
        latency_ms=round((time.monotonic() - started) * 1000, 1),
        body=response.body.decode("utf-8", "replace")[:_MAX_BODY_EXCERPT],
        retry_after=parse_retry_after(response.headers.get("retry-after"), time.time()),
    )


# --- ledger changes, pinned to the run state they were computed from -----------------------


@dataclass
class _Change:
    fields: dict[str, Any]
    bump: bool = False
    #: Terminal runs only: keep the run on the schedule, due in this many seconds.
    due_in: float | None = None
    #: Terminal runs only: the chain is finished; leave the schedule.
    done: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def _commit(
    ctx: Context, run_id: str, token: int | None, decide: Callable[[Run], _Change | None]
) -> tuple[Run, _Change, int] | None:
    """Apply ``decide(run)`` if the run is still in that state and holds callback ``token``.

    ``token=None``: whatever the current token is (a replay). Returns the run as
    ``decide`` saw it, the change and the token after it; None when the token
    moved on (stale task) or ``decide`` declined. Non-terminal runs' schedule
    belongs to their poll chain, so only terminal runs' schedule is touched.
    """
    for _ in range(5):
        run = ctx.ledger.get(run_id)
        if run is None:
            return None
        current = int(run.get("callback_token") or 0)
        if token is not None and current != token:
            return None
        change = decide(run)
        if change is None:
            return None
        terminal = run.state.is_terminal
        result = ctx.ledger.cas(
            run_id,
            states=[run.state],
            token=current,
            token_field="callback_token",
            bump_token=change.bump,
            fields=change.fields,
            next_at=ctx.clock() + change.due_in if terminal and change.due_in is not None else None,
            unschedule=terminal and change.done,
        )
        if result:
            return run, change, result.token
        # The state moved (the run ended) or the token did; re-read and decide again.
    return None


def _attempts(run: Run, record: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(run.get("callback_attempts") or []), record][-_MAX_ATTEMPTS_KEPT:]


def delivery_lease(ctx: Context) -> float:
    """How long one delivery attempt may hold its chain before the sweeper re-arms it, s."""
    s = ctx.settings
    return s.callback_connect_timeout + s.callback_timeout + _LEASE_MARGIN


def retry_delay(ctx: Context, tries: int, outcome: Outcome) -> float:
    """The wait before retry number ``tries`` (``HATZ_CALLBACK_RETRY_DELAYS``, jittered),
    longer when the receiver asked for it with ``Retry-After``."""
    delays = ctx.settings.callback_retry_delays
    delay = jittered(ctx, delays[tries])
    if outcome.retry_after is not None:
        # Honour the receiver, within reason: up to an hour, or our own longest wait.
        delay = max(delay, min(outcome.retry_after, max(_MAX_RETRY_AFTER, *delays)))
    return delay


# --- the delivery chain ---------------------------------------------------------------


def deliver_step(
    ctx: Context, run_id: str, token: int, *, resolver: Resolver | None = None
) -> list[Next]:
    """Deliver a run's next pending event once; return the follow-up delivery task, if any.

    2xx: the event is recorded delivered and the next event (if any) follows.
    A retryable failure schedules a retry per ``HATZ_CALLBACK_RETRY_DELAYS``
    (delays longer than half the visibility timeout wait in the ledger schedule
    for the sweeper); anything else, or retries exhausted, dead-letters it.
    """
    lease = delivery_lease(ctx)
    claimed = _commit(ctx, run_id, token, _claim_next_event(token, lease))
    if claimed is None or not claimed[1].bump:
        return []
    run, change, token = claimed
    log_context.bind(app_id=run.get("app_id"), job_id=run.get("job_id"))
    event: Event = change.info["event"]
    url = str(run.get("callback_url") or "")
    tries = int(run.get("callback_tries") or 0) + 1
    if event.type != events.STARTED:
        run = refresh_documents(ctx, run)  # a retry hours later must not send dead links
    msg_id = events.webhook_id(run_id, event)
    outcome = send(ctx, url, msg_id, encode(build_event(run, event)), resolver=resolver)
    record = _attempt_record(ctx, event, outcome)
    ctx.metrics.callback_attempt(outcome.status)
    attempt = _Attempt(run_id, token, event, record, safe_url(url), tries)
    if outcome.ok:
        return _delivered(ctx, attempt, lease)
    if outcome.retryable and tries < len(ctx.settings.callback_retry_delays):
        return _retry(ctx, attempt, outcome, lease)
    _dead_letter(ctx, attempt, outcome)
    return []


@dataclass(frozen=True)
class _Attempt:
    """One delivery attempt of one event, as the steps after the send see it."""

    run_id: str
    token: int
    event: Event
    record: dict[str, Any]
    where: str  # the URL, redacted for logs
    tries: int


def _claim_next_event(token: int, lease: float) -> Callable[[Run], _Change | None]:
    """The claim of the run's next pending event (``t -> t+1``), or the chain's close
    when nothing is pending; None when another sender holds the chain."""

    def claim(run: Run) -> _Change | None:
        if not run.get("callback_url"):
            return None
        if run.get("callback_state") == "failed":
            return None  # dead-lettered: only a replay restarts the chain
        if str(run.get("callback_sending") or "") == str(token):
            return None  # a sender holds this very token right now; it carries the chain on
        todo = events.pending(run)
        if not todo:
            final = "delivered" if int(run.get("callback_seq") or 0) else "skipped"
            if run.get("callback_state") == final:
                return None
            return _Change({"callback_state": final, "callback_sending": ""}, done=True)
        return _Change(
            {"callback_state": "sending", "callback_sending": str(token + 1)},
            bump=True,
            due_in=lease,
            info={"event": todo[0]},
        )

    return claim


def _attempt_record(ctx: Context, event: Event, outcome: Outcome) -> dict[str, Any]:
    """The attempt as ``callback_attempts`` keeps it."""
    record: dict[str, Any] = {
        "at": ctx.clock(),
        "event": event.type,
        "latency_ms": outcome.latency_ms,
    }
    if outcome.status is not None:
        record["status"] = outcome.status
        record["body"] = outcome.body
    else:
        record["error"] = outcome.error
    return record


def _retry(ctx: Context, attempt: _Attempt, outcome: Outcome, lease: float) -> list[Next]:
    """Record a retryable failure and schedule the retry (held, or kept by the ledger)."""
    delay = retry_delay(ctx, attempt.tries, outcome)
    attempt.record["retry_in"] = round(delay, 3)
    # Long waits (hours) are not held by a worker as countdowns: they would
    # outlive the visibility timeout. The ledger's schedule keeps them and
    # the sweeper publishes the retry when it is due.
    held = delay <= ctx.settings.max_countdown()

    def retry(run: Run) -> _Change:
        fields = {
            "callback_state": "retrying",
            "callback_tries": attempt.tries,
            "callback_sending": "",
            "callback_attempts": _attempts(run, attempt.record),
        }
        return _Change(fields, due_in=delay + (lease if held else 0.0))

    if _commit(ctx, attempt.run_id, attempt.token, retry) is None:
        return []
    log.warning(
        "run %s: %s callback to %s failed (attempt %d: %s); retry in %.1f s",
        attempt.run_id,
        attempt.event.name,
        attempt.where,
        attempt.tries,
        outcome.summary(),
        delay,
    )
    if not held:
        return []
    return [Next(task_names.DELIVER_CALLBACK, (attempt.run_id, attempt.token), delay)]


def _dead_letter(ctx: Context, attempt: _Attempt, outcome: Outcome) -> None:
    """Give the event up: list the run as a dead letter, then record it failed."""
    error = f"{outcome.summary()} after {attempt.tries} attempt(s)"

    def dead_letter(run: Run) -> _Change:
        fields = {
            "callback_state": "failed",
            "callback_tries": attempt.tries,
            "callback_sending": "",
            "callback_error": error,
            "callback_attempts": _attempts(run, attempt.record),
        }
        return _Change(fields, done=True)

    # The list entry first, the record second: a crash in between leaves an entry its
    # readers skip (the run is not "failed"), never a dead letter missing from the list.
    index_dead_letter(ctx, attempt.run_id)
    if _commit(ctx, attempt.run_id, attempt.token, dead_letter) is not None:
        log.error(
            "run %s: %s callback to %s dead-lettered: %s",
            attempt.run_id,
            attempt.event.name,
            attempt.where,
            error,
        )


def index_dead_letter(ctx: Context, run_id: str) -> None:
    """Put a run on ``P:callbacks:failed`` (before its record says ``failed``).

    :func:`failed_callbacks` lists only runs whose record says so, so an entry
    whose dead-lettering did not complete is invisible; it leaves the list when
    a later delivery succeeds or the run expires.
    """
    ctx.redis.zadd(ctx.keys.failed_callbacks, {run_id: ctx.clock()})


def _delivered(ctx: Context, attempt: _Attempt, lease: float) -> list[Next]:
    """Record the event delivered; the next event's delivery when one is pending."""
    event = attempt.event

    def advance(run: Run) -> _Change:
        fields: dict[str, Any] = {
            "callback_seq": event.sequence,
            "callback_tries": 0,
            "callback_sending": "",
            "callback_error": "",
            "callback_attempts": _attempts(run, attempt.record),
        }
        more = bool(events.pending({**run, "callback_seq": event.sequence}))
        fields["callback_state"] = "pending" if more else "delivered"
        return _Change(fields, due_in=lease if more else None, done=not more, info={"more": more})

    committed = _commit(ctx, attempt.run_id, attempt.token, advance)
    log.info("run %s: %s callback delivered to %s", attempt.run_id, event.name, attempt.where)
    if committed is None:
        return []  # the sweeper retired this task meanwhile: its successor re-sends
    if committed[1].info["more"]:
        return [Next(task_names.DELIVER_CALLBACK, (attempt.run_id, attempt.token))]
    ctx.redis.zrem(ctx.keys.failed_callbacks, attempt.run_id)
    return []


# --- dead letter and replay --------------------------------------------------------------


@dataclass(frozen=True)
class FailedCallback:
    """A dead-lettered callback, as ``hatz-worker callbacks failed`` lists it."""

    run_id: str
    failed_at: float
    url: str
    event: str
    webhook_id: str
    error: str
    attempts: int
    run_state: str
    #: The last delivery attempt as recorded (time, status or error, latency); not in
    #: :meth:`as_dict`, for a caller that shows it (the console's dead letters).
    last_attempt: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "run_id": self.run_id,
            "failed_at": self.failed_at,
            "url": self.url,
            "event": self.event,
            "webhook_id": self.webhook_id,
            "error": self.error,
            "attempts": self.attempts,
            "run_state": self.run_state,
        }


def failed_callbacks(ctx: Context, *, limit: int = 1000) -> list[FailedCallback]:
    """Dead-lettered callbacks, oldest first, with the last error (URLs without query)."""
    rows: list[tuple[Any, float]] = list(
        ctx.redis.zrange(ctx.keys.failed_callbacks, 0, limit - 1, withscores=True)  # type: ignore[arg-type]
    )
    found: list[FailedCallback] = []
    for raw_id, score in rows:
        run_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
        run = ctx.ledger.get(run_id)
        if run is None:  # the run expired from the ledger: nothing left to replay
            ctx.redis.zrem(ctx.keys.failed_callbacks, run_id)
            continue
        if run.get("callback_state") != "failed":
            continue  # listed before its record was written (see index_dead_letter)
        todo = events.pending(run)
        event = todo[0] if todo else None
        attempts = list(run.get("callback_attempts") or [])
        found.append(
            FailedCallback(
                run_id=run_id,
                failed_at=float(score),
                url=safe_url(str(run.get("callback_url") or "")),
                event=event.type if event else "",
                webhook_id=events.webhook_id(run_id, event) if event else "",
                error=str(run.get("callback_error") or ""),
                attempts=len(attempts),
                run_state=run.state.value,
                last_attempt=attempts[-1] if attempts else None,
            )
        )
    return found


def replay_callback(ctx: Context, run_id: str) -> list[Next]:
    """Restart a dead-lettered run's callback chain; return the delivery task to publish.

    The event keeps its ``webhook-id``; timestamp and signature are fresh. The
    run leaves the failed list when the delivery succeeds. Raises
    :class:`RunNotFoundError` for an unknown run and :class:`CallbackReplayError`
    when its callback is not dead-lettered.
    """
    run = ctx.ledger.require(run_id)
    seen: dict[str, str] = {}

    def restart(run: Run) -> _Change | None:
        state = str(run.get("callback_state") or "")
        if state != "failed" or not events.pending(run):
            seen["state"] = state or "none"
            return None
        fields = {
            "callback_state": "pending",
            "callback_tries": 0,
            "callback_sending": "",
            "callback_error": "",
        }
        return _Change(fields, bump=True, due_in=PICKUP_GRACE)

    committed = _commit(ctx, run.run_id, None, restart)
    if committed is None:
        state = seen.get("state", "changing")
        raise CallbackReplayError(
            f"run {run_id}'s callback is {state}, not dead-lettered: nothing to replay"
        )
    log.info("run %s: callback replay requested", run_id)
    return [Next(task_names.DELIVER_CALLBACK, (run_id, committed[2]))]


# --- test events ------------------------------------------------------------------------


@dataclass(frozen=True)
class SendTestResult:
    """The outcome of :func:`send_test`."""

    webhook_id: str
    outcome: Outcome


def send_test(ctx: Context, url: str, *, resolver: Resolver | None = None) -> SendTestResult:
    """Send one signed ``webhook.test`` event to ``url`` (SSRF guard applies); no retries.

    Raises :class:`UnsafeCallbackURLError` when the guard refuses the URL.
    """
    resolve_callback_url(url, ctx.settings, resolver)  # refuse with the guard's own error
    msg_id = f"msg_test_{uuid.uuid4().hex}"
    payload = {
        "type": events.TEST,
        "timestamp": _iso(time.time()),
        "sequence": 0,
        "data": {"message": "test event from hatz-worker: signature and reachability check"},
    }
    outcome = send(ctx, url, msg_id, encode(payload), resolver=resolver)
    return SendTestResult(msg_id, outcome)
