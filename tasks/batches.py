"""Batch and schedule tasks: thin wrappers over worker.batches and the batch callback sender."""

from __future__ import annotations

from typing import Any

from worker import task_names
from worker.api.batches import start_batch
from worker.batches.request import BatchRequest
from worker.batches.schedules import fire
from worker.batches.tick import sweep_batches, tick
from worker.context import get_context
from worker.taskqueue.app import app, publish
from worker.webhooks.batch_delivery import deliver_batch_callback as deliver_batch_callback_step


@app.task(name=task_names.RUN_BATCH, ignore_result=False)  # type: ignore[untyped-decorator]
def run_batch(**request: Any) -> str:
    """Public entry point for ``send_task("hatz.run_batch", kwargs={...})``.

    Takes :func:`worker.api.batches.enqueue_batch`'s keyword arguments; returns the batch id.
    """
    return start_batch(BatchRequest(**request), context=get_context(), celery=app)


@app.task(name=task_names.BATCH_TICK)  # type: ignore[untyped-decorator]
def batch_tick(batch_id: str) -> None:
    """Free slots of ended runs, release waiting ones, finish the batch when all ended."""
    publish(tick(get_context(), batch_id), app)


@app.task(name=task_names.BATCH_SWEEP)  # type: ignore[untyped-decorator]
def batch_sweep() -> None:
    """Tick every active batch (beat): recovers a tick lost to a crash."""
    publish(sweep_batches(get_context()), app)


@app.task(name=task_names.DELIVER_BATCH_CALLBACK)  # type: ignore[untyped-decorator]
def deliver_batch_callback(batch_id: str, token: int) -> None:
    """Deliver a finished batch's ``batch.completed`` callback once."""
    publish(deliver_batch_callback_step(get_context(), batch_id, token), app)


@app.task(name=task_names.FIRE_SCHEDULE)  # type: ignore[untyped-decorator]
def fire_schedule(
    name: str, reason: str = "beat", slot: str = "", firing: str = "", attempt: int = 0
) -> str:
    """Fire one schedule (sent by celery beat, or a retry of a failed firing); the outcome."""
    result = fire(get_context(), name, reason=reason, slot=slot, firing=firing, attempt=attempt)
    publish(result.steps, app)
    return result.outcome
