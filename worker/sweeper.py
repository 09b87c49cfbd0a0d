"""The sweeper: re-arms runs whose next task was lost, and settles runs that cannot go on.

Celery on Redis can lose a scheduled (countdown) task: a worker SIGKILLed while
holding it, a Redis restart without persistence, a flushed queue. Every
non-terminal run (and every terminal run whose callback is still due) sits in
``P:schedule`` scored by when its next task is due; a run overdue by more than
``HATZ_SWEEP_GRACE`` gets a fresh task with a bumped token, which also retires
the lost one should it ever surface. A run lost mid-submit becomes AMBIGUOUS
instead: its POST may have created a job, and it is never re-sent.

Runs on celery beat every ``HATZ_SWEEP_INTERVAL`` seconds; a Redis lease makes
concurrent sweepers (several beats) harmless.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from worker import task_names
from worker.context import Context
from worker.ledger import POLLING_STATES, PRE_SUBMIT_STATES, TERMINAL_STATES, RunState
from worker.pipeline import Next, finish

log = logging.getLogger(__name__)

_PENDING_CALLBACK = frozenset({"pending", "sending", "retrying"})


@dataclass
class SweepReport:
    """What one sweep did."""

    ran: bool = True
    rearmed: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    steps: list[Next] = field(default_factory=list)


def _rearm(ctx: Context, run_id: str, token: int, token_field: str, task: str) -> list[Next]:
    states = (
        TERMINAL_STATES if token_field == "callback_token" else (PRE_SUBMIT_STATES | POLLING_STATES)
    )
    result = ctx.ledger.cas(
        run_id,
        states=states,
        token=token,
        token_field=token_field,
        bump_token=True,
        next_at=ctx.clock() + ctx.settings.sweep_grace + 60.0,
    )
    return [Next(task, (run_id, result.token))] if result else []


def sweep(ctx: Context, *, limit: int = 1000) -> SweepReport:
    """One pass over overdue runs; returns the tasks to publish in ``report.steps``."""
    owner = uuid.uuid4().hex
    lease_ms = max(1000, int(ctx.settings.sweep_interval * 900))
    if not ctx.redis.set(ctx.keys.lease("sweeper"), owner, nx=True, px=lease_ms):
        return SweepReport(ran=False)
    report = SweepReport()
    for run_id, _due in ctx.ledger.due(ctx.clock() - ctx.settings.sweep_grace, limit=limit):
        run = ctx.ledger.get(run_id)
        if run is None:
            ctx.redis.zrem(ctx.keys.schedule, run_id)
            report.dropped.append(run_id)
            continue
        state = run.state
        if state.is_terminal:
            if run.get("callback_state") in _PENDING_CALLBACK:
                token = int(run.get("callback_token") or 0)
                steps = _rearm(ctx, run_id, token, "callback_token", task_names.DELIVER_CALLBACK)
            else:
                ctx.ledger.cas(run_id, states=TERMINAL_STATES, unschedule=True)
                report.dropped.append(run_id)
                continue
        elif state in PRE_SUBMIT_STATES and run.get("submit_inflight"):
            steps = finish(
                ctx,
                run_id,
                run.token,
                RunState.AMBIGUOUS,
                error="submit outcome unknown: the worker was lost while sending; not re-sent",
            )
            after = ctx.ledger.get(run_id)
            if after is not None and after.state is RunState.AMBIGUOUS:
                report.ambiguous.append(run_id)
            report.steps += steps
            continue
        elif state in PRE_SUBMIT_STATES:
            steps = _rearm(ctx, run_id, run.token, "token", task_names.SUBMIT)
        else:
            steps = _rearm(ctx, run_id, run.token, "token", task_names.POLL)
        if steps:
            report.rearmed.append(run_id)
            report.steps += steps
    if report.rearmed or report.ambiguous:
        log.warning(
            "sweeper: re-armed %d run(s), marked %d ambiguous",
            len(report.rearmed),
            len(report.ambiguous),
        )
    return report
