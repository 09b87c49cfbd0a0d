"""The Python API for applications that enqueue runs.

>>> from worker import enqueue_run, wait_for_run
>>> run_id = enqueue_run("5ae6e9dd-...", {"topic": "ml"}, files={"report": "r.csv"})
>>> run = wait_for_run(run_id, timeout=600)
>>> run.state, run["documents"]
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from celery import Celery

from worker import task_names
from worker.context import Context, get_context
from worker.errors import FileRefusedError, InvalidRunError
from worker.runs.cancel import cancel
from worker.runs.finish import finish
from worker.runs.request import check_request
from worker.runs.submit import submit_hint
from worker.store.ledger import Run, RunState, fingerprint
from worker.store.outbox import Next
from worker.webhooks.ssrf import check_callback_url


def enqueue_run(
    app_id: str,
    inputs: Mapping[str, Any] | None = None,
    *,
    files: Mapping[str, str | os.PathLike[str]] | None = None,
    callback_url: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    is_draft_app: bool = False,
    idempotency_key: str | None = None,
    events: Iterable[str] | None = None,
    timeout: float | None = None,
    context: Context | None = None,
    celery: Celery | None = None,
) -> str:
    """Record a run in the ledger and queue it; return its ``run_id``.

    ``files`` maps a ``file_upload`` input to a local path the worker can read;
    it is uploaded and replaced by its ``file_uuid``. With ``idempotency_key``,
    the same key and parameters return the same run (no second paid run); the
    same key with other parameters raises :class:`IdempotencyConflictError`.
    ``timeout`` (seconds) overrides ``HATZ_RUN_TIMEOUT`` for this run.
    Bad input raises :class:`InvalidRunError` listing every problem; nothing is
    enqueued then.
    """
    ctx = context or get_context()
    params = _checked_params(
        ctx, app_id, inputs, files, callback_url, metadata, is_draft_app, events, timeout
    )
    return _record(ctx, params, idempotency_key, celery)


def enqueue_run_rejecting_refused_files(
    *, context: Context, celery: Celery | None = None, **request: Any
) -> str:
    """:func:`enqueue_run` for ``send_task("hatz.run_workflow")``: a file refused by
    ``HATZ_FILE_ROOTS`` gives a REJECTED run (nothing uploaded) instead of an error.

    A producer that sent a task may never read its result, so the refusal is
    recorded where it looks (``hatz-worker status``, the run's
    ``workflow_run.rejected`` callback). Any other problem raises as usual.
    """
    try:
        return enqueue_run(context=context, celery=celery, **request)
    except FileRefusedError as exc:
        refused = exc
    params = _checked_params(
        context,
        request.get("app_id"),
        request.get("inputs"),
        None,
        request.get("callback_url"),
        request.get("metadata"),
        request.get("is_draft_app", False),
        request.get("events"),
        request.get("timeout"),
    )
    run_id, created = context.ledger.create(
        params,
        idempotency_key=request.get("idempotency_key"),
        params_fingerprint=fingerprint(params),
    )
    if created:
        steps = finish(
            context,
            run_id,
            0,
            RunState.REJECTED,
            error="; ".join(refused.problems),
            states=frozenset({RunState.QUEUED}),
        )
        if steps:
            from worker.taskqueue.app import publish

            publish(steps, celery)
    return run_id


def _checked_params(
    ctx: Context,
    app_id: Any,
    inputs: Mapping[str, Any] | None,
    files: Mapping[str, str | os.PathLike[str]] | None,
    callback_url: str | None,
    metadata: Mapping[str, Any] | None,
    is_draft_app: bool,
    events: Iterable[str] | None,
    timeout: float | None,
) -> dict[str, Any]:
    """The run's parameters as recorded; raise :class:`InvalidRunError` (or, when every
    problem is a refused file, :class:`FileRefusedError`) listing every problem."""
    event_list = list(events) if events is not None else None
    checked = check_request(
        app_id, inputs or {}, files or {}, metadata, event_list, settings=ctx.settings
    )
    problems = checked.problems
    if callback_url:
        try:
            check_callback_url(callback_url, ctx.settings)
        except InvalidRunError as exc:
            problems += exc.problems
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        problems.append("timeout must be a positive number of seconds")
    if problems and len(problems) == len(checked.refused):
        raise FileRefusedError(problems)
    if problems:
        raise InvalidRunError(problems)
    return {
        "app_id": app_id,
        "inputs": checked.inputs,
        "files": checked.files,
        "callback_url": callback_url or "",
        "metadata": dict(metadata or {}),
        "is_draft_app": bool(is_draft_app),
        "events": event_list,
        "run_timeout": timeout,
    }


def _record(
    ctx: Context, params: dict[str, Any], idempotency_key: str | None, celery: Celery | None
) -> str:
    """Record the run (or find its idempotent twin) and publish its submit when new."""
    run_id, created = ctx.ledger.create(
        params,
        idempotency_key=idempotency_key,
        params_fingerprint=fingerprint(params),
    )
    if created:
        from worker.taskqueue.app import publish

        publish([Next(task_names.SUBMIT, (run_id, 0, submit_hint(params)))], celery)
    return run_id


def get_run(run_id: str, *, context: Context | None = None) -> Run:
    """The run's record; raises :class:`RunNotFoundError` when unknown."""
    return (context or get_context()).ledger.require(run_id)


def list_runs(
    *, state: RunState | str | None = None, limit: int = 100, context: Context | None = None
) -> list[Run]:
    """Recent runs, newest first, optionally only those in ``state``."""
    ctx = context or get_context()
    wanted = RunState(state.upper()) if isinstance(state, str) else state
    runs: list[Run] = []
    for run_id in ctx.ledger.run_ids(limit=10_000 if wanted else limit):
        run = ctx.ledger.get(run_id)
        if run is None or (wanted is not None and run.state is not wanted):
            continue
        runs.append(run)
        if len(runs) >= limit:
            break
    return runs


def wait_for_run(
    run_id: str,
    *,
    timeout: float | None = None,
    interval: float = 0.5,
    on_update: Callable[[Run], None] | None = None,
    context: Context | None = None,
) -> Run:
    """Block until the run is terminal; return it. Raises TimeoutError after ``timeout`` s.

    ``on_update`` is called with the record on every check (for progress displays).
    """
    ctx = context or get_context()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        run = ctx.ledger.require(run_id)
        if on_update is not None:
            on_update(run)
        if run.state.is_terminal:
            return run
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"run {run_id} still {run.state.value} after {timeout} s")
        time.sleep(interval)


def cancel_run(
    run_id: str, *, context: Context | None = None, celery: Celery | None = None
) -> bool:
    """Stop polling and mark the run CANCELED; False if it had already finished.

    The Hatz API has no remote cancel: a job already submitted keeps running
    (and spending credits) at Hatz; only hatz-worker stops following it. A run
    that asked for ``workflow_run.canceled`` gets that callback.
    """
    ok, steps = cancel(context or get_context(), run_id)
    if steps:
        from worker.taskqueue.app import publish

        publish(steps, celery)
    return ok
