"""Logging for worker and beat: plain or JSON lines, run identifiers on each, secrets redacted.

``HATZ_LOG_JSON=true`` prints one JSON object per line with ``ts, level,
logger, message, process`` and, when known, ``run_id, job_id, app_id, task,
task_id`` (from :mod:`worker.ops.log_context`, bound by the task signals below).

Secrets are never logged on purpose; :class:`Redactor` is the safety net on
every line: it masks the API key and webhook secrets configured, anything
shaped like a ``whsec_`` secret or an ``X-API-Key`` header, and the query
string of every URL (presigned URLs carry their signature there).
:func:`safe_url` is the one way to show a single URL, in a log line or on a
screen: scheme, host and path only.

Celery configures logging itself unless a receiver is connected to its
``setup_logging`` signal; :func:`_setup_logging` is that receiver, so Celery's
own lines (task received/succeeded) go through the same formatter. Celery
sends the signal again in every prefork child, where configuring is idempotent.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from celery import signals

from config import Settings, load_settings
from worker import task_names
from worker.ops import log_context
from worker.ops.redaction import Redactor

#: Our tasks whose first argument is a run id.
_RUN_TASKS = frozenset({task_names.SUBMIT, task_names.POLL, task_names.DELIVER_CALLBACK})
_HANDLER_NAME = "hatz-worker"


class ContextFilter(logging.Filter):
    """Copies the bound run identifiers onto each record (``record.run_id`` ...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keeps the record; only adds attributes."""
        bound = log_context.current()
        for name in log_context.FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, bound.get(name))
        return True


class TextFormatter(logging.Formatter):
    """``time level [process] logger: message key=value...``, redacted."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s")
        self.redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        """The redacted line."""
        line = super().format(record)
        extra = " ".join(
            f"{name}={value}"
            for name in log_context.FIELDS
            if (value := getattr(record, name, None))
        )
        return self.redact(f"{line} {extra}" if extra else line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, redacted."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.redact(record.getMessage()),
            "process": record.processName,
            "pid": record.process,
        }
        for name in log_context.FIELDS:
            value = getattr(record, name, None)
            if value:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> logging.Handler:
    """Send every log record to one handler on the root logger; return that handler.

    Idempotent: a handler installed earlier by this function is replaced.
    """
    redactor = Redactor.from_settings(settings)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter(redactor) if settings.log_json else TextFormatter(redactor))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    return handler


@signals.setup_logging.connect(weak=False)  # type: ignore[untyped-decorator]
def _setup_logging(**_: Any) -> None:
    # Connected => Celery leaves logging to us (celery.app.log.Logging.setup).
    configure_logging(load_settings())


@signals.task_prerun.connect(weak=False)  # type: ignore[untyped-decorator]
def _bind_task(task_id: str | None = None, task: Any = None, args: Any = None, **kw: Any) -> None:
    log_context.clear()
    name = getattr(task, "name", None)
    log_context.bind(task=name, task_id=task_id)
    if name in _RUN_TASKS and args:
        # App and job ids join once the step has read its run (it binds them
        # from the record its claim returns: no extra round trip per task).
        log_context.bind(run_id=args[0])
    elif name == task_names.RUN_WORKFLOW:
        log_context.bind(app_id=(kw.get("kwargs") or {}).get("app_id"))


@signals.task_postrun.connect(weak=False)  # type: ignore[untyped-decorator]
def _unbind_task(**_: Any) -> None:
    log_context.clear()
