"""The poll step: ask Hatz for a run's job once, then finish the run or poll again.

One chain per run: each poll schedules the next with a compare-and-set that
moves the run's token on, so a duplicated poll message finds nothing to do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from worker import task_names
from worker.context import Context
from worker.errors import (
    HatzAPIError,
    HatzAuthError,
    HatzCreditOverageError,
    HatzError,
    HatzNotFoundError,
)
from worker.hatz.types import Job, StepOutput
from worker.ops import log_context
from worker.runs.documents import collect_documents
from worker.runs.finish import end_run, error_text, finish
from worker.runs.poll_hints import poll_hint, record_from_hint
from worker.runs.poll_plan import Window, jittered_delay, next_poll
from worker.runs.timing import jittered, task_lease
from worker.store.durations import Duration, record_duration
from worker.store.ledger import POLLING_STATES, Run, RunState
from worker.store.outbox import Next
from worker.store.poll_log import poll_log_field
from worker.webhooks import events

_MAX_OUTPUT_CHARS = 100_000


def poll_step(ctx: Context, run_id: str, token: int, hint: Any = None) -> list[Next]:
    """Poll one run's job once; finish it or reschedule the next poll (one chain per run).

    With a ``hint`` (:func:`~worker.runs.poll_hints.poll_hint`, put in the message
    by the step that scheduled it) the poll reads nothing before its ``GET``: its
    one ledger write, the compare-and-set that records the answer and schedules
    the next poll, checks the token, so a stale or duplicate message changes
    nothing (it costs one ``GET``). Without a hint (a sweeper re-arm, an older
    message), or when the message is so late that the sweeper may have re-armed
    the run meanwhile, the poll first claims the run, as submit does, and skips
    the ``GET`` when stale.
    """
    now = ctx.clock()
    subject = _subject(ctx, run_id, token, hint, now)
    if subject is None:
        return []
    run, record = subject
    token = run.token
    log_context.bind(app_id=run.get("app_id"), job_id=run.get("job_id"))
    base = _poll_fields(ctx, run, now)
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
    except HatzError as exc:
        return _unanswered(ctx, run, record, {**base, **_logged(base, now, error_text(exc))}, exc)
    progress = {
        **base,
        **_logged(base, now, job.status),
        "hatz_status": job.status,
        "steps_done": job.steps_done,
        "number_of_steps": job.number_of_steps or 0,
        "not_found_count": 0,
    }
    if job.status == "complete":
        return _completed(ctx, run, record, job, progress)
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
    return _in_progress(ctx, run, record, job, progress)


def _subject(
    ctx: Context, run_id: str, token: int, hint: Any, now: float
) -> tuple[Run, Run | None] | None:
    """The run to poll and its full record when this poll read it (the claim's, or a
    quiet hint's, which is all that ending it needs); None when the message is stale."""
    run = record_from_hint(run_id, token, hint)
    if run is not None and now - float(run.get("due_at") or now) > ctx.settings.sweep_grace / 2:
        run = None
    if run is None:
        claimed = ctx.ledger.claim(run_id, token, POLLING_STATES, task_lease(ctx))
        return None if claimed is None else (claimed, claimed)
    if run.get("quiet"):
        return run, run  # no callback, no batch
    return run, None


def _poll_fields(ctx: Context, run: Run, now: float) -> dict[str, Any]:
    """What every poll records: its count, when it worked, how late it came."""
    base: dict[str, Any] = {
        "poll_count": int(run.get("poll_count") or 0) + 1,
        "claimed_at": now,  # the sweeper's stall detection: a task worked on this run
    }
    due = run.get("due_at")
    if due:
        base["last_poll_lateness"] = round(max(0.0, now - float(due)), 4)
        ctx.metrics.poll_lateness(base["last_poll_lateness"])
    return base


def _logged(base: dict[str, Any], now: float, status: str) -> dict[str, str]:
    """The poll's entry in the run's recent-poll log (:mod:`worker.store.poll_log`)."""
    return poll_log_field(base["poll_count"], now, status, base.get("last_poll_lateness"))


def _unanswered(
    ctx: Context, run: Run, record: Run | None, base: dict[str, Any], exc: HatzError
) -> list[Next]:
    """The ``GET`` failed: poll again later, or fail the run when its job stays unknown."""
    token = run.token
    if isinstance(exc, HatzNotFoundError):
        misses = int(run.get("not_found_count") or 0) + 1
        if misses >= ctx.settings.not_found_limit:
            return finish(
                ctx, run.run_id, token, RunState.FAILED, error=exc.detail, fields=base, run=record
            )
        fields = {**base, "not_found_count": misses, "last_error": error_text(exc)}
        return _reschedule_poll(ctx, run, token, _next_interval(ctx, run, None), fields)
    interval = _next_interval(ctx, run, None)
    if isinstance(exc, HatzCreditOverageError | HatzAuthError):
        interval = max(interval, ctx.settings.overage_pause)
    elif isinstance(exc, HatzAPIError) and exc.retry_after:
        interval = max(interval, min(exc.retry_after, ctx.settings.poll_max_interval))
    return _reschedule_poll(ctx, run, token, interval, {**base, "last_error": error_text(exc)})


def _completed(
    ctx: Context, run: Run, record: Run | None, job: Job, progress: dict[str, Any]
) -> list[Next]:
    """The job is complete: collect its documents and finish the run COMPLETED."""
    try:
        documents = collect_documents(ctx, job)
    except HatzError as exc:
        fields = {**progress, "last_error": f"presigned-url: {error_text(exc)}"}
        return _reschedule_poll(ctx, run, run.token, ctx.settings.poll_interval, fields)
    fields = {
        **progress,
        "step_outputs": [_summarise_step(s) for s in job.step_outputs],
        "documents": documents,
        "last_error": "",
    }
    moved, steps = end_run(
        ctx, run.run_id, run.token, RunState.COMPLETED, fields=fields, run=record
    )
    if moved and ctx.settings.poll_target_latency > 0 and run.get("app_id"):
        _learn(ctx, run, job)
    return steps


def _learn(ctx: Context, run: Run, job: Job) -> None:
    """Add this completed run's duration to its app's history (the learned schedule's input).

    Measured by Hatz's own clock (the job's ``start_time`` to its ``end_time``, and to
    its first step's start), so neither our polls' timing nor clock skew shows in it;
    from our own stamps when the API leaves those out.
    """
    submitted_at = float(run.get("submitted_at") or ctx.clock())
    if job.start_time is not None and job.end_time is not None:
        to_complete = max(0.0, (job.end_time - job.start_time) / 1000)
    else:
        to_complete = max(0.0, ctx.clock() - submitted_at)
    first = job.step_outputs[0].start_time if job.step_outputs else None
    to_running = None
    if first is not None and job.start_time is not None:
        to_running = max(0.0, (first - job.start_time) / 1000)
    record_duration(
        ctx.redis,
        ctx.keys,
        str(run["app_id"]),
        Duration(to_complete, to_running),
        ttl=ctx.settings.run_retention,
    )


def _in_progress(
    ctx: Context, run: Run, record: Run | None, job: Job, progress: dict[str, Any]
) -> list[Next]:
    """The job still runs: record its progress (RUNNING once it started) and poll again."""
    started: list[Next] = []
    if job.status == "running" and run.state is RunState.SUBMITTED:
        progress["state_to"] = RunState.RUNNING
        full = record or ctx.ledger.get(run.run_id)  # once per run: its callback settings
        if full is not None and events.wants_started(full):
            callback_token = int(full.get("callback_token") or 0)
            started.append(Next(task_names.DELIVER_CALLBACK, (run.run_id, callback_token)))
    interval, countdown = _planned_next(ctx, run, job)
    return _reschedule_poll(
        ctx, run, run.token, interval, progress, also=started, countdown=countdown
    )


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


def _failure_reason(job: Job) -> str:
    for step in job.step_outputs:
        if step.status == "failed":
            detail = step.output_data if isinstance(step.output_data, str) else ""
            return f"step {step.step_id} failed" + (f": {detail}" if detail else "")
    return "job failed"


def _planned_next(ctx: Context, run: Run, job: Job) -> tuple[float, float | None]:
    """The next interval and, when the app's learned window places the next poll, its
    countdown (None: today's schedule, jittered as always)."""
    window = Window.decode(run.get("poll_window"))
    if window is not None:
        submitted_at = float(run.get("submitted_at") or ctx.clock())
        current = float(run.get("poll_interval") or ctx.settings.poll_interval)
        planned = next_poll(ctx.clock() - submitted_at, current, window, ctx.settings)
        if planned is not None:
            delay, interval = planned
            return interval, jittered_delay(delay, window, ctx.settings)
    return _next_interval(ctx, run, job), None


def _next_interval(ctx: Context, run: Run, job: Job | None) -> float:
    s = ctx.settings
    current = float(run.get("poll_interval") or s.poll_interval)
    progressed = job is not None and (
        job.status != run.get("hatz_status") or job.steps_done != int(run.get("steps_done") or 0)
    )
    if progressed:
        return s.poll_interval
    return min(s.poll_max_interval, current * s.poll_backoff)


def _reschedule_poll(
    ctx: Context,
    run: Run,
    token: int,
    interval: float,
    fields: Mapping[str, Any],
    also: Sequence[Next] = (),
    countdown: float | None = None,
) -> list[Next]:
    """Record this poll and schedule the next, in one compare-and-set that also moves
    the token on (``token -> token+1``): a duplicate of this message finds it moved.

    ``also``: other tasks this poll starts (its ``workflow_run.started`` delivery);
    pushed with the same write, so no crash can record the change and lose them.
    ``countdown``: a planned one (:mod:`worker.runs.poll_plan`); else ``interval`` jittered.
    """
    if countdown is None:
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
    push = ctx.outbox.encode(outgoing) if outgoing and ctx.outbox is not None else None
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
