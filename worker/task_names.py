"""Stable public task names and queues.

Other applications call these by name (``send_task("hatz.run_workflow", ...)``)
without importing hatz-worker, so they never change.
"""

from __future__ import annotations

RUN_WORKFLOW = "hatz.run_workflow"
SUBMIT = "hatz.submit"
POLL = "hatz.poll"
DELIVER_CALLBACK = "hatz.deliver_callback"
SWEEP = "hatz.sweep"
RUN_BATCH = "hatz.run_batch"
BATCH_TICK = "hatz.batch_tick"
BATCH_SWEEP = "hatz.batch_sweep"
DELIVER_BATCH_CALLBACK = "hatz.deliver_batch_callback"
FIRE_SCHEDULE = "hatz.fire_schedule"
ARCHIVE = "hatz.archive_documents"

QUEUE_DEFAULT = "hatz.default"
QUEUE_SUBMIT = "hatz.submit"
QUEUE_POLL = "hatz.poll"
QUEUE_CALLBACK = "hatz.callback"
ALL_QUEUES = (QUEUE_DEFAULT, QUEUE_SUBMIT, QUEUE_POLL, QUEUE_CALLBACK)
#: Celery's own default queue: where a plain ``send_task(name, kwargs=...)`` from
#: another app lands when it names no queue. Workers consume it too (unless
#: ``HATZ_CONSUME_CELERY_QUEUE=false``), so the public entry points work without ``queue=``.
QUEUE_CELERY = "celery"

#: Which queue each task runs on: polls never wait behind uploads or slow receivers.
ROUTES = {
    RUN_WORKFLOW: QUEUE_SUBMIT,
    SUBMIT: QUEUE_SUBMIT,
    POLL: QUEUE_POLL,
    DELIVER_CALLBACK: QUEUE_CALLBACK,
    SWEEP: QUEUE_DEFAULT,
    RUN_BATCH: QUEUE_DEFAULT,
    BATCH_TICK: QUEUE_DEFAULT,
    BATCH_SWEEP: QUEUE_DEFAULT,
    DELIVER_BATCH_CALLBACK: QUEUE_CALLBACK,
    FIRE_SCHEDULE: QUEUE_DEFAULT,
    # Copying documents is slow I/O that comes right before the callback: beside it.
    ARCHIVE: QUEUE_CALLBACK,
}
