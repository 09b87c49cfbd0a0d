"""Redis that does not grow forever: the sweeper's trim of the time-scored indexes.

Every key hatz-worker writes has a bounded life (see the table in
:mod:`worker.store.keys`): records get a TTL when they end, and the sorted
sets that index them by time are trimmed here, by score, on every sweep
(``hatz.sweep``, every ``HATZ_SWEEP_INTERVAL``), whether or not anyone lists
them. An entry scored more than ``HATZ_RUN_RETENTION`` seconds ago goes: by
then the record it points to has expired too (or, for a run still going after
that long, only leaves the listing).

One ``ZREMRANGEBYSCORE`` per index, pipelined: O(log N + removed), so a sweep
costs one round trip however large the indexes are.
"""

from __future__ import annotations

from typing import Any

from worker.store.keys import Keys


def trim_indexes(client: Any, keys: Keys, *, now: float, retention: float) -> dict[str, int]:
    """Drop index entries scored before ``now - retention``; how many left each index."""
    names = keys.time_indexes
    pipe = client.pipeline(transaction=False)
    for key in names:
        pipe.zremrangebyscore(key, "-inf", f"({now - retention!r}")
    return {key: int(n) for key, n in zip(names, pipe.execute(), strict=True)}
