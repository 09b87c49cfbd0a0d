"""Which callback events a run emits, in what order, and with which sequence numbers.

Nothing here is stored: a run's events are derived from its record (its
``events`` filter, whether it reached RUNNING, its terminal state), so the
pipeline and the delivery chain never race on a shared outbox. The delivery
chain only advances ``callback_seq``, the sequence of the last event
delivered; the events still to send are those with a larger sequence.

Sequence numbers count the run's emitted events from 1 (``started`` first,
when asked for and seen), so they only grow and receivers can drop stale or
out-of-order events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.store.ledger import RunState

STARTED = "workflow_run.started"
COMPLETED = "workflow_run.completed"
FAILED = "workflow_run.failed"
TIMED_OUT = "workflow_run.timed_out"
REJECTED = "workflow_run.rejected"
CANCELED = "workflow_run.canceled"
TEST = "webhook.test"

#: The terminal event of each terminal state.
TERMINAL_EVENTS = {
    RunState.COMPLETED: COMPLETED,
    RunState.FAILED: FAILED,
    RunState.AMBIGUOUS: FAILED,
    RunState.TIMED_OUT: TIMED_OUT,
    RunState.REJECTED: REJECTED,
    RunState.CANCELED: CANCELED,
}
#: Events sent when a run does not choose (``events=None``): every end, no ``started``.
DEFAULT_EVENTS = frozenset({COMPLETED, FAILED, TIMED_OUT, REJECTED})


@dataclass(frozen=True)
class Event:
    """One event of a run: its ``type`` and its ``sequence`` (1-based, per run)."""

    type: str
    sequence: int

    @property
    def name(self) -> str:
        """The short name (``completed``), used in the webhook-id."""
        return self.type.rsplit(".", 1)[1]


def wanted(run: Mapping[str, Any]) -> frozenset[str]:
    """The event types this run asked for (its ``events`` filter, or the default)."""
    chosen = run.get("events")
    if chosen is None:
        return DEFAULT_EVENTS
    return frozenset(str(e) for e in chosen)


def wants_started(run: Mapping[str, Any]) -> bool:
    """Whether the run has a callback and asked for ``workflow_run.started``."""
    return bool(run.get("callback_url")) and STARTED in wanted(run)


def run_events(run: Mapping[str, Any], state: RunState | None = None) -> list[Event]:
    """Every event the run emits in ``state`` (default: its current state), in order."""
    if not run.get("callback_url"):
        return []
    current = state if state is not None else RunState(run["state"])
    chosen = wanted(run)
    types: list[str] = []
    reached_running = bool(run.get("running_at")) or current is RunState.RUNNING
    if STARTED in chosen and reached_running:
        types.append(STARTED)
    terminal = TERMINAL_EVENTS.get(current)
    if terminal is not None and terminal in chosen:
        types.append(terminal)
    return [Event(t, i) for i, t in enumerate(types, start=1)]


def pending(run: Mapping[str, Any], state: RunState | None = None) -> list[Event]:
    """The events not delivered yet (sequence above ``callback_seq``), oldest first."""
    delivered = int(run.get("callback_seq") or 0)
    return [e for e in run_events(run, state) if e.sequence > delivered]


def webhook_id(run_id: str, event: Event) -> str:
    """The ``webhook-id`` of one event: stable across every retry and replay."""
    return f"msg_{run_id}_{event.name}"
