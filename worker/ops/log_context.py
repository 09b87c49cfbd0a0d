"""The identifiers attached to every log line of the current task: run, job, app, task.

Set by the Celery signal handlers in :mod:`worker.ops.logs` when a task starts
(and cleared when it ends), and enriched by pipeline code as it learns more
(e.g. the job id after the submit). A :class:`contextvars.ContextVar`, so
threads and pool processes never see each other's values.
"""

from __future__ import annotations

from contextvars import ContextVar

FIELDS = ("run_id", "job_id", "app_id", "task", "task_id")

_current: ContextVar[dict[str, str] | None] = ContextVar("hatz_log_context", default=None)


def bind(**fields: object) -> None:
    """Add identifiers to the current context (``None``/empty values are ignored)."""
    values = {k: str(v) for k, v in fields.items() if v not in (None, "")}
    if values:
        _current.set({**(_current.get() or {}), **values})


def clear() -> None:
    """Forget every identifier (a task ended)."""
    _current.set(None)


def current() -> dict[str, str]:
    """The identifiers bound now."""
    return dict(_current.get() or {})
