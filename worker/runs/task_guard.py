"""The one catch-all between a Celery task and the pipeline: a task body never raises.

Every pipeline function handles the errors it expects (HTTP failures, bad
answers, refused input). Anything else (a bug, a Redis hiccup mid-step, a
soft time limit, a malformed message) would otherwise fail the task and, for
a self-rescheduling chain, end it. The guard logs it with its traceback,
records it on the run (``last_error``, ``internal_errors``) and returns no
follow-up: the run's ``next_at`` already holds the task's lease, so the
sweeper re-arms the run once that lease is overdue (a natural backoff), and
after ``HATZ_INTERNAL_ERROR_LIMIT`` such errors settles it with the error
(see :mod:`worker.runs.sweeper`). A chain is never lost and a worker never crashes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from worker.context import Context, get_context
from worker.store.outbox import Next

log = logging.getLogger(__name__)

Step = Callable[..., list[Next]]  # (ctx, run_id, token, *extra)


def malformed(run_id: Any, token: Any) -> str:
    """Why ``(run_id, token)`` is not a message this worker sends ("" when it is fine)."""
    if not isinstance(run_id, str) or not run_id or len(run_id) > 200:
        return f"run_id must be a short non-empty string, got {run_id!r:.80}"
    if isinstance(token, bool) or not isinstance(token, int) or token < 0:
        return f"token must be a non-negative integer, got {token!r:.80}"
    return ""


def run_step(
    step: Step,
    run_id: Any,
    token: Any,
    *extra: Any,
    task: str,
    context: Callable[[], Context] = get_context,
) -> list[Next]:
    """Run ``step(ctx, run_id, token, *extra)`` for ``task``; never raise, return the
    follow-ups."""
    problem = malformed(run_id, token)
    if problem:
        log.error("%s: malformed message ignored: %s", task, problem)
        return []
    try:
        ctx = context()
    except Exception:
        log.exception("%s %s: no worker context; the sweeper will retry", task, run_id)
        return []
    try:
        return step(ctx, run_id, token, *extra)
    except Exception as exc:
        log.exception("%s %s: unexpected error; the sweeper will re-arm the run", task, run_id)
        message = f"internal error in {task}: {type(exc).__name__}: {exc}"
        try:
            ctx.ledger.note_error(run_id, message)
        except Exception:
            log.exception("%s %s: could not record the error", task, run_id)
        return []
    finally:
        ctx.metrics.flush()  # counters no compare-and-set carried (best effort, never raises)
