"""The Python API for applications that enqueue runs.

>>> from worker import enqueue_run, wait_for_run
>>> run_id = enqueue_run("5ae6e9dd-...", {"topic": "ml"}, files={"report": "r.csv"})
>>> run = wait_for_run(run_id, timeout=600)
>>> run.state, run["documents"]
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery

from worker import task_names
from worker.context import Context, get_context
from worker.errors import FileRefusedError, IdempotencyConflictError, InvalidRunError
from worker.files.sources import check_urls
from worker.files.sources import upload_here as upload_here_now
from worker.runs.cancel import cancel
from worker.runs.finish import finish
from worker.runs.request import check_request
from worker.runs.submit import submit_hint
from worker.store.ledger import Created, Run, RunState, fingerprint
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
    upload_here: bool = False,
    context: Context | None = None,
    celery: Celery | None = None,
) -> str:
    """Record a run in the ledger and queue it; return its ``run_id``.

    ``files`` maps a ``file_upload`` input to a local path, an ``https://`` URL or
    an object-store URL (``s3://``, ``gs://``, ``az://``, …); it is uploaded and
    replaced by its ``file_uuid``. By default a worker reads and uploads it (a
    path must then exist on the worker's host); with ``upload_here=True`` this
    process uploads every file before the run is recorded, so the worker needs
    no access to them (an unreadable one raises :class:`InvalidRunError`, a Hatz
    API failure the client's :class:`HatzError`). With ``idempotency_key``,
    the same key and parameters return the same run (no second paid run); the
    same key with other parameters raises :class:`IdempotencyConflictError`.
    ``timeout`` (seconds) overrides ``HATZ_RUN_TIMEOUT`` for this run.
    Bad input raises :class:`InvalidRunError` listing every problem; nothing is
    enqueued then.
    """
    run_id, _created = create_run(
        app_id,
        inputs,
        files=files,
        callback_url=callback_url,
        metadata=metadata,
        is_draft_app=is_draft_app,
        idempotency_key=idempotency_key,
        events=events,
        timeout=timeout,
        upload_here=upload_here,
        context=context,
        celery=celery,
    )
    return run_id


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


def create_run(
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
    client: str | None = None,
    request_fingerprint: str | None = None,
    upload_here: bool = False,
    context: Context | None = None,
    celery: Celery | None = None,
) -> Created:
    r""":func:`enqueue_run`, returning ``(run_id, created)``; ``created`` is False when an
    idempotency key returned an existing run. (A :class:`~worker.store.ledger.Created`:
    its ``record`` is the new run as written, for a caller that answers with it.)

    ``client`` (an HTTP API client's name) is recorded on the run, indexes it
    among that client's runs and scopes ``idempotency_key`` to that client.
    ``request_fingerprint`` replaces the parameters' hash when comparing an
    idempotent request with the first one (e.g. a hash of the request and its
    files' contents, where uploads give new ``file_uuid``\ s each time).
    """
    ctx = context or get_context()
    params = _checked_params(
        ctx, app_id, inputs, files, callback_url, metadata, is_draft_app, events, timeout
    )
    if client is not None:
        params["client"] = client
        if idempotency_key:
            idempotency_key = client_idempotency_key(client, idempotency_key)
    # The fingerprint is of the request as made (paths, URLs), not of upload ids; it is
    # kept only beside an idempotency key, so without one there is none to compute.
    params_fingerprint = request_fingerprint or (fingerprint(params) if idempotency_key else "")
    if upload_here and params["files"]:
        uploaded = upload_here_now(ctx.client, params["files"], ctx.settings, scope_id=app_id)
        params = {**params, "inputs": {**params["inputs"], **uploaded}, "files": {}}
    created = ctx.ledger.create(
        params,
        idempotency_key=idempotency_key,
        params_fingerprint=params_fingerprint,
        indexed_in=ctx.keys.client_runs(client) if client is not None else "",
    )
    if created.created:
        from worker.taskqueue.app import publish

        publish([Next(task_names.SUBMIT, (created.run_id, 0, submit_hint(params)))], celery)
    return created


def check_run(
    app_id: str,
    inputs: Mapping[str, Any] | None = None,
    *,
    files: Mapping[str, str | os.PathLike[str]] | None = None,
    callback_url: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    events: Iterable[str] | None = None,
    timeout: float | None = None,
    context: Context | None = None,
) -> None:
    """Check a run request as :func:`enqueue_run` would, recording nothing.

    Raises :class:`InvalidRunError` listing every problem. For a caller with
    costly work to do before it enqueues (uploading the request's files).
    """
    ctx = context or get_context()
    _checked_params(ctx, app_id, inputs, files, callback_url, metadata, False, events, timeout)


def find_idempotent_run(
    idempotency_key: str,
    *,
    request_fingerprint: str,
    client: str | None = None,
    context: Context | None = None,
) -> str | None:
    """The run an earlier request with this key made, or None if the key is new.

    Lets a caller skip costly preparation (uploading a request's files) for a
    retry. Raises :class:`IdempotencyConflictError` when the earlier request
    differed. :func:`create_run` checks again, atomically, when it records.
    """
    ctx = context or get_context()
    key = client_idempotency_key(client, idempotency_key) if client else idempotency_key
    found = ctx.ledger.idempotent_run(key)
    if found is None:
        return None
    run_id, existing = found
    if existing != request_fingerprint:
        raise IdempotencyConflictError(
            f"idempotency key {idempotency_key!r} was already used for run {run_id} "
            "with different parameters"
        )
    return run_id


def client_idempotency_key(client: str, key: str) -> str:
    """The ledger's idempotency key for ``key`` sent by HTTP API client ``client``."""
    return f"client:{client}:{key}"


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
    problems += check_urls(checked.files, ctx.settings)
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


@dataclass(frozen=True)
class RunPage:
    """One page of :func:`page_runs`: the runs and the cursor of the next page (None: last)."""

    runs: list[Run]
    next_cursor: str | None


def page_runs(
    *,
    client: str | None = None,
    state: RunState | str | None = None,
    app_id: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
    max_scan: int = 5000,
    context: Context | None = None,
) -> RunPage:
    """Runs newest first, one page at a time: ``client``'s own (None: everyone's), optionally
    only those in ``state`` and of ``app_id``.

    Pass the returned ``next_cursor`` back as ``cursor`` for the next page. A
    page looks at no more than ``max_scan`` runs, so a rare filter may give a
    short (even empty) page with a cursor to carry on from. Raises ValueError
    for a cursor this function did not make.
    """
    ctx = context or get_context()
    wanted = RunState(state.upper()) if isinstance(state, str) else state
    index = ctx.keys.client_runs(client) if client is not None else ctx.keys.runs
    position = decode_cursor(cursor) if cursor else None
    runs: list[Run] = []
    scanned = 0
    while len(runs) < limit and scanned < max_scan:
        ids = ctx.ledger.ids_before(index, before=position, limit=min(200, max_scan - scanned))
        if not ids:
            return RunPage(runs, None)
        scanned += len(ids)
        records = ctx.ledger.get_many([run_id for run_id, _ in ids])
        for (run_id, created), run in zip(ids, records, strict=True):
            position = (created, run_id)
            if run is None or (wanted is not None and run.state is not wanted):
                continue
            if app_id is not None and run.get("app_id") != app_id:
                continue
            runs.append(run)
            if len(runs) >= limit:
                break
    return RunPage(runs, encode_cursor(position) if position is not None else None)


def encode_cursor(position: tuple[float, str]) -> str:
    """An opaque page cursor for ``(created_at, run_id)``."""
    raw = json.dumps([position[0], position[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The ``(created_at, run_id)`` of a cursor; ValueError if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, run_id = json.loads(raw)
        if isinstance(when, bool) or not isinstance(when, int | float):
            raise TypeError(when)
        if not isinstance(run_id, str):
            raise TypeError(run_id)
        return float(when), run_id
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError(f"not a valid cursor: {cursor[:40]!r}") from exc


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
