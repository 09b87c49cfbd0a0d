"""hatz-worker: run Hatz AI workflows from your own systems, on Celery and Redis.

``celery -A worker worker`` finds the Celery app here (``worker.app``).
The Python API: :func:`enqueue_run`, :func:`get_run`, :func:`wait_for_run`,
:func:`cancel_run`.
"""

from worker.api import cancel_run, enqueue_run, get_run, list_runs, wait_for_run
from worker.celery_app import app
from worker.ledger import Run, RunState
from worker.signing import WebhookVerificationError, verify

__all__ = [
    "Run",
    "RunState",
    "WebhookVerificationError",
    "app",
    "cancel_run",
    "enqueue_run",
    "get_run",
    "list_runs",
    "verify",
    "wait_for_run",
]
