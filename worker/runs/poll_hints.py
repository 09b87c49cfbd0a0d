"""A poll message's hint: the few run fields a poll reads before its ``GET``.

The step that schedules a poll writes them into the message (as the
compare-and-set that published it left them), so the poll itself reads nothing
from Redis before asking Hatz; its one write checks the token, so a stale hint
changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.store.ledger import POLLING_STATES, Run

#: The run fields a poll message carries (its *hint*), in this order: all a poll
#: reads before its ``GET``, as the compare-and-set that published it left them.
HINT_FIELDS = (
    "job_id",
    "app_id",
    "state",
    "due_at",
    "poll_count",
    "poll_interval",
    "hatz_status",
    "steps_done",
    "not_found_count",
    "submitted_at",
    "run_timeout",
    "quiet",  # not a record field: True when the run ends with nothing to send
)
#: An optional last entry, after ``quiet``: the run's learned poll window
#: (:mod:`worker.runs.poll_plan`), only when its app has one; a run without one
#: carries the same hint as before.
WINDOW_FIELD = "poll_window"
#: What :func:`poll_hint` reads from a full record.
HINT_SOURCES = (*HINT_FIELDS[:-1], "callback_url", "batch_id", WINDOW_FIELD)


_POLLING_NAMES = frozenset(s.value for s in POLLING_STATES)


def poll_hint(run: Mapping[str, Any]) -> list[Any]:
    """The hint for a poll of ``run`` (see :func:`worker.runs.poll.poll_step`): a short
    list, no secrets.

    ``quiet``: the run has no callback URL and no batch, so its end is one
    compare-and-set with no follow-up, and the poll that ends it need not read
    the record (a run's callback and batch never change mid-run).
    """
    quiet = run["quiet"] if "quiet" in run else not (run.get("callback_url") or run.get("batch_id"))
    hint = [run.get(name) for name in HINT_FIELDS[:-1]] + [bool(quiet)]
    window = run.get(WINDOW_FIELD)
    return [*hint, window] if isinstance(window, str) and window else hint


#: The type of each hint entry (None is always allowed, but for the job id).
_HINT_TYPES: dict[str, type | tuple[type, ...]] = {
    "job_id": str,
    "app_id": str,
    "state": str,
    "hatz_status": str,
    "due_at": (int, float),
    "poll_interval": (int, float),
    "submitted_at": (int, float),
    "run_timeout": (int, float),
    "poll_count": int,
    "steps_done": int,
    "not_found_count": int,
    "quiet": bool,
}


def record_from_hint(run_id: str, token: int, hint: Any) -> Run | None:
    """The partial record a hint stands for; None when there is no usable hint (then
    the poll claims the run and reads it, as without one)."""
    if not isinstance(hint, list) or len(hint) not in (len(HINT_FIELDS), len(HINT_FIELDS) + 1):
        return None
    window = hint[len(HINT_FIELDS)] if len(hint) > len(HINT_FIELDS) else None
    if window is not None and not isinstance(window, str):
        return None
    base = hint[: len(HINT_FIELDS)]
    fields = {k: v for k, v in zip(HINT_FIELDS, base, strict=True) if v is not None}
    for name, value in fields.items():
        kind = _HINT_TYPES[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            return None
    if not fields.get("job_id") or fields.get("state") not in _POLLING_NAMES:
        return None
    if window:
        fields[WINDOW_FIELD] = window
    return Run({**fields, "run_id": run_id, "token": token})
