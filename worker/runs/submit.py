"""The submit step: validate a run, upload its files and send ``POST /workflows/run`` once.

Submit rule (the API has no idempotency key): ``POST /workflows/run`` is sent
at most once per run unless the previous attempt did not create a job: the
connection never opened, the API answered 429, or (``HATZ_SUBMIT_RETRY_5XX``,
default on) 5xx. An attempt whose answer was lost (read timeout, reset
connection, unreadable 2xx body) or a worker that died mid-send leaves the run
AMBIGUOUS: it is never re-sent automatically.

Each step takes a :class:`~worker.context.Context` and a run id (plus the
token its message carries), changes the ledger only by compare-and-set, and
returns the follow-up tasks to publish as :class:`~worker.store.outbox.Next`
values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from worker import task_names
from worker.context import Context
from worker.errors import (
    FileRefusedError,
    FileSourceError,
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
from worker.files.refs import RefKind, kind_of
from worker.files.sources import upload_input
from worker.hatz.types import App, SubmittedJob
from worker.limits import breaker
from worker.ops import log_context
from worker.runs.apps import cached_app, fetch_app
from worker.runs.file_roots import allowed_path
from worker.runs.finish import error_text, finish
from worker.runs.inputs import validate_inputs
from worker.runs.poll_hints import poll_hint
from worker.runs.poll_plan import window_for
from worker.runs.timing import jittered, retry_delay, task_lease
from worker.store.ledger import ACTIVE_STATES, PRE_SUBMIT_STATES, CasResult, Run, RunState
from worker.store.outbox import Next

log = logging.getLogger(__name__)

#: How long a submit trusts the breaker state read with its claim, s (beyond it,
#: e.g. after uploading files, it asks the breaker again).
_BREAKER_READ_VALID = 1.0


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
    inputs: dict[str, Any] = dict(run.get("inputs") or {})
    files: dict[str, str] = dict(run.get("files") or {})
    refused = _check_claimed(ctx, run, marked_app, inputs, files)
    if refused is not None:
        return refused
    state = run.state
    if state is RunState.QUEUED:
        checked = _check_against_app(ctx, run, inputs, files)
        if isinstance(checked, list):
            return checked
        state = checked
    if state is RunState.UPLOADING:
        stopped = _upload_files(ctx, run, inputs, files)
        if stopped is not None:
            return stopped
    # The org-wide credit-overage breaker: while it is open the run waits (no attempt
    # counted, no deadline) and asks again; only one probe submit goes at a time.
    if breaker.closed(claimed.peeked) and ctx.clock() - claimed_at < _BREAKER_READ_VALID:
        decision = breaker.Decision(True)
    else:
        decision = breaker.allow_submit(ctx)
    if not decision.allowed:
        return _pause_submit(ctx, run_id, run.token, decision.wait)
    # SUBMITTING: mark the send in flight first, so a crash mid-send is never re-sent.
    if marked_app is None and not ctx.ledger.cas(
        run_id,
        states=ACTIVE_STATES,
        token=run.token,
        to=RunState.SUBMITTING,
        fields={"submit_inflight": True},
    ):
        return []
    sent = _send(ctx, run, inputs)
    if isinstance(sent, list):
        return sent
    if decision.probe:
        breaker.record_success(ctx)
    return _record_submitted(ctx, run, sent)


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
            task_lease(ctx),
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
        run_id, token, PRE_SUBMIT_STATES, task_lease(ctx), peek=breaker_state
    )
    return claimed, None


def _check_claimed(
    ctx: Context,
    run: Run,
    marked_app: App | None,
    inputs: Mapping[str, Any],
    files: Mapping[str, str],
) -> list[Next] | None:
    """End a claimed run that must not be sent: bad inputs (when the claim already
    marked the send), or a send that never reported back. None: carry on."""
    if marked_app is not None:
        # SUBMITTING, the send in flight: recorded by the claim.
        problems = validate_inputs(marked_app, inputs, files)
        if not problems:
            return None
        return finish(
            ctx,
            run.run_id,
            run.token,
            RunState.REJECTED,
            error="; ".join(problems),
            fields={"submit_inflight": False},
            run=run,
        )
    if run.get("submit_inflight"):
        # Only reachable through a sweeper re-arm of a send that never reported back.
        return finish(
            ctx,
            run.run_id,
            run.token,
            RunState.AMBIGUOUS,
            error="submit outcome unknown (worker lost)",
            run=run,
        )
    return None


def _check_against_app(
    ctx: Context, run: Run, inputs: Mapping[str, Any], files: Mapping[str, str]
) -> RunState | list[Next]:
    """Fetch the app and check a QUEUED run's inputs against it; the state to go on
    in (UPLOADING or SUBMITTING), or the follow-ups of a run that stops here."""
    run_id, token = run.run_id, run.token
    try:
        app = fetch_app(ctx, run["app_id"])
    except HatzNotFoundError:
        return finish(ctx, run_id, token, RunState.REJECTED, error="unknown app_id", run=run)
    except HatzValidationError as exc:
        return finish(ctx, run_id, token, RunState.REJECTED, error=error_text(exc), run=run)
    except (HatzError, ValueError) as exc:
        err = exc if isinstance(exc, HatzError) else HatzResponseError(str(exc))
        return _reschedule_submit(ctx, run, token, err)
    problems = validate_inputs(app, inputs, files)
    if problems:
        return finish(ctx, run_id, token, RunState.REJECTED, error="; ".join(problems), run=run)
    state = RunState.UPLOADING if files else RunState.SUBMITTING
    # SUBMITTING itself is recorded with the in-flight mark (one write, not two).
    if state is RunState.UPLOADING and not ctx.ledger.cas(
        run_id, states=ACTIVE_STATES, token=token, to=state
    ):
        return []
    return state


def _upload_files(
    ctx: Context, run: Run, inputs: dict[str, Any], files: Mapping[str, str]
) -> list[Next] | None:
    """Upload every file not uploaded yet, recording each ``file_uuid`` in ``inputs``
    (and the ledger); None when all are up, else the follow-ups of a run that stops."""
    run_id, token = run.run_id, run.token
    # Every local path is checked again here, right before the upload, and all of them
    # before the first upload: a refused one rejects the run with nothing uploaded.
    sources: dict[str, str] = {}
    for name, path in sorted(files.items()):
        if kind_of(path) is not RefKind.LOCAL:
            sources[name] = path  # a URL: read through its store's own checks (worker.files)
            continue
        try:
            sources[name] = str(allowed_path(path, ctx.settings))
        except FileRefusedError as exc:
            msg = f"file for input {name!r}: {exc}"
            return finish(ctx, run_id, token, RunState.REJECTED, error=msg, run=run)
    for name, source in sorted(sources.items()):
        if name in inputs:
            continue  # uploaded by an earlier attempt
        try:
            uploaded = upload_input(ctx.client, source, ctx.settings, scope_id=run["app_id"])
        except FileSourceError as exc:
            if exc.transient:  # a store or server that may answer later
                return _reschedule_submit(ctx, run, token, exc, inputs=inputs)
            msg = f"cannot read file for input {name!r}: {exc}"
            return finish(ctx, run_id, token, RunState.REJECTED, error=msg, run=run)
        except OSError as exc:
            msg = f"cannot read file for input {name!r}: {exc.strerror or exc}"
            return finish(ctx, run_id, token, RunState.REJECTED, error=msg, run=run)
        except (HatzValidationError, HatzNotFoundError) as exc:
            msg = f"upload of input {name!r} refused: {exc.detail}"
            return finish(ctx, run_id, token, RunState.REJECTED, error=msg, run=run)
        except HatzError as exc:
            return _reschedule_submit(ctx, run, token, exc, inputs=inputs)
        inputs[name] = uploaded.file_uuid
        # Each file renews the task's lease: a run with several large files is not
        # taken for lost (and re-armed) while it is still uploading.
        if not ctx.ledger.cas(
            run_id,
            states=ACTIVE_STATES,
            token=token,
            fields={"inputs": inputs},
            next_at=ctx.clock() + task_lease(ctx),
        ):
            return []
    return None


def _send(ctx: Context, run: Run, inputs: Mapping[str, Any]) -> SubmittedJob | list[Next]:
    """``POST /workflows/run`` once; the job, or the follow-ups of the failed send."""
    run_id, token = run.run_id, run.token
    try:
        return ctx.client.run_workflow(
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
        breaker.record_overage(ctx, error_text(exc))
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
            error=f"submit outcome unknown, not re-sent to avoid a duplicate job: "
            f"{error_text(exc)}",
            run=run,
        )


def _record_submitted(ctx: Context, run: Run, job: SubmittedJob) -> list[Next]:
    """Record the job id (SUBMITTED) and schedule the run's first poll, in one write."""
    run_id, token = run.run_id, run.token
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
    window = window_for(ctx, str(run.get("app_id") or ""))
    if window is not None:
        fields["poll_window"] = window.encode()
    hint = poll_hint({**run, **fields, "state": RunState.SUBMITTED.value, "submitted_at": now})
    poll = Next(task_names.POLL, (run_id, token, hint), first)
    push = ctx.outbox.encode([poll]) if ctx.outbox is not None else None
    # The job id exists only in this process now: outlast a Redis blip to record it.
    ok = ctx.ledger.cas_durable(
        task_lease(ctx),
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


def _reschedule_submit(
    ctx: Context, run: Run, token: int, exc: HatzError, **fields: Any
) -> list[Next]:
    attempts = int(run.get("submit_attempts") or 0) + 1
    age = ctx.clock() - float(run["created_at"])
    if age > ctx.settings.submit_retry_deadline:
        return finish(
            ctx, run.run_id, token, RunState.FAILED, error=f"gave up: {error_text(exc)}", run=run
        )
    delay = retry_delay(ctx, attempts, exc)
    ok = ctx.ledger.cas(
        run.run_id,
        states=PRE_SUBMIT_STATES,
        token=token,
        next_at=ctx.clock() + delay,
        fields={
            "submit_attempts": attempts,
            "submit_inflight": False,
            "last_error": error_text(exc),
            **fields,
        },
    )
    if not ok:
        return []
    log.warning("run %s: %s; retrying in %.1f s", run.run_id, error_text(exc), delay)
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
