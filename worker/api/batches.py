"""The Python API for batches.

>>> from worker.api.batches import enqueue_batch, wait_for_batch, batch_results
>>> batch_id = enqueue_batch("5ae6e9dd-...", "topics.csv", max_in_flight=10)
>>> status = wait_for_batch(batch_id, timeout=3600)
>>> batch_results(batch_id, "results.csv")
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery

from worker.batches.create import create_batch
from worker.batches.request import BatchRequest, OnBadRows
from worker.batches.results import write_results
from worker.batches.status import BatchStatus, batch_status
from worker.context import Context, get_context
from worker.taskqueue.app import publish


def enqueue_batch(
    app_id: str,
    source: str | os.PathLike[str] | None = None,
    *,
    inputs: Mapping[str, Any] | None = None,
    file_input: str | None = None,
    callback_url: str | None = None,
    run_callback_url: str | None = None,
    max_in_flight: int | None = None,
    batch_key: str | None = None,
    on_bad_rows: OnBadRows = "abort",
    metadata: Mapping[str, Any] | None = None,
    client: str | None = None,
    context: Context | None = None,
    celery: Celery | None = None,
) -> str:
    """Validate every row of ``source`` and start the batch; return its ``batch_id``.

    ``source``: a ``.csv``/``.jsonl`` file or a folder (one run per file, given
    as ``file_input``); None runs the fixed ``inputs`` once. At most
    ``max_in_flight`` runs (default ``HATZ_BATCH_MAX_IN_FLIGHT``) are submitted
    at a time. Bad rows raise :class:`~worker.errors.InvalidBatchError` (row
    numbers included) and nothing is enqueued, unless ``on_bad_rows="skip"``.
    ``callback_url`` gets one ``batch.completed`` event; ``run_callback_url``
    gets every run's own callback. With ``batch_key``, rows that already
    completed under that key are not submitted again. ``client`` (an HTTP API
    client's name) is recorded on the batch and its runs, lists the runs among
    that client's and scopes ``batch_key`` to that client.
    """
    if client is not None and batch_key:
        batch_key = client_batch_key(client, batch_key)
    request = BatchRequest(
        app_id,
        source,
        inputs=inputs,
        file_input=file_input,
        callback_url=callback_url,
        run_callback_url=run_callback_url,
        max_in_flight=max_in_flight,
        batch_key=batch_key,
        on_bad_rows=on_bad_rows,
        metadata=metadata,
        client=client,
    )
    return start_batch(request, context=context, celery=celery)


def client_batch_key(client: str, key: str) -> str:
    """The batch key recorded for ``key`` sent by HTTP API client ``client``."""
    return f"client:{client}:{key}"


def start_batch(
    request: BatchRequest, *, context: Context | None = None, celery: Celery | None = None
) -> str:
    """:func:`enqueue_batch` for a request already made: start it, return its ``batch_id``."""
    batch_id, steps = create_batch(context or get_context(), request)
    publish(steps, celery)
    return batch_id


def get_batch(batch_id: str, *, context: Context | None = None) -> BatchStatus:
    """The batch record with live counts; raises :class:`~worker.errors.BatchNotFoundError`."""
    return batch_status(context or get_context(), batch_id)


def wait_for_batch(
    batch_id: str,
    *,
    timeout: float | None = None,
    interval: float = 0.5,
    on_update: Callable[[BatchStatus], None] | None = None,
    context: Context | None = None,
) -> BatchStatus:
    """Block until the batch finished; return it. Raises TimeoutError after ``timeout`` s."""
    ctx = context or get_context()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = batch_status(ctx, batch_id)
        if on_update is not None:
            on_update(status)
        if status.finished:
            return status
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"batch {batch_id} not finished after {timeout} s")
        time.sleep(interval)


def batch_results(
    batch_id: str,
    out: str | os.PathLike[str],
    *,
    download: str | None = None,
    context: Context | None = None,
) -> int:
    """Write one line per row (status, outputs, document URLs) to ``out`` (.csv/.jsonl)."""
    return write_results(context or get_context(), batch_id, out, download=download)
