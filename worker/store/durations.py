"""Each app's recent run durations: what the learned poll schedule is planned from.

One Redis list per app (:meth:`worker.store.keys.Keys.durations`), newest
first, trimmed to :data:`HISTORY_SIZE` entries and expiring
``HATZ_RUN_RETENTION`` after its last write: an app nobody runs any more
leaves nothing behind. An entry is ``"<to complete>"`` or
``"<to complete>:<to running>"``, seconds after the job started.

A completed run adds its entry after the compare-and-set that ended it, in
one ``MULTI``/``EXEC`` (push, trim, expire). A worker killed between the two
loses that one sample: the history is a hint for scheduling, never a record
anything depends on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from worker.store.keys import Keys

#: Durations kept per app (the newest ones).
HISTORY_SIZE = 64


@dataclass(frozen=True)
class Duration:
    """How long one run of an app took, in seconds after its job started."""

    to_complete: float
    to_running: float | None = None

    def encode(self) -> str:
        """The list entry: ``to_complete[:to_running]``, milliseconds kept."""
        text = f"{self.to_complete:.3f}"
        return text if self.to_running is None else f"{text}:{self.to_running:.3f}"

    @classmethod
    def decode(cls, raw: str) -> Duration | None:
        """An entry read back; None for one that does not parse (never raises)."""
        head, _, tail = raw.partition(":")
        try:
            complete = float(head)
            running = float(tail) if tail else None
        except ValueError:
            return None
        if not complete >= 0:  # also refuses nan
            return None
        return cls(complete, running)


def record_duration(
    client: redis.Redis, keys: Keys, app_id: str, duration: Duration, *, ttl: int
) -> bool:
    """Add ``duration`` to ``app_id``'s history, trimmed and expiring in ``ttl`` s.

    False when Redis refused it: the run it came from has already ended, and a
    lost sample only means the next plan has one fewer to go by.
    """
    key = keys.durations(app_id)
    pipe = client.pipeline(transaction=True)
    pipe.lpush(key, duration.encode())
    pipe.ltrim(key, 0, HISTORY_SIZE - 1)
    pipe.expire(key, max(1, ttl))
    try:
        pipe.execute()
    except redis.RedisError:
        return False
    return True


def recent_durations(client: redis.Redis, keys: Keys, app_id: str) -> list[Duration]:
    """``app_id``'s recorded durations, newest first (unreadable entries skipped; none
    when Redis cannot answer: polls then keep today's schedule)."""
    try:
        raw: Sequence[str | bytes] = client.lrange(keys.durations(app_id), 0, HISTORY_SIZE - 1)
    except redis.RedisError:
        return []
    entries = (Duration.decode(r.decode() if isinstance(r, bytes) else r) for r in raw)
    return [d for d in entries if d is not None]
