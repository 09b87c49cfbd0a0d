"""A per-client request rate limit: one token bucket in Redis per client.

The bucket is the shared Hatz API budget's (:class:`worker.limits.budget.ApiBudget`,
Redis's own clock, one Lua call per request) under a key of the client's own,
with room for a burst: ``HATZ_CLIENT_RATE_BURST`` requests at once, refilled at
``HATZ_CLIENT_RATE_LIMIT`` per second. Every API process shares it, so the
limit holds however many ``serve`` processes run behind a load balancer.
"""

from __future__ import annotations

import redis

from worker.limits.budget import ApiBudget
from worker.store.keys import Keys


class ClientRateLimit:
    """Takes one token per request from the calling client's bucket."""

    def __init__(self, client: redis.Redis, keys: Keys, *, rate: float, burst: float) -> None:
        self.redis = client
        self.keys = keys
        self.rate = rate
        self.burst = burst
        #: One bucket object per client name (a handful: one per calling application).
        self._buckets: dict[str, ApiBudget] = {}

    def take(self, name: str) -> float:
        """0.0 if the request may go ahead; else the seconds until it may (``Retry-After``)."""
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = ApiBudget(
                self.redis, self.keys.rate_limit(name), self.rate, capacity=self.burst
            )
            self._buckets[name] = bucket
        return bucket.try_take()
