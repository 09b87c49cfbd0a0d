"""The org-wide credit-overage breaker: one Redis hash shared by every worker.

A 429 credit overage concerns the whole organisation, so when any submit sees
one the breaker **opens** for a backoff that starts at ``HATZ_OVERAGE_PAUSE``
and doubles with every further overage, up to ``HATZ_BREAKER_MAX_BACKOFF``.
While it is open every submit (batch rows and single runs alike) waits in the
ledger and re-checks later; polls of jobs already running carry on. Once the
backoff has elapsed exactly one **probe** submit is let through at a time (a
short lease, so a probe whose worker died is replaced); the probe's success
**closes** the breaker, another overage re-opens it for longer. Nothing is
dropped: a paused run keeps its place and its token.

Every transition is one Lua script on ``P:breaker``; time comes from the
caller's clock so unit tests can drive it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from worker.context import Context

log = logging.getLogger(__name__)

CLOSED = "closed"
OPEN = "open"

# KEYS: breaker hash. ARGV: now, probe lease seconds.
# Returns {1, "closed"|"probe"} when the submit may go, {0, wait seconds} when not.
_ALLOW = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'open' then return {1, 'closed'} end
local now = tonumber(ARGV[1])
local reopen = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if now < reopen then return {0, tostring(reopen - now)} end
local probe = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0')
if now < probe then return {0, tostring(probe - now)} end
redis.call('HSET', KEYS[1], 'probe_until', tostring(now + tonumber(ARGV[2])))
redis.call('HINCRBY', KEYS[1], 'probes', 1)
return {1, 'probe'}
"""

# KEYS: breaker hash. ARGV: now, base backoff, max backoff, error text.
# Returns {opened (1 if it was closed), backoff seconds}.
_TRIP = """
local was = redis.call('HGET', KEYS[1], 'state')
local now = tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
local failures = tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')
-- Submits already in flight when the breaker opened see the same overage: they
-- must not double the backoff. Only a failure after the pause (a probe) does.
if was ~= 'open' or now >= current then failures = failures + 1 end
local backoff = math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) * 2 ^ (math.max(failures, 1) - 1))
-- Only extend, never shorten.
local reopen = math.max(now + backoff, current)
redis.call('HSET', KEYS[1], 'state', 'open', 'failures', failures, 'until', tostring(reopen),
  'probe_until', '0', 'last_error', ARGV[4], 'last_overage_at', ARGV[1])
if was ~= 'open' then
  redis.call('HSET', KEYS[1], 'opened_at', ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'opened_count', 1)
  return {1, tostring(backoff)}
end
return {0, tostring(backoff)}
"""

# KEYS: breaker hash. ARGV: now. Returns 1 when it was open and is now closed.
_RESET = """
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'until', '0', 'probe_until', '0',
  'closed_at', ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Decision:
    """Whether a submit may be sent now: ``allowed``; ``probe`` if it is the one probe;
    otherwise ``wait`` seconds until it is worth asking again."""

    allowed: bool
    probe: bool = False
    wait: float = 0.0


def _probe_lease(ctx: Context) -> float:
    s = ctx.settings
    # Long enough for one submit attempt (connect + read) to report back.
    return s.http_connect_timeout + s.http_read_timeout + 5.0


def closed(state: str | None) -> bool:
    """Whether the breaker's ``state`` field (as read by the caller) lets every submit go."""
    return state != OPEN


def allow_submit(ctx: Context) -> Decision:
    """Ask the breaker before ``POST /workflows/run``; cheap (one Lua call) when closed."""
    script = ctx.redis.register_script(_ALLOW)
    ok, value = script(keys=[ctx.keys.breaker], args=[repr(ctx.clock()), _probe_lease(ctx)])
    if int(ok) == 1:
        probe = str(value) == "probe"
        if probe:
            log.warning("credit-overage breaker: letting one probe submit through")
        return Decision(True, probe=probe)
    return Decision(False, wait=max(0.0, float(value)))


def record_overage(ctx: Context, error: str) -> float:
    """A submit saw a credit overage: open (or extend) the breaker; return its backoff."""
    s = ctx.settings
    script = ctx.redis.register_script(_TRIP)
    opened, backoff = script(
        keys=[ctx.keys.breaker],
        args=[repr(ctx.clock()), s.overage_pause, s.breaker_max_backoff, error[:300]],
    )
    if int(opened):
        log.error("credit-overage breaker OPEN for %.1f s: every submit pauses", float(backoff))
    else:
        log.warning("credit-overage breaker stays open, backoff now %.1f s", float(backoff))
    return float(backoff)


def record_success(ctx: Context) -> bool:
    """A submit succeeded: close the breaker if it was open; True when it just closed."""
    script = ctx.redis.register_script(_RESET)
    closed = bool(int(script(keys=[ctx.keys.breaker], args=[repr(ctx.clock())])))
    if closed:
        log.warning("credit-overage breaker CLOSED: submits resume")
    return closed


def breaker_state(ctx: Context) -> dict[str, Any]:
    """The breaker as a dict for ``status``/``breaker`` displays (``state`` is always set)."""
    raw = ctx.redis.hgetall(ctx.keys.breaker)
    state: dict[str, Any] = {"state": CLOSED}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        text = value.decode() if isinstance(value, bytes) else str(value)
        if name in {"state", "last_error"}:
            state[name] = text
        else:
            try:
                state[name] = float(text)
            except ValueError:
                state[name] = text
    if state["state"] == OPEN:
        state["retry_in"] = max(0.0, float(state.get("until") or 0) - ctx.clock())
    return state


def reset(ctx: Context) -> bool:
    """Close the breaker by hand (an operator knows credits were added)."""
    return record_success(ctx)
