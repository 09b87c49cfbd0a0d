"""A per-client request rate limit: a token bucket in Redis per client token.

Every ``serve`` process shares the buckets, so the limit holds however many
run behind a load balancer: ``HATZ_CLIENT_RATE_BURST`` requests at once,
refilled at ``HATZ_CLIENT_RATE_LIMIT`` per second, on Redis's own clock.

The bucket is the shared Hatz API budget's Lua fragment
(:data:`worker.limits.budget.BUCKET_LUA`), preceded here by the token lookup,
so a request checks its token and takes from its bucket in one script, one
round trip: the bucket is keyed by the token's hash, known before the lookup,
and a token that does not exist takes nothing (nor leaves a key behind).
"""

from __future__ import annotations

import redis

from worker.clients.tokens import TOKEN_PREFIX, Client, client_from_record, token_hash
from worker.limits.budget import BUCKET_LUA
from worker.store.keys import Keys

# KEYS: bucket hash, token key ('' = take without checking a token). ARGV: rate, capacity.
# Returns {token record or nil, seconds to wait ("0": a request was taken)}.
_TAKE = (
    """
local record = false
if KEYS[2] ~= '' then
  record = redis.call('GET', KEYS[2])
  if not record then return {false, '0'} end
end
"""
    + BUCKET_LUA
    + "return {record, tostring(wait)}\n"
)


class ClientRateLimit:
    """Checks a client token and takes one request from its bucket."""

    def __init__(self, client: redis.Redis, keys: Keys, *, rate: float, burst: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.redis = client
        self.keys = keys
        self.rate = rate
        self.burst = max(1.0, burst)
        self._take = client.register_script(_TAKE)

    def authenticate(self, token: str) -> tuple[Client | None, float]:
        """``(client, 0.0)`` for a valid token with a request left; ``(client, seconds)`` when
        it must wait that long first; ``(None, 0.0)`` for an unknown or revoked token."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 256:
            return None, 0.0
        digest = token_hash(token)
        keys = [self.keys.rate_limit(digest), self.keys.client_token(digest)]
        record, wait = self._take(keys=keys, args=[repr(self.rate), repr(self.burst)])
        if record is None:
            return None, 0.0
        return client_from_record(record), float(wait)

    def take(self, bucket: str) -> float:
        """Take one request from the bucket named ``bucket``: 0.0, or seconds to wait."""
        _, wait = self._take(
            keys=[self.keys.rate_limit(bucket), ""], args=[repr(self.rate), repr(self.burst)]
        )
        return float(wait)
