"""A batch's progress: its record with live counts of its runs' states."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from worker.batches.records import get_record, row_run_ids, run_states
from worker.context import Context
from worker.store.ledger import RunState

#: How a run's state is counted in batch progress.
_COUNT_AS = {
    RunState.QUEUED: "queued",
    RunState.UPLOADING: "running",
    RunState.SUBMITTING: "running",
    RunState.SUBMITTED: "running",
    RunState.RUNNING: "running",
    RunState.COMPLETED: "completed",
    RunState.FAILED: "failed",
    RunState.TIMED_OUT: "failed",
    RunState.REJECTED: "failed",
    RunState.CANCELED: "failed",
    RunState.AMBIGUOUS: "failed",
}


def count_states(states: Sequence[RunState | None]) -> dict[str, int]:
    """``total``, ``queued``, ``running``, ``completed``, ``failed`` (and a breakdown of
    the failed ones that did not end FAILED, and of expired records)."""
    counts = {"total": len(states), "queued": 0, "running": 0, "completed": 0, "failed": 0}
    for state in states:
        if state is None:
            counts["failed"] += 1  # an expired record is never silently "completed"
            counts["expired"] = counts.get("expired", 0) + 1
            continue
        counts[_COUNT_AS[state]] += 1
        if _COUNT_AS[state] == "failed" and state is not RunState.FAILED:
            # "failed" counts every bad end; the breakdown says which.
            name = state.value.lower()
            counts[name] = counts.get(name, 0) + 1
    return counts


@dataclass
class BatchStatus:
    """A batch's record with live counts (``queued``/``running``/``completed``/``failed``)."""

    record: dict[str, Any]
    counts: dict[str, int]
    in_flight: int

    @property
    def batch_id(self) -> str:
        """The batch id."""
        return str(self.record["batch_id"])

    @property
    def finished(self) -> bool:
        """True once every run of the batch is terminal and the batch was closed
        (``finished``, or ``abandoned`` when its creation was interrupted)."""
        return self.record.get("state") in ("finished", "abandoned")

    def done(self) -> int:
        """Rows that ended (completed or failed)."""
        return self.counts["completed"] + self.counts["failed"]

    def eta(self, now: float | None = None) -> float | None:
        """Seconds until the batch is expected to finish, from its pace so far; None if unknown."""
        done = self.done()
        total = self.counts["total"]
        if self.finished or done == 0:
            return 0.0 if self.finished else None
        elapsed = (time.time() if now is None else now) - float(self.record["created_at"])
        return elapsed / done * (total - done)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the record plus ``counts``, ``in_flight`` and ``eta``."""
        return {
            **self.record,
            "counts": self.counts,
            "in_flight": self.in_flight,
            "eta": self.eta(),
        }


def batch_status(ctx: Context, batch_id: str) -> BatchStatus:
    """The batch and live counts from its runs' records."""
    record = get_record(ctx, batch_id)
    counts = count_states(run_states(ctx, row_run_ids(ctx, batch_id)))
    counts["skipped"] = int(record.get("skipped") or 0)
    counts["reused"] = int(record.get("reused") or 0)
    in_flight = int(ctx.redis.scard(ctx.keys.batch_inflight(batch_id)))
    return BatchStatus(record, counts, in_flight)
