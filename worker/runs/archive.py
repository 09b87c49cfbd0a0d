"""The archive step: copy a completed run's documents to ``HATZ_ARCHIVE_URL``, then call back.

Runs once per completed run with documents while the archive is on
(:func:`worker.runs.finish.end_run` queues it instead of the callback). Its
own chain: a message carries ``archive_token``, which the step moves ``t -> t+1``
in one compare-and-set, so a duplicate or stale message does nothing.

Each document's copy (:func:`worker.files.archive.copy_document`) is recorded in
``documents[step_id]["archive"]`` as ``{url, sha256, size}`` as soon as it is
made, so a retry copies only what is missing. A failure is retried after each
of ``HATZ_ARCHIVE_RETRY_DELAYS``; then the archive is given up (``archive_state``
``failed``, ``archive_error`` says why). Never does it fail the run: the callback
goes out either way, with the archived copies that exist.

``archive_state``: ``pending`` → (``retrying`` →)* ``done`` | ``failed``.
"""

from __future__ import annotations

import logging
from typing import Any

from worker import task_names
from worker.context import Context
from worker.errors import ArchiveError
from worker.files.archive import copy_document
from worker.runs.documents import refresh_documents
from worker.runs.finish import MAX_ERROR_CHARS
from worker.runs.timing import task_lease
from worker.store.ledger import Run, RunState
from worker.store.outbox import Next

log = logging.getLogger(__name__)

#: ``archive_state`` values in which the step still has work (the sweeper re-arms these).
ACTIVE_ARCHIVE_STATES = frozenset({"pending", "retrying"})
_COMPLETED = frozenset({RunState.COMPLETED})
_CALLBACK_GRACE = 120.0


def archive_step(ctx: Context, run_id: str, token: int) -> list[Next]:
    """Copy the run's documents not archived yet; then its callback, or a retry."""
    claimed = ctx.ledger.cas(
        run_id,
        states=_COMPLETED,
        token=token,
        token_field="archive_token",
        bump_token=True,
        return_record=True,
        # Keep the run on the schedule past this attempt, so a lost task is re-armed.
        next_at=ctx.clock() + task_lease(ctx) + _CALLBACK_GRACE,
    )
    run = claimed.record
    if run is None or run.get("archive_state") not in ACTIVE_ARCHIVE_STATES:
        return []
    token = int(run.get("archive_token") or 0)
    run = refresh_documents(ctx, run)  # a retry minutes later needs live links
    documents, error = _copy_missing(ctx, run)
    if not error:
        return _settle(ctx, run, token, documents, "done", "")
    attempts = int(run.get("archive_attempts") or 0) + 1
    delays = ctx.settings.archive_retry_delays
    if attempts > len(delays):
        log.warning("run %s: archive given up after %d attempts: %s", run_id, attempts, error)
        return _settle(ctx, run, token, documents, "failed", error)
    delay = delays[attempts - 1]
    ok = ctx.ledger.cas(
        run_id,
        states=_COMPLETED,
        token=token,
        token_field="archive_token",
        next_at=ctx.clock() + delay + task_lease(ctx) + _CALLBACK_GRACE,
        fields={
            "documents": documents,
            "archive_state": "retrying",
            "archive_attempts": attempts,
            "archive_error": error,
        },
    )
    if not ok:
        return []
    log.warning("run %s: archive copy failed (%s); retrying in %.0f s", run_id, error, delay)
    return [Next(task_names.ARCHIVE, (run_id, token), delay)]


def _copy_missing(ctx: Context, run: Run) -> tuple[dict[str, Any], str]:
    """Copy every document without an archived copy; the documents and the first error."""
    documents: dict[str, Any] = {
        step_id: dict(doc) for step_id, doc in (run.get("documents") or {}).items()
    }
    for step_id, doc in sorted(documents.items()):
        if doc.get("archive") or not doc.get("url"):
            continue
        try:
            doc["archive"] = copy_document(
                ctx.client, str(doc["url"]), ctx.settings.archive_url, run.run_id, step_id
            )
        except ArchiveError as exc:
            return documents, str(exc)[:MAX_ERROR_CHARS]
        log.info("run %s: archived step %s (%d bytes)", run.run_id, step_id, doc["archive"]["size"])
    return documents, ""


def _settle(
    ctx: Context, run: Run, token: int, documents: dict[str, Any], state: str, error: str
) -> list[Next]:
    """Record the archive's end and hand over to the callback, if the run has one."""
    has_callback = run.get("callback_state") == "pending"
    ok = ctx.ledger.cas(
        run.run_id,
        states=_COMPLETED,
        token=token,
        token_field="archive_token",
        # Done with the schedule unless the callback is still due (the sweeper's net).
        next_at=ctx.clock() + _CALLBACK_GRACE if has_callback else None,
        unschedule=not has_callback,
        fields={"documents": documents, "archive_state": state, "archive_error": error},
    )
    if not ok or not has_callback:
        return []
    return [Next(task_names.DELIVER_CALLBACK, (run.run_id, int(run.get("callback_token") or 0)))]
