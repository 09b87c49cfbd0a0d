"""Each run's recent polls, kept in its own record: a ring of :data:`POLL_LOG_SIZE` fields.

Poll ``n`` writes field ``poll_log:<n mod POLL_LOG_SIZE>`` of the run's hash
(``"n|at|status|lateness"``) in the compare-and-set that records the poll, so
keeping the history costs no round trip, a hinted poll need not read the
record first, and the history lives and expires with the run. Readers (the
web console's timeline) get the last :data:`POLL_LOG_SIZE` polls, oldest first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Polls kept per run (older ones are overwritten).
POLL_LOG_SIZE = 20
_FIELD = "poll_log:"


@dataclass(frozen=True)
class PollEntry:
    """One poll as the run's record keeps it."""

    number: int
    at: float
    status: str
    lateness: float | None


def poll_log_field(
    poll_count: int, at: float, status: str, lateness: float | None
) -> dict[str, str]:
    """The field (one) that records poll number ``poll_count``; ``status`` is what Hatz
    answered, or the error when it did not."""
    late = "" if lateness is None else repr(round(lateness, 4))
    text = "|".join((str(poll_count), repr(round(at, 3)), status.replace("|", "/")[:120], late))
    return {f"{_FIELD}{poll_count % POLL_LOG_SIZE}": text}


def read_poll_log(record: Mapping[str, Any]) -> list[PollEntry]:
    """The polls a run record keeps, oldest first (fields that do not parse are skipped)."""
    entries: list[PollEntry] = []
    for name, raw in record.items():
        if not name.startswith(_FIELD) or not isinstance(raw, str):
            continue
        try:
            number, at, status, late = raw.split("|", 3)
            entries.append(PollEntry(int(number), float(at), status, float(late) if late else None))
        except ValueError:
            continue
    return sorted(entries, key=lambda e: e.number)
