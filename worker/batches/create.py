"""Creating a batch: validate every row first, then record the batch and its held runs.

A batch is created in one go, *after* every row has been validated (locally and
against the app's ``user_inputs``): each good row becomes a normal run in the
ledger (``batch_id`` and ``row`` fields), created QUEUED but **held**: its
``next_at`` lies far in the future, so neither a worker nor the sweeper
touches it, and its run id waits in ``P:batch:<id>:pending`` until
:func:`~worker.batches.tick.tick` releases it.

The batch is indexed from the start, so the batch sweep can abandon a creation
that dies half-way (:mod:`worker.batches.abandon`). The creator's own last step
is a compare-and-set ``creating -> running``, so a creation that outlives the
grace does not revive an abandoned batch: it cancels what it made and raises.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from worker.batches.abandon import ABANDONED, CREATING_GRACE, cancel_runs, expire_abandoned
from worker.batches.records import batch_cas, flat, text
from worker.batches.request import BatchRequest
from worker.batches.sources import BadRow, Row, read_source, validate_rows
from worker.batches.tick import HELD_FOR, tick
from worker.context import Context
from worker.errors import (
    FileRefusedError,
    HatzNotFoundError,
    InvalidBatchError,
    InvalidRunError,
)
from worker.runs.apps import fetch_app
from worker.runs.file_roots import allowed_path
from worker.store.ledger import RunState
from worker.store.outbox import Next
from worker.webhooks.ssrf import check_callback_url

log = logging.getLogger(__name__)

_MAX_PROBLEMS_KEPT = 200


@dataclass(frozen=True)
class _Rows:
    """A source's rows after validation: the good ones, the bad ones, how many in all."""

    good: list[Row]
    bad: list[BadRow]
    in_source: int


def create_batch(
    ctx: Context, request: BatchRequest, *, schedule: str | None = None
) -> tuple[str, list[Next]]:
    """Validate every row, record the batch and its held runs; return ``(batch_id, steps)``.

    Nothing is created when the source, the app or (with ``on_bad_rows="abort"``)
    any row is bad: :class:`InvalidBatchError` lists every problem with row
    numbers. With ``"skip"`` bad rows are recorded in the batch (``bad_rows``)
    and left out. ``steps`` are the first releases' submits, to publish.
    ``schedule``: the schedule that fired this batch, if any.

    With ``batch_key``, rows that already completed under the same key (same
    app and row content) are not submitted again: the batch reuses those runs.
    """
    limit = _check_request(ctx, request)
    rows = _read_rows(ctx, request)
    batch_id = uuid.uuid4().hex
    key_map = ctx.keys.batch_key(request.batch_key) if request.batch_key else ""
    reuse = _resumable(ctx, request.app_id, key_map, rows.good)
    record = _batch_record(ctx, batch_id, request, limit, rows, schedule)
    _index(ctx, batch_id, record)
    run_ids, pending = _create_runs(ctx, batch_id, request, rows.good, reuse, key_map)
    pipe = ctx.redis.pipeline(transaction=True)
    pipe.rpush(ctx.keys.batch_rows(batch_id), *run_ids)
    if pending:
        pipe.rpush(ctx.keys.batch_pending(batch_id), *pending)
    pipe.execute()
    # Last, and only from ``creating``: a batch the sweep abandoned meanwhile stays so.
    if not batch_cas(
        ctx, batch_id, {"state": ["creating"]}, {"state": "running", "reused": len(reuse)}
    ):
        cancel_runs(ctx, pending)
        expire_abandoned(ctx, batch_id)  # what this creation pushed after the abandonment
        raise InvalidBatchError([f"batch {batch_id}: {ABANDONED} (took over {CREATING_GRACE:g} s)"])
    ctx.redis.delete(ctx.keys.batch_created(batch_id))
    log.info(
        "batch %s: %d row(s) for app %s (%d reused, %d bad row(s) skipped), max %d in flight",
        batch_id,
        len(rows.good),
        request.app_id,
        len(reuse),
        len(rows.bad),
        limit,
    )
    return batch_id, tick(ctx, batch_id)


def _check_request(ctx: Context, request: BatchRequest) -> int:
    """The batch's in-flight limit; raise :class:`InvalidBatchError` for a bad request."""
    if request.on_bad_rows not in ("skip", "abort"):
        raise InvalidBatchError(
            [f"on_bad_rows must be 'skip' or 'abort', not {request.on_bad_rows!r}"]
        )
    limit = (
        request.max_in_flight
        if request.max_in_flight is not None
        else ctx.settings.batch_max_in_flight
    )
    problems: list[str] = []
    if not isinstance(limit, int) or limit < 1:
        problems.append("max_in_flight must be an integer >= 1")
    for url in (request.callback_url, request.run_callback_url):
        if url:
            try:
                check_callback_url(url, ctx.settings)
            except InvalidRunError as exc:
                problems += exc.problems
    if problems:
        raise InvalidBatchError(problems)
    return limit


def _read_rows(ctx: Context, request: BatchRequest) -> _Rows:
    """Read the source and check every row against the app; raise when nothing may run."""
    if request.source is not None:
        try:
            allowed_path(request.source, ctx.settings)  # its rows are sent to Hatz
        except FileRefusedError as exc:
            raise InvalidBatchError([f"source {exc.problems[0]}"]) from None
    rows, unparsable = read_source(
        request.source, inputs=request.inputs, file_input=request.file_input
    )
    try:
        app = fetch_app(ctx, request.app_id)
    except HatzNotFoundError:
        raise InvalidBatchError([f"unknown app_id {request.app_id!r}"]) from None
    good, bad = validate_rows(app, rows, ctx.settings)
    bad = sorted(unparsable + bad, key=lambda b: b.number)
    if bad and request.on_bad_rows == "abort":
        raise InvalidBatchError([b.describe() for b in bad])
    if not good:
        raise InvalidBatchError(["no valid rows", *(b.describe() for b in bad)])
    return _Rows(good, bad, len(rows) + len(unparsable))


def _resumable(ctx: Context, app_id: str, key_map: str, rows: Sequence[Row]) -> dict[int, str]:
    """Rows already COMPLETED under this batch key: row number -> that run id.

    A row whose earlier run is still going would be submitted twice: refuse.
    """
    if not key_map:
        return {}
    previous = {text(k): text(v) for k, v in ctx.redis.hgetall(key_map).items()}
    reuse: dict[int, str] = {}
    busy: list[str] = []
    for row in rows:
        earlier = previous.get(row.content_hash(app_id))
        run = ctx.ledger.get(earlier) if earlier else None
        if run is None:
            continue
        if run.state is RunState.COMPLETED:
            reuse[row.number] = run.run_id
        elif not run.state.is_terminal:
            busy.append(f"row {row.number}: still {run.state.value} as run {run.run_id}")
    if busy:
        raise InvalidBatchError(["an earlier batch with this batch key is still running", *busy])
    return reuse


def _batch_record(
    ctx: Context,
    batch_id: str,
    request: BatchRequest,
    limit: int,
    rows: _Rows,
    schedule: str | None,
) -> dict[str, Any]:
    """The batch hash as first written (``creating``)."""
    now = ctx.clock()
    return {
        "batch_id": batch_id,
        "app_id": request.app_id,
        "state": "creating",
        "source": str(request.source) if request.source is not None else "",
        "inputs": dict(request.inputs or {}),
        "file_input": request.file_input or "",
        "callback_url": request.callback_url or "",
        "run_callback_url": request.run_callback_url or "",
        "max_in_flight": limit,
        "on_bad_rows": request.on_bad_rows,
        "batch_key": request.batch_key or "",
        "schedule": schedule or "",
        "client": request.client or "",
        "rows_in_source": rows.in_source,
        "total": len(rows.good),
        "skipped": len(rows.bad),
        "bad_rows": [{"row": b.number, "problems": b.problems} for b in rows.bad][
            :_MAX_PROBLEMS_KEPT
        ],
        "created_at": now,
        "updated_at": now,
        "callback_state": "" if not request.callback_url else "not_due",
        "callback_token": 0,
    }


def _index(ctx: Context, batch_id: str, record: dict[str, Any]) -> None:
    """Write the record and index the batch, from the start, so the batch sweep can
    abandon a creation that dies."""
    fields = flat(record)
    created_at = record["created_at"]
    start = ctx.redis.pipeline(transaction=True)
    start.hset(ctx.keys.batch(batch_id), mapping=dict(zip(fields[::2], fields[1::2], strict=True)))
    start.zadd(ctx.keys.batches, {batch_id: created_at})
    start.zadd(ctx.keys.active_batches, {batch_id: created_at})
    start.execute()


def _create_runs(
    ctx: Context,
    batch_id: str,
    request: BatchRequest,
    rows: Sequence[Row],
    reuse: dict[int, str],
    key_map: str,
) -> tuple[list[str], list[str]]:
    """A held run per row not reused; ``(every row's run id, the new runs' ids)``."""
    run_ids: list[str] = []
    pending: list[str] = []
    for row in rows:
        if row.number in reuse:
            run_ids.append(reuse[row.number])
            continue
        params = {
            "app_id": request.app_id,
            "inputs": row.inputs,
            "files": row.files,
            "callback_url": request.run_callback_url or "",
            "metadata": {**dict(request.metadata or {}), "batch_id": batch_id, "row": row.number},
            "is_draft_app": False,
            "batch_id": batch_id,
            "row": row.number,
        }
        if request.client:
            params["client"] = request.client
        run_id, _ = ctx.ledger.create(
            params,
            first_due_in=HELD_FOR,
            listed_in=ctx.keys.batch_created(batch_id),
            indexed_in=ctx.keys.client_runs(request.client) if request.client else "",
        )
        run_ids.append(run_id)
        pending.append(run_id)
        if key_map:  # the map's expiry is set with each write, in one transaction
            pipe = ctx.redis.pipeline(transaction=True)
            pipe.hset(key_map, row.content_hash(request.app_id), run_id)
            pipe.expire(key_map, ctx.settings.run_retention)
            pipe.execute()
    return run_ids, pending
