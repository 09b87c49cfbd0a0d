"""Ending a run: the compare-and-set to a terminal state and the follow-ups it owes.

The follow-ups are the run's callback delivery (when its event filter wants
this end) and its batch's tick (the run's concurrency slot is free). A run that
completes with documents while ``HATZ_ARCHIVE_URL`` is set copies them to the
archive first (:mod:`worker.runs.archive`), which then sends the callback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from worker import task_names
from worker.context import Context
from worker.store.ledger import POLLING_STATES, PRE_SUBMIT_STATES, Run, RunState
from worker.store.outbox import Next
from worker.webhooks import events

log = logging.getLogger(__name__)

#: Characters of an error message kept in a run record.
MAX_ERROR_CHARS = 500
_CALLBACK_GRACE = 120.0


def error_text(exc: BaseException | str) -> str:
    """An error as one short line for a run record: ``Type: message``, capped."""
    text = str(exc) if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR_CHARS]


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
    return end_run(ctx, run_id, token, to, error=error, fields=fields, states=states, run=run)[1]


def end_run(
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
        changes["error"] = error[:MAX_ERROR_CHARS]
    if has_callback:
        changes["callback_state"] = "pending"
    archiving = to is RunState.COMPLETED and bool(
        ctx.settings.archive_url and changes.get("documents")
    )
    if archiving:
        changes["archive_state"] = "pending"
    result = ctx.ledger.cas(
        run_id,
        states=states if states is not None else (PRE_SUBMIT_STATES | POLLING_STATES),
        token=token,
        to=to,
        fields=changes,
        # A run with a callback stays on the schedule until it is delivered, so the
        # sweeper can re-send a delivery whose task was lost.
        # So does a run whose documents are still to archive.
        next_at=ctx.clock() + _CALLBACK_GRACE if has_callback or archiving else None,
    )
    if not result:
        return False, []
    log.info("run %s -> %s%s", run_id, to.value, f": {error}" if error else "")
    if archiving:
        archive = Next(task_names.ARCHIVE, (run_id, int(run.get("archive_token") or 0)))
        return True, [archive, *_follow_ups(run_id, run, False)]
    return True, _follow_ups(run_id, run, has_callback)


def _follow_ups(run_id: str, run: Run, has_callback: bool) -> list[Next]:
    """The callback delivery and the batch tick that an ended run owes."""
    steps: list[Next] = []
    if has_callback:
        steps.append(
            Next(task_names.DELIVER_CALLBACK, (run_id, int(run.get("callback_token") or 0)))
        )
    if run.get("batch_id"):
        # Frees the run's concurrency slot; the batch sweep recovers a lost tick.
        steps.append(Next(task_names.BATCH_TICK, (str(run["batch_id"]),)))
    return steps
