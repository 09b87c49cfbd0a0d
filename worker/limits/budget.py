"""The shared Hatz API budget: a token bucket in Redis that every worker takes from.

``HATZ_API_MAX_RPS`` tokens are added per second (the bucket holds at most one
second's worth, so a quiet minute never turns into a burst); every Hatz API
request takes one first. The bucket lives in Redis and uses Redis's own clock
(``TIME``), so all processes on all hosts share one budget regardless of clock
skew.

The Hatz client knows nothing of Redis: :class:`ApiBudget` is handed to it as
its ``before_request`` hook. A caller that cannot get a token within
``max_wait`` gets :class:`~worker.errors.HatzBudgetError` (nothing was sent),
and the pipeline reschedules that poll or submit a little later instead of
holding a worker slot asleep: thousands of polls spread out instead of bursting.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from worker.errors import HatzBudgetError

#: The token bucket, on Redis's clock: one Lua fragment that every bucket script
#: embeds (this budget, and the HTTP API's per-client limit, which checks a token
#: first in the same script). KEYS[1]: the bucket hash. ARGV: rate (tokens/s),
#: capacity. Leaves ``wait``: 0 when a token was taken, else the seconds until one
#: is available. The bucket expires an hour after its last use.
BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[1], 'at') or tostring(now))
tokens = math.min(capacity, tokens + math.max(0, now - last) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 3600)
"""

# Returns "0" when a token was taken, else the seconds until one is available.
_TAKE = BUCKET_LUA + "return tostring(wait)\n"


class ApiBudget:
    """Takes one token per Hatz API request from the shared bucket at ``key``."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        rate: float,
        *,
        max_wait: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.key = key
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.max_wait = max_wait
        self._sleep = sleep
        self._take = client.register_script(_TAKE)

    def try_take(self) -> float:
        """Take a token if one is there: 0.0; else the seconds until one is expected."""
        return float(self._take(keys=[self.key], args=[repr(self.rate), repr(self.capacity)]))

    def acquire(self, method: str = "", path: str = "") -> None:
        """Wait (briefly) for a token; raise :class:`HatzBudgetError` past ``max_wait``.

        The signature matches the Hatz client's ``before_request`` hook.
        """
        waited = 0.0
        while True:
            wait = self.try_take()
            if wait <= 0:
                return
            if waited + wait > self.max_wait:
                raise HatzBudgetError(wait)
            self._sleep(wait)
            waited += wait

    __call__ = acquire
