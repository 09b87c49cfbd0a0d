"""hatz-worker: run Hatz AI workflows from your own systems, on Celery and Redis.

``celery -A worker worker`` finds the Celery app here (``worker.app``).
The Python API: :func:`enqueue_run`, :func:`get_run`, :func:`wait_for_run`,
:func:`cancel_run`.

The names below are imported when first used (PEP 562), so importing one
sub-package (``worker.hatz``, say) does not import Celery or Redis.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.api.runs import cancel_run, enqueue_run, get_run, list_runs, wait_for_run
    from worker.store.ledger import Run, RunState
    from worker.taskqueue.app import app
    from worker.webhooks.signing import WebhookVerificationError, verify

_EXPORTS = {
    "Run": "worker.store.ledger",
    "RunState": "worker.store.ledger",
    "WebhookVerificationError": "worker.webhooks.signing",
    "app": "worker.taskqueue.app",
    "cancel_run": "worker.api.runs",
    "enqueue_run": "worker.api.runs",
    "get_run": "worker.api.runs",
    "list_runs": "worker.api.runs",
    "verify": "worker.webhooks.signing",
    "wait_for_run": "worker.api.runs",
}

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


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'worker' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
