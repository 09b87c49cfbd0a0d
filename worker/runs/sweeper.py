"""The sweeper: re-arms runs whose next task was lost, and settles runs that cannot go on.

Celery on Redis can lose a scheduled (countdown) task: a worker SIGKILLed while
holding it, a Redis restart without persistence, a flushed queue. Every
non-terminal run (and every terminal run whose callback is still due) sits in
``P:schedule`` scored by when its next task is due; a run overdue by more than
``HATZ_SWEEP_GRACE`` gets a fresh task with a bumped token, which also retires
the lost one should it ever surface. A run lost mid-submit becomes AMBIGUOUS
instead: its POST may have created a job, and it is never re-sent.

It also settles runs that cannot go on: a run whose tasks failed with an
unexpected error ``HATZ_INTERNAL_ERROR_LIMIT`` times (see
:mod:`worker.runs.task_guard`) ends FAILED (AMBIGUOUS if its submit was in flight)
with that error; and it reports *stalled* runs, which no task has worked on for
``HATZ_STALL_AFTER`` seconds although the sweeper keeps re-arming them (no
worker consumes their queue, or their tasks keep vanishing).

Each sweep also trims the time-scored indexes (``P:runs``, ``P:batches``,
``P:callbacks:failed``) of entries older than ``HATZ_RUN_RETENTION``
(:mod:`worker.store.retention`), so Redis does not grow with runs nobody lists.

A large backlog is handled in batches of ``HATZ_SWEEP_BATCH`` until nothing is
overdue or the sweeper's lease is nearly spent; the next sweep continues.

Runs on celery beat every ``HATZ_SWEEP_INTERVAL`` seconds. A Redis lease lets
one sweeper work at a time, and even two overlapping sweeps are harmless: each
re-arm is a compare-and-set on the run's token, so only one of them wins and
only the winner publishes a task.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from worker import task_names
from worker.context import Context
from worker.runs.archive import ACTIVE_ARCHIVE_STATES
from worker.runs.finish import finish
from worker.store.ledger import POLLING_STATES, PRE_SUBMIT_STATES, TERMINAL_STATES, Run, RunState
from worker.store.outbox import Next
from worker.store.retention import trim_indexes
from worker.webhooks.delivery import ACTIVE_CALLBACK_STATES, index_dead_letter

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What one sweep did."""

    ran: bool = True
    rearmed: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)
    stalled: list[str] = field(default_factory=list)
    partial: bool = False
    steps: list[Next] = field(default_factory=list)
    trimmed: dict[str, int] = field(default_factory=dict)


def _rearm(
    ctx: Context, run_id: str, token: int, token_field: str, task: str, rearms: int
) -> list[Next]:
    states = TERMINAL_STATES if token_field != "token" else (PRE_SUBMIT_STATES | POLLING_STATES)
    result = ctx.ledger.cas(
        run_id,
        states=states,
        token=token,
        token_field=token_field,
        bump_token=True,
        next_at=ctx.clock() + ctx.settings.sweep_grace + ctx.settings.task_lease(),
        fields={"sweeper_rearms": rearms + 1},
    )
    return [Next(task, (run_id, result.token))] if result else []


def is_stalled(ctx: Context, run: Run) -> bool:
    """True for a non-terminal run no task has claimed for ``HATZ_STALL_AFTER`` seconds."""
    if run.state.is_terminal:
        return False
    last = run.get("claimed_at") or run.get("created_at") or 0.0
    return ctx.clock() - float(last) > ctx.settings.stall_after


def _settle_broken(ctx: Context, run: Run) -> list[Next]:
    """End a run whose tasks keep failing unexpectedly, with the error they raise."""
    error = f"gave up after {run.get('internal_errors')} internal errors: {run.get('last_error')}"
    if run.state.is_terminal:
        # Its callback delivery keeps crashing: dead-letter it, the run stays as it is
        # (list entry first, then the record: see callbacks.index_dead_letter).
        index_dead_letter(ctx, run.run_id)
        ctx.ledger.cas(
            run.run_id,
            states=TERMINAL_STATES,
            token=int(run.get("callback_token") or 0),
            token_field="callback_token",
            unschedule=True,
            fields={"callback_state": "failed", "callback_error": error},
        )
        return []
    to = (
        RunState.AMBIGUOUS
        if run.state in PRE_SUBMIT_STATES and run.get("submit_inflight")
        else RunState.FAILED
    )
    return finish(ctx, run.run_id, run.token, to, error=error, states=frozenset({run.state}))


def _sweep_one(ctx: Context, run_id: str, cutoff: float, report: SweepReport) -> bool:
    """Handle one overdue run; False when it was left as it is (it stays due)."""
    run = ctx.ledger.get(run_id)
    if run is None:
        ctx.redis.zrem(ctx.keys.schedule, run_id)
        report.dropped.append(run_id)
        return True
    next_at = run.get("next_at")
    if next_at is not None and float(next_at) > cutoff:
        # The schedule row was read before a task moved the run on (e.g. it just
        # completed and its callback is being sent): not overdue any more. Make sure
        # the row says so too (GT: never move it back), or this pass would see it again.
        ctx.redis.zadd(ctx.keys.schedule, {run_id: float(next_at)}, gt=True)
        return True
    state = run.state
    rearms = int(run.get("sweeper_rearms") or 0)
    pending_callback = state.is_terminal and run.get("callback_state") in ACTIVE_CALLBACK_STATES
    if int(run.get("internal_errors") or 0) >= ctx.settings.internal_error_limit and (
        pending_callback or not state.is_terminal
    ):
        report.steps += _settle_broken(ctx, run)
        report.settled.append(run_id)
        return True
    if state.is_terminal:
        if run.get("archive_state") in ACTIVE_ARCHIVE_STATES:
            # Its archive copy was lost: copy again (the callback follows the archive).
            token = int(run.get("archive_token") or 0)
            steps = _rearm(ctx, run_id, token, "archive_token", task_names.ARCHIVE, rearms)
        elif pending_callback:
            token = int(run.get("callback_token") or 0)
            steps = _rearm(
                ctx, run_id, token, "callback_token", task_names.DELIVER_CALLBACK, rearms
            )
        else:
            ctx.ledger.cas(run_id, states=TERMINAL_STATES, unschedule=True)
            report.dropped.append(run_id)
            return True
    elif state in PRE_SUBMIT_STATES and run.get("submit_inflight"):
        # Only from a pre-submit state: the send may have just reported back
        # (SUBMITTED, same token) since this sweep read the run.
        steps = finish(
            ctx,
            run_id,
            run.token,
            RunState.AMBIGUOUS,
            error="submit outcome unknown: the worker was lost while sending; not re-sent",
            states=PRE_SUBMIT_STATES,
        )
        after = ctx.ledger.get(run_id)
        if after is not None and after.state is RunState.AMBIGUOUS:
            report.ambiguous.append(run_id)
        report.steps += steps
        return after is None or after.state is RunState.AMBIGUOUS
    else:
        task = task_names.SUBMIT if state in PRE_SUBMIT_STATES else task_names.POLL
        steps = _rearm(ctx, run_id, run.token, "token", task, rearms)
        if steps and is_stalled(ctx, run):
            report.stalled.append(run_id)
    if not steps:
        return False
    report.rearmed.append(run_id)
    report.steps += steps
    return True


def sweep(ctx: Context, *, limit: int | None = None) -> SweepReport:
    """One pass over overdue runs, in batches; the tasks to publish are in ``report.steps``.

    ``limit`` overrides ``HATZ_SWEEP_BATCH``. The pass stops when nothing overdue
    is left or the lease is nearly spent (``report.partial``).
    """
    owner = uuid.uuid4().hex
    lease_ms = max(1000, int(ctx.settings.sweep_interval * 900))
    if not ctx.redis.set(ctx.keys.lease("sweeper"), owner, nx=True, px=lease_ms):
        return SweepReport(ran=False)
    report = SweepReport()
    batch = limit or ctx.settings.sweep_batch
    deadline = time.monotonic() + lease_ms / 1000 * 0.8
    cutoff = ctx.clock() - ctx.settings.sweep_grace
    skipped = 0  # runs left due (a concurrent change won): page past them
    while True:
        rows = ctx.ledger.due(cutoff, limit=batch, offset=skipped)
        if not rows:
            break
        for run_id, _due in rows:
            if not _sweep_one(ctx, run_id, cutoff, report):
                skipped += 1
        if time.monotonic() > deadline:
            report.partial = True
            break
    report.trimmed = trim_indexes(
        ctx.redis, ctx.keys, now=ctx.clock(), retention=ctx.settings.run_retention
    )
    if report.rearmed or report.ambiguous or report.settled:
        log.warning(
            "sweeper: re-armed %d run(s), marked %d ambiguous, settled %d%s",
            len(report.rearmed),
            len(report.ambiguous),
            len(report.settled),
            " (more left for the next sweep)" if report.partial else "",
        )
    if report.stalled:
        log.warning(
            "sweeper: %d run(s) stalled: no task worked on them for %g s although re-armed "
            "(is a worker consuming their queue?): %s",
            len(report.stalled),
            ctx.settings.stall_after,
            ", ".join(report.stalled[:20]),
        )
    return report
