"""The run pipeline as plain functions: validate, upload, submit, poll, finish.

Each function takes a :class:`~worker.context.Context` and a run id (plus the
token its message carries), changes the ledger only by compare-and-set, and
returns the follow-up tasks to publish as :class:`Next` values. The Celery
tasks in ``tasks/`` only publish them, so tests call these functions directly.

Submit rule (the API has no idempotency key): ``POST /workflows/run`` is sent
at most once per run unless the previous attempt did not create a job: the
connection never opened, the API answered 429, or (``HATZ_SUBMIT_RETRY_5XX``,
default on) 5xx. An attempt
whose answer was lost (read timeout, reset connection, unreadable 2xx body) or
a worker that died mid-send leaves the run AMBIGUOUS: it is never re-sent
automatically.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from worker import task_names
from worker.context import Context
from worker.errors import (
    HatzAPIError,
    HatzAuthError,
    HatzConnectError,
    HatzCreditOverageError,
    HatzError,
    HatzNotFoundError,
    HatzRateLimitError,
    HatzResponseError,
    HatzServerError,
    HatzTransportError,
    HatzValidationError,
)
from worker.hatz.types import App, Job, StepOutput
from worker.limits import breaker
from worker.ops import log_context
from worker.store.ledger import (
    ACTIVE_STATES,
    POLLING_STATES,
    PRE_SUBMIT_STATES,
    TERMINAL_STATES,
    CasResult,
    Run,
    RunState,
)
from worker.store.outbox import Next
from worker.webhooks import events

log = logging.getLogger(__name__)

_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
_MAX_OUTPUT_CHARS = 100_000
_MAX_ERROR_CHARS = 500
_CALLBACK_GRACE = 120.0
#: How long a submit trusts the breaker state read with its claim, s (beyond it,
#: e.g. after uploading files, it asks the breaker again).
_BREAKER_READ_VALID = 1.0


# --- timing -----------------------------------------------------------------------


def jittered(ctx: Context, seconds: float) -> float:
    """``seconds`` spread by ±``HATZ_POLL_JITTER`` so many runs never poll in lockstep."""
    j = ctx.settings.poll_jitter
    return max(0.0, seconds * (1 + random.uniform(-j, j)))


def _encode(ctx: Context, steps: list[Next]) -> list[tuple[str, str]] | None:
    """The steps as messages the next compare-and-set pushes itself (worker.store.outbox)."""
    return ctx.outbox.encode(steps) if ctx.outbox is not None else None


def _lease(ctx: Context) -> float:
    """How long one task may hold a run before the sweeper may assume it died."""
    return ctx.settings.task_lease()


def _retry_delay(ctx: Context, attempt: int, exc: HatzError | None = None) -> float:
    """Delay before retry ``attempt`` (1-based) of a failed step."""
    s = ctx.settings
    if isinstance(exc, HatzCreditOverageError | HatzAuthError):
        return jittered(ctx, s.overage_pause)
    if isinstance(exc, HatzAPIError) and exc.retry_after is not None:
        return min(max(exc.retry_after, 0.0), s.poll_max_interval)
    return jittered(ctx, min(s.poll_max_interval, s.poll_interval * 2 ** (attempt - 1)))


def _short(exc: BaseException | str) -> str:
    text = str(exc) if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return text[:_MAX_ERROR_CHARS]


# --- validation ---------------------------------------------------------------------


def looks_like_file_uuid(value: Any) -> bool:
    """True for a string shaped like the ``file_uuid`` the upload endpoint returns."""
    return isinstance(value, str) and bool(_UUID.match(value))


def validate_inputs(app: App, inputs: Mapping[str, Any], files: Mapping[str, str]) -> list[str]:
    """Every problem with ``inputs``/``files`` against the app's ``user_inputs`` (empty = ok)."""
    problems: list[str] = []
    declared = {ui.variable_name: ui for ui in app.user_inputs}
    for name in sorted(set(inputs) | set(files)):
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            problems.append(f"unknown input {name!r} (the app's inputs: {known})")
    for name, ui in sorted(declared.items()):
        given_file = name in files
        given_value = name in inputs and inputs[name] not in (None, "")
        if ui.required and not (given_file or given_value):
            problems.append(f"missing required input {name!r}")
        if ui.is_file and given_value and not looks_like_file_uuid(inputs[name]):
            problems.append(f"input {name!r} is a file_upload input: pass a file, not a value")
        if given_file and not ui.is_file:
            problems.append(f"input {name!r} is not a file_upload input ({ui.variable_type})")
    return problems


_APP_CACHE_SIZE = 1024


def cached_app(ctx: Context, app_id: str) -> App | None:
    """``app_id``'s definition if this process holds it and it is still fresh (no I/O)."""
    local = ctx.apps.get(app_id)
    return local[1] if local is not None and local[0] > ctx.clock() else None


def fetch_app(ctx: Context, app_id: str) -> App:
    """``GET /app/{id}``, cached for ``HATZ_APP_CACHE_TTL`` seconds: in Redis for every
    worker, and in this process until the Redis entry expires (no round trip per submit)."""
    ttl = ctx.settings.app_cache_ttl
    if ttl <= 0:
        return ctx.client.get_app(app_id)
    now = ctx.clock()
    local = cached_app(ctx, app_id)
    if local is not None:
        return local
    key = ctx.keys.app(app_id)
    pipe = ctx.redis.pipeline(transaction=False)
    pipe.get(key)
    pipe.pttl(key)
    cached, left_ms = pipe.execute()
    if cached and int(left_ms) > 0:
        app = App.model_validate_json(cached)
        expires = now + int(left_ms) / 1000
    else:
        app = ctx.client.get_app(app_id)
        ctx.redis.set(key, app.model_dump_json(), ex=max(1, int(ttl)))
        expires = now + max(1, int(ttl))
    if len(ctx.apps) >= _APP_CACHE_SIZE:
        ctx.apps.clear()
    ctx.apps[app_id] = (expires, app)
    return app


# --- finishing ------------------------------------------------------------------------


def finish(
    ctx: Context,
    run_id: str,
    token: int | None,
    to: RunState,
    *,
    error: str = "",
    fields: Mapping[str, Any] | None = None,
    states: frozenset[RunState] | None = None,
    run: Run | None = None,
) -> list[Next]:
    """Move a run to terminal state ``to`` (CAS) and queue its callback, if it has one."""
    return _end(ctx, run_id, token, to, error=error, fields=fields, states=states, run=run)[1]


def _end(
    ctx: Context,
    run_id: str,
    token: int | None,
    to: RunState,
    *,
    error: str = "",
    fields: Mapping[str, Any] | None = None,
    states: frozenset[RunState] | None = None,
    run: Run | None = None,
) -> tuple[bool, list[Next]]:
    """:func:`finish`, also saying whether this call moved the run.

    ``run``: the record the caller already holds (its claim's), to save a read.
    Its callback and batch settings never change mid-run; only a run that wants
    ``workflow_run.started`` has a delivery chain moving ``callback_seq`` and
    ``callback_token`` meanwhile, so that one is read afresh.
    """
    if run is None or events.wants_started(run):
        run = ctx.ledger.get(run_id)
    if run is None:
        return False, []
    # Only when the run's event filter wants this end (or a started event is still owed).
    has_callback = bool(events.pending(run, to))
    changes: dict[str, Any] = dict(fields or {})
    if error:
        changes["error"] = error[:_MAX_ERROR_CHARS]
    if has_callback:
        changes["callback_state"] = "pending"
    result = ctx.ledger.cas(
        run_id,
        states=states if states is not None else (PRE_SUBMIT_STATES | POLLING_STATES),
        token=token,
        to=to,
        fields=changes,
        # A run with a callback stays on the schedule until it is delivered, so the
        # sweeper can re-send a delivery whose task was lost.
        next_at=ctx.clock() + _CALLBACK_GRACE if has_callback else None,
    )
    if not result:
        return False, []
    log.info("run %s -> %s%s", run_id, to.value, f": {error}" if error else "")
    steps: list[Next] = []
    if has_callback:
        steps.append(
            Next(task_names.DELIVER_CALLBACK, (run_id, int(run.get("callback_token") or 0)))
        )
    if run.get("batch_id"):
        # Frees the run's concurrency slot; the batch sweep recovers a lost tick.
        steps.append(Next(task_names.BATCH_TICK, (str(run["batch_id"]),)))
    return True, steps


# --- submit ---------------------------------------------------------------------------


def _reschedule_submit(
    ctx: Context, run: Run, token: int, exc: HatzError, **fields: Any
) -> list[Next]:
    attempts = int(run.get("submit_attempts") or 0) + 1
    age = ctx.clock() - float(run["created_at"])
    if age > ctx.settings.submit_retry_deadline:
        return finish(
            ctx, run.run_id, token, RunState.FAILED, error=f"gave up: {_short(exc)}", run=run
        )
    delay = _retry_delay(ctx, attempts, exc)
    ok = ctx.ledger.cas(
        run.run_id,
        states=PRE_SUBMIT_STATES,
        token=token,
        next_at=ctx.clock() + delay,
        fields={
            "submit_attempts": attempts,
            "submit_inflight": False,
            "last_error": _short(exc),
            **fields,
        },
    )
    if not ok:
        return []
    log.warning("run %s: %s; retrying in %.1f s", run.run_id, _short(exc), delay)
    return [Next(task_names.SUBMIT, (run.run_id, token), delay)]


def _pause_submit(ctx: Context, run_id: str, token: int, wait: float) -> list[Next]:
    # Re-check at least every HATZ_OVERAGE_PAUSE (a countdown the visibility timeout
    # already allows), jittered so paused runs do not wake in lockstep.
    delay = jittered(ctx, min(max(wait, 0.05), ctx.settings.overage_pause))
    ok = ctx.ledger.cas(
        run_id,
        states=PRE_SUBMIT_STATES,
        token=token,
        to=RunState.SUBMITTING,  # validated (and uploaded): only the send is waiting
        next_at=ctx.clock() + delay,
        fields={"submit_inflight": False, "last_error": "paused: credit-overage breaker open"},
    )
    return [Next(task_names.SUBMIT, (run_id, token), delay)] if ok else []


def submit_hint(run: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a submit message may carry besides ``(run_id, token)``: the app of a run
    without files to upload (None for a run with files).

    With it, a worker that holds that app's definition claims the run and marks
    the send in flight in one compare-and-set (:func:`submit_step`).
    """
    if run.get("files"):
        return None
    app_id = run.get("app_id")
    return {"app_id": app_id} if isinstance(app_id, str) and app_id else None


def _hinted_app(ctx: Context, hint: Any) -> tuple[str, App] | None:
    """The hint's app id and its definition, if this process holds it fresh (no I/O)."""
    if not isinstance(hint, dict):
        return None
    app_id = hint.get("app_id")
    if not isinstance(app_id, str) or not app_id:
        return None
    app = cached_app(ctx, app_id)
    return None if app is None else (app_id, app)


def _claim_for_submit(
    ctx: Context, run_id: str, token: int, hint: Any
) -> tuple[CasResult, App | None]:
    """Claim the run; also mark its send in flight when nothing can come between.

    A QUEUED run without files whose app this process holds needs no I/O between
    the claim and the send, so the claim itself moves it to SUBMITTING with
    ``submit_inflight`` (one round trip instead of two). The returned app is set
    then, and only then. Every other run is claimed as it is and marked later.
    """
    # The breaker's state comes back with the claim (same round trip): while it is
    # closed, and the send follows at once, asking it again would cost a round trip.
    breaker_state = (ctx.keys.breaker, "state")
    hinted = _hinted_app(ctx, hint)
    if hinted is not None:
        claimed = ctx.ledger.claim_peeking(
            run_id,
            token,
            {RunState.QUEUED},
            _lease(ctx),
            to=RunState.SUBMITTING,
            fields={"submit_inflight": True},
            peek=breaker_state,
        )
        run = claimed.record
        if run is not None and run.get("app_id") == hinted[0] and not run.get("files"):
            return claimed, hinted[1]
        if run is not None:
            # Not the run the hint described (it never is): take the mark back, carry on
            # as for any claimed QUEUED run.
            undone = ctx.ledger.cas(
                run_id,
                states={RunState.SUBMITTING},
                token=run.token,
                to=RunState.QUEUED,
                fields={"submit_inflight": False},
                return_record=True,
            )
            undone.peeked = claimed.peeked
            return undone, None
        if claimed.state_before not in (RunState.UPLOADING.value, RunState.SUBMITTING.value):
            return claimed, None  # stale, duplicate, or the run moved on
    claimed = ctx.ledger.claim_peeking(
        run_id, token, PRE_SUBMIT_STATES, _lease(ctx), peek=breaker_state
    )
    return claimed, None


def submit_step(ctx: Context, run_id: str, token: int, hint: Any = None) -> list[Next]:
    """Validate, upload files and submit one run; schedule its first poll.

    A stale or duplicate message (wrong token, run already past submit) is a no-op.
    ``hint``: :func:`submit_hint`, from the step that queued the run (optional).
    """
    claimed, marked_app = _claim_for_submit(ctx, run_id, token, hint)
    run = claimed.record
    if run is None:
        return []
    claimed_at = ctx.clock()
    log_context.bind(app_id=run.get("app_id"), job_id=run.get("job_id"))
    token = run.token
    state = run.state
    inputs: dict[str, Any] = dict(run.get("inputs") or {})
    files: dict[str, str] = dict(run.get("files") or {})
    marked = marked_app is not None  # SUBMITTING, the send in flight: recorded by the claim
    if marked_app is not None:
        problems = validate_inputs(marked_app, inputs, files)
        if problems:
            return finish(
                ctx,
                run_id,
                token,
                RunState.REJECTED,
                error="; ".join(problems),
                fields={"submit_inflight": False},
                run=run,
            )
    elif run.get("submit_inflight"):
        # Only reachable through a sweeper re-arm of a send that never reported back.
        return finish(
            ctx,
            run_id,
            token,
            RunState.AMBIGUOUS,
            error="submit outcome unknown (worker lost)",
            run=run,
        )

    if state is RunState.QUEUED:
        try:
            app = fetch_app(ctx, run["app_id"])
        except HatzNotFoundError:
            return finish(ctx, run_id, token, RunState.REJECTED, error="unknown app_id", run=run)
        except HatzValidationError as exc:
            return finish(ctx, run_id, token, RunState.REJECTED, error=_short(exc), run=run)
        except (HatzError, ValueError) as exc:
            err = exc if isinstance(exc, HatzError) else HatzResponseError(str(exc))
            return _reschedule_submit(ctx, run, token, err)
        problems = validate_inputs(app, inputs, files)
        if problems:
            return finish(ctx, run_id, token, RunState.REJECTED, error="; ".join(problems), run=run)
        state = RunState.UPLOADING if files else RunState.SUBMITTING
        # SUBMITTING itself is recorded with the in-flight mark below (one write, not two).
        if state is RunState.UPLOADING and not ctx.ledger.cas(
            run_id, states=ACTIVE_STATES, token=token, to=state
        ):
            return []

    if state is RunState.UPLOADING:
        for name, path in sorted(files.items()):
            if name in inputs:
                continue  # uploaded by an earlier attempt
            try:
                uploaded = ctx.client.upload_file(
                    path, scope_type="workflow", scope_id=run["app_id"]
                )
            except OSError as exc:
                msg = f"cannot read file for input {name!r}: {exc.strerror or exc}"
                return finish(ctx, run_id, token, RunState.REJECTED, error=msg, run=run)
            except (HatzValidationError, HatzNotFoundError) as exc:
                msg = f"upload of input {name!r} refused: {exc.detail}"
                return finish(ctx, run_id, token, RunState.REJECTED, error=msg, run=run)
            except HatzError as exc:
                return _reschedule_submit(ctx, run, token, exc, inputs=inputs)
            inputs[name] = uploaded.file_uuid
            if not ctx.ledger.cas(
                run_id, states=ACTIVE_STATES, token=token, fields={"inputs": inputs}
            ):
                return []

    # The org-wide credit-overage breaker: while it is open the run waits (no attempt
    # counted, no deadline) and asks again; only one probe submit goes at a time.
    if breaker.closed(claimed.peeked) and ctx.clock() - claimed_at < _BREAKER_READ_VALID:
        decision = breaker.Decision(True)
    else:
        decision = breaker.allow_submit(ctx)
    if not decision.allowed:
        return _pause_submit(ctx, run_id, token, decision.wait)

    # SUBMITTING: mark the send in flight first, so a crash mid-send is never re-sent.
    if not marked and not ctx.ledger.cas(
        run_id,
        states=ACTIVE_STATES,
        token=token,
        to=RunState.SUBMITTING,
        fields={"submit_inflight": True},
    ):
        return []
    try:
        job = ctx.client.run_workflow(
            run["app_id"], inputs, is_draft_app=bool(run.get("is_draft_app"))
        )
    except HatzServerError as exc:
        if not ctx.settings.submit_retry_5xx:
            return finish(
                ctx,
                run_id,
                token,
                RunState.AMBIGUOUS,
                error=f"submit answered {exc.status_code}; not re-sent (HATZ_SUBMIT_RETRY_5XX)",
                run=run,
            )
        return _reschedule_submit(ctx, run, token, exc)
    except HatzCreditOverageError as exc:
        breaker.record_overage(ctx, _short(exc))
        return _reschedule_submit(ctx, run, token, exc)
    except (HatzConnectError, HatzRateLimitError, HatzAuthError) as exc:
        # Nothing was created: wait and try again (an auth failure waits for a fixed key).
        return _reschedule_submit(ctx, run, token, exc)
    except (HatzValidationError, HatzNotFoundError) as exc:
        return finish(
            ctx, run_id, token, RunState.REJECTED, error=f"submit refused: {exc.detail}", run=run
        )
    except (HatzTransportError, HatzResponseError) as exc:
        return finish(
            ctx,
            run_id,
            token,
            RunState.AMBIGUOUS,
            error=f"submit outcome unknown, not re-sent to avoid a duplicate job: {_short(exc)}",
            run=run,
        )
    if decision.probe:
        breaker.record_success(ctx)
    first = jittered(ctx, ctx.settings.poll_initial_delay)
    now = ctx.clock()
    fields = {
        "job_id": job.job_id,
        "submit_inflight": False,
        "submit_attempts": int(run.get("submit_attempts") or 0) + 1,
        "poll_interval": ctx.settings.poll_interval,
        "due_at": now + first,
        "last_error": "",
    }
    hint = poll_hint({**run, **fields, "state": RunState.SUBMITTED.value, "submitted_at": now})
    poll = Next(task_names.POLL, (run_id, token, hint), first)
    push = _encode(ctx, [poll])
    # The job id exists only in this process now: outlast a Redis blip to record it.
    ok = ctx.ledger.cas_durable(
        _lease(ctx),
        run_id=run_id,
        states=PRE_SUBMIT_STATES,
        token=token,
        to=RunState.SUBMITTED,
        next_at=now + first,
        push=push or (),
        fields=fields,
    )
    if not ok:
        # Canceled while the request was in flight: the job exists, nobody polls it.
        log.warning("run %s: job %s submitted after the run left SUBMITTING", run_id, job.job_id)
        ctx.ledger.cas(run_id, states=None, fields={"job_id": job.job_id})
        return []
    log_context.bind(job_id=job.job_id)
    log.info("run %s submitted as job %s", run_id, job.job_id)
    return [] if push else [poll]


# --- poll -----------------------------------------------------------------------------


def _summarise_step(step: StepOutput) -> dict[str, Any]:
    data = step.output_data
    if isinstance(data, str) and len(data) > _MAX_OUTPUT_CHARS:
        data = data[:_MAX_OUTPUT_CHARS]
    return {
        "step_id": step.step_id,
        "step_type": step.step_type,
        "status": step.status,
        "output_type": step.output_type,
        "output_data": data,
        "duration": step.duration,
    }


def is_document(ctx: Context, output_type: str) -> bool:
    """Whether a step's ``output_type`` may carry a document (``HATZ_DOCUMENT_OUTPUT_TYPES``)."""
    kinds = ctx.settings.document_output_types
    if "*" in kinds:
        return output_type not in ("", "dump", "text")
    return output_type in kinds


def collect_documents(ctx: Context, job: Job) -> dict[str, dict[str, Any]]:
    """Presigned URLs of every document step; a 4xx means "no document", not a failure."""
    documents: dict[str, dict[str, Any]] = {}
    expires_in = ctx.settings.presign_expires_in
    for step in job.step_outputs:
        if step.status != "complete" or not is_document(ctx, step.output_type):
            continue
        requested = ctx.clock()
        try:
            url = ctx.client.presigned_url(job.job_id, step.step_id, expires_in=expires_in)
        except (HatzValidationError, HatzNotFoundError):
            continue
        documents[step.step_id] = {"url": url.url, "expires_at": requested + url.expires_in}
    return documents


def refresh_documents(ctx: Context, run: Run, *, margin: float = 300.0) -> Run:
    """Renew presigned URLs that expire within ``margin`` seconds (e.g. before a late
    callback retry), so receivers never get a dead link. Failures keep the old URL."""
    documents: dict[str, dict[str, Any]] = dict(run.get("documents") or {})
    job_id = run.get("job_id")
    now = ctx.clock()
    stale = [k for k, d in documents.items() if float(d.get("expires_at") or 0) < now + margin]
    if not job_id or not stale:
        return run
    for step_id in stale:
        try:
            url = ctx.client.presigned_url(
                str(job_id), step_id, expires_in=ctx.settings.presign_expires_in
            )
        except HatzError as exc:
            log.warning("run %s: cannot renew the URL of step %s: %s", run.run_id, step_id, exc)
            continue
        documents[step_id] = {"url": url.url, "expires_at": now + url.expires_in}
    ctx.ledger.cas(run.run_id, states=TERMINAL_STATES, fields={"documents": documents})
    return Run({**run, "documents": documents})


def _failure_reason(job: Job) -> str:
    for step in job.step_outputs:
        if step.status == "failed":
            detail = step.output_data if isinstance(step.output_data, str) else ""
            return f"step {step.step_id} failed" + (f": {detail}" if detail else "")
    return "job failed"


def _next_interval(ctx: Context, run: Run, job: Job | None) -> float:
    s = ctx.settings
    current = float(run.get("poll_interval") or s.poll_interval)
    progressed = job is not None and (
        job.status != run.get("hatz_status") or job.steps_done != int(run.get("steps_done") or 0)
    )
    if progressed:
        return s.poll_interval
    return min(s.poll_max_interval, current * s.poll_backoff)


#: The run fields a poll message carries (its *hint*), in this order: all a poll
#: reads before its ``GET``, as the compare-and-set that published it left them.
HINT_FIELDS = (
    "job_id",
    "app_id",
    "state",
    "due_at",
    "poll_count",
    "poll_interval",
    "hatz_status",
    "steps_done",
    "not_found_count",
    "submitted_at",
    "run_timeout",
    "quiet",  # not a record field: True when the run ends with nothing to send
)
#: What :func:`poll_hint` reads from a full record.
HINT_SOURCES = (*HINT_FIELDS[:-1], "callback_url", "batch_id")


_POLLING_NAMES = frozenset(s.value for s in POLLING_STATES)


def poll_hint(run: Mapping[str, Any]) -> list[Any]:
    """The hint for a poll of ``run`` (see :func:`poll_step`): a short list, no secrets.

    ``quiet``: the run has no callback URL and no batch, so its end is one
    compare-and-set with no follow-up, and the poll that ends it need not read
    the record (a run's callback and batch never change mid-run).
    """
    quiet = run["quiet"] if "quiet" in run else not (run.get("callback_url") or run.get("batch_id"))
    return [run.get(name) for name in HINT_FIELDS[:-1]] + [bool(quiet)]


#: The type of each hint entry (None is always allowed, but for the job id).
_HINT_TYPES: dict[str, type | tuple[type, ...]] = {
    "job_id": str,
    "app_id": str,
    "state": str,
    "hatz_status": str,
    "due_at": (int, float),
    "poll_interval": (int, float),
    "submitted_at": (int, float),
    "run_timeout": (int, float),
    "poll_count": int,
    "steps_done": int,
    "not_found_count": int,
    "quiet": bool,
}


def _from_hint(run_id: str, token: int, hint: Any) -> Run | None:
    """The partial record a hint stands for; None when there is no usable hint (then
    the poll claims the run and reads it, as without one)."""
    if not isinstance(hint, list) or len(hint) != len(HINT_FIELDS):
        return None
    fields = {k: v for k, v in zip(HINT_FIELDS, hint, strict=True) if v is not None}
    for name, value in fields.items():
        kind = _HINT_TYPES[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            return None
    if not fields.get("job_id") or fields.get("state") not in _POLLING_NAMES:
        return None
    return Run({**fields, "run_id": run_id, "token": token})


def _reschedule_poll(
    ctx: Context,
    run: Run,
    token: int,
    interval: float,
    fields: Mapping[str, Any],
    also: Sequence[Next] = (),
) -> list[Next]:
    """Record this poll and schedule the next, in one compare-and-set that also moves
    the token on (``token -> token+1``): a duplicate of this message finds it moved.

    ``also``: other tasks this poll starts (its ``workflow_run.started`` delivery);
    pushed with the same write, so no crash can record the change and lose them.
    """
    countdown = jittered(ctx, interval)
    now = ctx.clock()
    # Far-off polls are parked in Redis, not held by a worker as countdown messages;
    # worker.runs.dispatcher publishes each as a countdown once it is within the horizon.
    horizon = ctx.settings.countdown_horizon
    park = 0 < horizon < countdown
    changes = {
        **{k: v for k, v in fields.items() if k != "state_to"},
        "poll_interval": interval,
        "due_at": now + countdown,
    }
    after = {**run, **changes}
    if fields.get("state_to"):
        after["state"] = RunState(fields["state_to"]).value
    step = Next(task_names.POLL, (run.run_id, token + 1, poll_hint(after)), countdown)
    outgoing = [*([] if park else [step]), *also]  # a parked poll is the dispatcher's
    push = _encode(ctx, outgoing) if outgoing else None
    ok = ctx.ledger.cas(
        run.run_id,
        states=POLLING_STATES,
        token=token,
        to=fields.get("state_to"),
        bump_token=True,
        next_at=now + countdown,
        park=park,
        push=push or (),
        fields=changes,
    )
    if not ok or push:
        return []
    return outgoing


def poll_step(ctx: Context, run_id: str, token: int, hint: Any = None) -> list[Next]:
    """Poll one run's job once; finish it or reschedule the next poll (one chain per run).

    With a ``hint`` (:func:`poll_hint`, put in the message by the step that
    scheduled it) the poll reads nothing before its ``GET``: its one ledger write,
    the compare-and-set that records the answer and schedules the next poll, checks
    the token, so a stale or duplicate message changes nothing (it costs one
    ``GET``). Without a hint (a sweeper re-arm, an older message), or when the
    message is so late that the sweeper may have re-armed the run meanwhile, the
    poll first claims the run, as submit does, and skips the ``GET`` when stale.
    """
    now = ctx.clock()
    run = _from_hint(run_id, token, hint)
    if run is not None and now - float(run.get("due_at") or now) > ctx.settings.sweep_grace / 2:
        run = None
    record: Run | None = None  # the full record, when this poll read it (the claim)
    if run is None:
        record = run = ctx.ledger.claim(run_id, token, POLLING_STATES, _lease(ctx))
        if run is None:
            return []
        token = run.token
    elif run.get("quiet"):
        record = run  # all that ending it needs: no callback, no batch
    log_context.bind(app_id=run.get("app_id"), job_id=run.get("job_id"))
    base: dict[str, Any] = {
        "poll_count": int(run.get("poll_count") or 0) + 1,
        "claimed_at": now,  # the sweeper's stall detection: a task worked on this run
    }
    due = run.get("due_at")
    if due:
        base["last_poll_lateness"] = round(max(0.0, now - float(due)), 4)
        ctx.metrics.poll_lateness(base["last_poll_lateness"])
    submitted_at = float(run.get("submitted_at") or run.get("created_at") or now)
    limit = float(run.get("run_timeout") or ctx.settings.run_timeout)
    if now - submitted_at > limit:
        return finish(
            ctx,
            run_id,
            token,
            RunState.TIMED_OUT,
            error=f"no result after {limit:g} s",
            fields=base,
            run=record,
        )
    try:
        job = ctx.client.get_job(run["job_id"])
    except HatzNotFoundError as exc:
        misses = int(run.get("not_found_count") or 0) + 1
        if misses >= ctx.settings.not_found_limit:
            return finish(
                ctx, run_id, token, RunState.FAILED, error=exc.detail, fields=base, run=record
            )
        fields = {**base, "not_found_count": misses, "last_error": _short(exc)}
        return _reschedule_poll(ctx, run, token, _next_interval(ctx, run, None), fields)
    except HatzError as exc:
        interval = _next_interval(ctx, run, None)
        if isinstance(exc, HatzCreditOverageError | HatzAuthError):
            interval = max(interval, ctx.settings.overage_pause)
        elif isinstance(exc, HatzAPIError) and exc.retry_after:
            interval = max(interval, min(exc.retry_after, ctx.settings.poll_max_interval))
        return _reschedule_poll(ctx, run, token, interval, {**base, "last_error": _short(exc)})

    progress = {
        **base,
        "hatz_status": job.status,
        "steps_done": job.steps_done,
        "number_of_steps": job.number_of_steps or 0,
        "not_found_count": 0,
    }
    if job.status == "complete":
        try:
            documents = collect_documents(ctx, job)
        except HatzError as exc:
            fields = {**progress, "last_error": f"presigned-url: {_short(exc)}"}
            return _reschedule_poll(ctx, run, token, ctx.settings.poll_interval, fields)
        fields = {
            **progress,
            "step_outputs": [_summarise_step(s) for s in job.step_outputs],
            "documents": documents,
            "last_error": "",
        }
        return finish(ctx, run_id, token, RunState.COMPLETED, fields=fields, run=record)
    if job.status == "failed":
        fields = {**progress, "step_outputs": [_summarise_step(s) for s in job.step_outputs]}
        return finish(
            ctx,
            run_id,
            token,
            RunState.FAILED,
            error=_failure_reason(job),
            fields=fields,
            run=record,
        )
    started: list[Next] = []
    if job.status == "running" and run.state is RunState.SUBMITTED:
        progress["state_to"] = RunState.RUNNING
        full = record or ctx.ledger.get(run_id)  # once per run: its callback settings
        if full is not None and events.wants_started(full):
            callback_token = int(full.get("callback_token") or 0)
            started.append(Next(task_names.DELIVER_CALLBACK, (run_id, callback_token)))
    interval = _next_interval(ctx, run, job)
    return _reschedule_poll(ctx, run, token, interval, progress, also=started)


# --- cancel ---------------------------------------------------------------------------


def cancel(ctx: Context, run_id: str) -> tuple[bool, list[Next]]:
    """Stop polling a run and mark it CANCELED; ``(False, [])`` if it had already ended.

    The API has no remote cancel: a submitted job keeps running at Hatz; only
    our side stops. The follow-ups: its ``workflow_run.canceled`` callback, when
    the run asked for that event, and its batch's tick (the slot is free).
    """
    ctx.ledger.require(run_id)
    return _end(
        ctx,
        run_id,
        None,
        RunState.CANCELED,
        error="canceled by request (the Hatz job, if submitted, was not stopped)",
        states=PRE_SUBMIT_STATES | POLLING_STATES,
    )
