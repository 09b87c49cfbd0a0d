"""Periodic maintenance tasks run by celery beat."""

from __future__ import annotations

from worker import task_names
from worker.context import get_context
from worker.runs.sweeper import sweep as sweep_once
from worker.taskqueue.app import app, publish


@app.task(name=task_names.SWEEP)  # type: ignore[untyped-decorator]
def sweep() -> dict[str, int]:
    """Re-arm runs whose next task was lost and trim the indexes (``hatz.sweep``, every
    HATZ_SWEEP_INTERVAL s)."""
    report = sweep_once(get_context())
    publish(report.steps, app)
    return {
        "rearmed": len(report.rearmed),
        "ambiguous": len(report.ambiguous),
        "settled": len(report.settled),
        "stalled": len(report.stalled),
        "trimmed": sum(report.trimmed.values()),
    }
