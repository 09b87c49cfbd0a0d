"""Callback delivery task (``hatz.deliver_callback``), on its own queue."""

from __future__ import annotations

from worker import task_names
from worker.runs.task_guard import run_step
from worker.taskqueue.app import app, publish
from worker.webhooks.delivery import deliver_step


@app.task(name=task_names.DELIVER_CALLBACK)  # type: ignore[untyped-decorator]
def deliver_callback(run_id: str, token: int) -> None:
    """Deliver one run's callback once; a failure schedules a retry, never fails the run."""
    publish(run_step(deliver_step, run_id, token, task=task_names.DELIVER_CALLBACK), app)
