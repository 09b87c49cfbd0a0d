"""Canceling a run on request: our side stops; the Hatz API has no remote cancel."""

from __future__ import annotations

from worker.context import Context
from worker.runs.finish import end_run
from worker.store.ledger import POLLING_STATES, PRE_SUBMIT_STATES, RunState
from worker.store.outbox import Next


def cancel(ctx: Context, run_id: str) -> tuple[bool, list[Next]]:
    """Stop polling a run and mark it CANCELED; ``(False, [])`` if it had already ended.

    The API has no remote cancel: a submitted job keeps running at Hatz; only
    our side stops. The follow-ups: its ``workflow_run.canceled`` callback, when
    the run asked for that event, and its batch's tick (the slot is free).
    """
    ctx.ledger.require(run_id)
    return end_run(
        ctx,
        run_id,
        None,
        RunState.CANCELED,
        error="canceled by request (the Hatz job, if submitted, was not stopped)",
        states=PRE_SUBMIT_STATES | POLLING_STATES,
    )
