"""Run tasks: thin wrappers over the run steps (worker.runs), passing run ids and tokens only."""

from __future__ import annotations

from typing import Any

from worker import task_names
from worker.api.runs import enqueue_run_rejecting_refused_files
from worker.context import get_context
from worker.runs.archive import archive_step
from worker.runs.poll import poll_step
from worker.runs.submit import submit_step
from worker.runs.task_guard import run_step
from worker.taskqueue.app import app, publish


@app.task(name=task_names.RUN_WORKFLOW, ignore_result=False)  # type: ignore[untyped-decorator]
def run_workflow(**request: Any) -> str:
    """Public entry point for ``send_task("hatz.run_workflow", kwargs={...})``.

    Takes :func:`worker.enqueue_run`'s keyword arguments; returns the run id. A file
    outside ``HATZ_FILE_ROOTS`` gives a REJECTED run (nothing uploaded), not an error.
    """
    return enqueue_run_rejecting_refused_files(context=get_context(), celery=app, **request)


# Submit and poll are acknowledged when a pool process starts them, not when they
# return: the worker's main process then sends the acknowledgement while the task
# runs instead of between one task and the next (these tasks take a few ms; ~10 %
# more of them per second, see README "Performance"). Redelivering them would
# not help anyway: each claims its run (token t -> t+1) first, so a redelivered
# copy is stale. A task lost with its pool process leaves its run due in the
# ledger, and the sweeper re-arms it.
@app.task(name=task_names.SUBMIT, acks_late=False)  # type: ignore[untyped-decorator]
def submit(run_id: str, token: int, hint: dict[str, Any] | None = None) -> None:
    """Validate, upload and submit a run (``hatz.submit``).

    ``hint``: the run's app when it has no files (:func:`worker.runs.submit.submit_hint`);
    messages without one still work.
    """
    publish(run_step(submit_step, run_id, token, hint, task=task_names.SUBMIT), app)


@app.task(name=task_names.POLL, acks_late=False)  # type: ignore[untyped-decorator]  # see submit
def poll(run_id: str, token: int, hint: list[Any] | None = None) -> None:
    """Poll a run's job once and reschedule itself with a countdown (``hatz.poll``).

    ``hint``: the few run fields the poll needs, as its last compare-and-set left
    them (:func:`worker.runs.poll_hints.poll_hint`); messages without one still work.
    """
    publish(run_step(poll_step, run_id, token, hint, task=task_names.POLL), app)


@app.task(name=task_names.ARCHIVE)  # type: ignore[untyped-decorator]
def archive_documents(run_id: str, token: int) -> None:
    """Copy a completed run's documents to ``HATZ_ARCHIVE_URL``, then send its callback."""
    publish(run_step(archive_step, run_id, token, task=task_names.ARCHIVE), app)
