"""The run ledger: each run's durable record in Redis, and the only way to change it.

A run is one hash (:meth:`worker.store.keys.Keys.run`). Every change is a
compare-and-set done by one Lua script (:data:`_CAS`), which checks

* the run's **state** is one of the allowed states (states only move forward), and
* the run's **token** is the one the caller holds.

The token makes every self-rescheduling chain (submit retries, polls) single:
a task claims the run by moving the token ``t -> t+1`` and schedules its
successor with ``t+1``. A duplicate or stale message still carries ``t`` and
finds nothing to do, so a run can never have two poll chains.

``P:schedule`` holds every non-terminal run scored by ``next_at``, the time its
next task is due (or, while a task works on it, when that task's lease ends).
The sweeper re-arms runs that are overdue there.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any

import redis

from worker.errors import IdempotencyConflictError, RunNotFoundError
from worker.store.keys import Keys


class RunState(StrEnum):
    """Where a run is. Non-terminal states only ever move forward, in this order."""

    QUEUED = "QUEUED"
    UPLOADING = "UPLOADING"
    SUBMITTING = "SUBMITTING"
    SUBMITTED = "SUBMITTED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"
    CANCELED = "CANCELED"
    AMBIGUOUS = "AMBIGUOUS"

    @property
    def is_terminal(self) -> bool:
        """True for states a run never leaves."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {
        RunState.COMPLETED,
        RunState.FAILED,
        RunState.TIMED_OUT,
        RunState.REJECTED,
        RunState.CANCELED,
        RunState.AMBIGUOUS,
    }
)
PRE_SUBMIT_STATES = frozenset({RunState.QUEUED, RunState.UPLOADING, RunState.SUBMITTING})
POLLING_STATES = frozenset({RunState.SUBMITTED, RunState.RUNNING})
ACTIVE_STATES = PRE_SUBMIT_STATES | POLLING_STATES

#: Fields stored as JSON in the hash; everything else is a plain string or number.
_JSON_FIELDS = frozenset(
    {
        "inputs",
        "files",
        "metadata",
        "events",
        "step_outputs",
        "documents",
        "callback_attempts",
    }
)
_FLOAT_FIELDS = frozenset(
    {"next_at", "updated_at", "created_at", "run_timeout", "poll_interval", "last_poll_lateness"}
)
_INT_FIELDS = frozenset(
    {
        "token",
        "poll_count",
        "not_found_count",
        "submit_attempts",
        "steps_done",
        "number_of_steps",
        "callback_seq",
        "callback_token",
        "archive_token",
        "archive_attempts",
        "internal_errors",
        "sweeper_rearms",
    }
)
_BOOL_FIELDS = frozenset({"is_draft_app", "submit_inflight"})

# KEYS: run hash, schedule zset, metrics hash (counts state transitions), parked zset.
# ARGV: run_id, allowed (",A,B," or ""), token field, expected token ("" = any),
#       new state ("" = keep), now, schedule ("" keep | "-" remove | score),
#       expire seconds ("" none), bump token ("1"/"0"), return record ("1"/"0"),
#       park ("1": the next task is parked, not published; see worker.runs.dispatcher),
#       n, n pairs of (counter, increment), m, m message payloads, then field, value, ...
# KEYS[5..4+m]: the queues (Celery's Redis lists) the m payloads are pushed to when
# the compare-and-set succeeds: the transactional outbox (worker.store.outbox).
# A run is in the parked zset exactly while its last schedule change asked to park.
# The counters are buffered metrics (worker.ops.metrics) riding along: applied
# whatever the outcome, so they cost no round trip of their own.
# Returns {1, token, state_before[, flat record]} or {0, state} or {-1}.
_CAS = """
local n = tonumber(ARGV[12])
for i = 13, 12 + 2 * n, 2 do
  -- pcall: a counter that cannot be added to never fails the compare-and-set
  if string.find(ARGV[i + 1], '[.eE]') then
    redis.pcall('HINCRBYFLOAT', KEYS[3], ARGV[i], ARGV[i + 1])
  else
    redis.pcall('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
  end
end
local m_at = 13 + 2 * n
local m = tonumber(ARGV[m_at])
local first = m_at + 1 + m
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {-1} end
if ARGV[2] ~= '' and not string.find(ARGV[2], ',' .. state .. ',', 1, true) then
  return {0, state}
end
local token = redis.call('HGET', KEYS[1], ARGV[3]) or '0'
if ARGV[4] ~= '' and token ~= ARGV[4] then return {0, state} end
if ARGV[9] == '1' then
  token = tostring(tonumber(token) + 1)
  redis.call('HSET', KEYS[1], ARGV[3], token)
end
if ARGV[5] ~= '' and ARGV[5] ~= state then
  redis.call('HSET', KEYS[1], 'state', ARGV[5], string.lower(ARGV[5]) .. '_at', ARGV[6])
  redis.call('HINCRBY', KEYS[3], 'state|' .. ARGV[5], 1)
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[6])
if #ARGV >= first then redis.call('HSET', KEYS[1], unpack(ARGV, first)) end
if ARGV[7] == '-' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('HDEL', KEYS[1], 'next_at')
elseif ARGV[7] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[7], ARGV[1])
  redis.call('HSET', KEYS[1], 'next_at', ARGV[7])
  if ARGV[11] == '1' then
    redis.call('ZADD', KEYS[4], ARGV[7], ARGV[1])
  else
    redis.call('ZREM', KEYS[4], ARGV[1])
  end
end
if ARGV[8] ~= '' then redis.call('EXPIRE', KEYS[1], ARGV[8]) end
for j = 1, m do redis.call('LPUSH', KEYS[4 + j], ARGV[m_at + j]) end
if ARGV[10] == '1' then return {1, token, state, redis.call('HGETALL', KEYS[1])} end
return {1, token, state}
"""

# KEYS: run hash, runs zset, schedule zset, idempotency key ("" when none), metrics hash,
#       a list to append the new run id to ("" when none)
# ARGV: run_id, now, next_at, fingerprint, idem ttl, field, value, ...
# Returns {1, run_id} or {0, existing_run_id, existing_fingerprint}.
#: A run index (``Ledger.create(indexed_in=...)``) is trimmed on about this share of
#: creates (and on every page read), so most creates pay no extra round trip.
INDEX_TRIM_CHANCE = 1 / 32

_CREATE = """
if KEYS[4] ~= '' then
  local existing = redis.call('GET', KEYS[4])
  if existing then
    local sep = string.find(existing, '|', 1, true)
    return {0, string.sub(existing, 1, sep - 1), string.sub(existing, sep + 1)}
  end
  redis.call('SET', KEYS[4], ARGV[1] .. '|' .. ARGV[4], 'EX', ARGV[5])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('HINCRBY', KEYS[5], 'state|QUEUED', 1)
if KEYS[6] ~= '' then redis.call('RPUSH', KEYS[6], ARGV[1]) end
if KEYS[7] ~= '' then redis.call('ZADD', KEYS[7], ARGV[2], ARGV[1]) end
return {1, ARGV[1]}
"""


# KEYS: parked zset. ARGV: due before (score), limit.
# Returns id, score, id, score, ... of the runs taken off the zset.
_POP_PARKED = """
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1],
                       'WITHSCORES', 'LIMIT', 0, ARGV[2])
for i = 1, #rows, 2 do redis.call('ZREM', KEYS[1], rows[i]) end
return rows
"""


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, RunState):
        return value.value
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _decode(name: str, raw: str) -> Any:
    if name in _JSON_FIELDS:
        return json.loads(raw) if raw else None
    if name in _FLOAT_FIELDS or name.endswith("_at"):
        return float(raw) if raw else None
    if name in _INT_FIELDS:
        return int(raw) if raw else 0
    if name in _BOOL_FIELDS:
        return raw == "1"
    return raw


class Run(dict[str, Any]):
    """A run record as read from the ledger: a dict of decoded fields.

    Convenience properties cover the fields every caller needs; everything
    else is available by key (``run["job_id"]``). See README "Run record".
    """

    @classmethod
    def from_hash(cls, data: Mapping[str, str]) -> Run:
        """Decode a raw Redis hash."""
        return cls({k: _decode(k, v) for k, v in data.items()})

    @property
    def run_id(self) -> str:
        """The run's id."""
        return str(self["run_id"])

    @property
    def state(self) -> RunState:
        """The run's state."""
        return RunState(self["state"])

    @property
    def token(self) -> int:
        """The run's current chain token."""
        return int(self.get("token") or 0)

    def history(self) -> list[tuple[str, float]]:
        """``(state, time)`` for every state the run went through, oldest first."""
        names = {s.value.lower(): s.value for s in RunState}
        stamps = [
            (names[k[: -len("_at")]], float(v))
            for k, v in self.items()
            if k.endswith("_at") and k[: -len("_at")] in names and v is not None
        ]
        return sorted(stamps, key=lambda item: item[1])


def fingerprint(params: Mapping[str, Any]) -> str:
    """A stable hash of run parameters, to compare idempotent requests."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _flat(fields: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in fields.items():
        if value is None:
            continue
        out += [key, _encode(value)]
    return out


def _allowed(states: Iterable[RunState] | None) -> str:
    if states is None:
        return ""
    return "," + ",".join(s.value for s in states) + ","


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}


class Created(tuple[str, bool]):
    """What :meth:`Ledger.create` returns: ``(run_id, created)``, and :attr:`record`.

    A tuple, so ``run_id, created = ledger.create(...)`` reads as it always did;
    :attr:`record` is the run as this call wrote it (None when an idempotency key
    returned an existing run), decoded only when asked for: a caller that answers
    with the new run (the HTTP API) needs no second trip to Redis to read it back.
    """

    _written: list[str] | None

    def __new__(cls, run_id: str, created: bool, written: list[str] | None = None) -> Created:
        self = super().__new__(cls, (run_id, created))
        self._written = written
        return self

    @property
    def run_id(self) -> str:
        """The run's id (new, or the existing run's)."""
        return self[0]

    @property
    def created(self) -> bool:
        """False when an idempotency key returned an existing run."""
        return self[1]

    @property
    def record(self) -> Run | None:
        """The new run's record exactly as written (as :meth:`Ledger.get` would read it)."""
        return Run.from_hash(_pairs(self._written)) if self._written is not None else None


class CasResult:
    """Outcome of a compare-and-set: ``ok``, the new token, the state before, the record,
    and the value its ``peek`` read (None without one)."""

    __slots__ = ("ok", "peeked", "record", "state_before", "token")

    def __init__(
        self,
        ok: bool,
        token: int = 0,
        state_before: str = "",
        record: Run | None = None,
        peeked: str | None = None,
    ) -> None:
        self.ok = ok
        self.token = token
        self.state_before = state_before
        self.record = record
        self.peeked = peeked

    def __bool__(self) -> bool:
        return self.ok


class Ledger:
    """Reads and compare-and-sets run records in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        keys: Keys | None = None,
        retention: int = 30 * 86400,
        idempotency_ttl: int = 7 * 86400,
        clock: Any = time.time,
    ) -> None:
        self.redis = client
        self.keys = keys or Keys()
        self.retention = retention
        self.idempotency_ttl = idempotency_ttl
        self.clock = clock
        #: Buffered metric increments to apply with the next compare-and-set
        #: (set by :class:`~worker.context.Context` to ``Metrics.drain``).
        self.counters: Callable[[], Mapping[str, float]] | None = None
        self._cas = client.register_script(_CAS)
        self._create = client.register_script(_CREATE)
        self._pop_parked = client.register_script(_POP_PARKED)

    # --- create and read ------------------------------------------------------------

    def create(
        self,
        fields: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        params_fingerprint: str = "",
        first_due_in: float = 0.0,
        run_id: str | None = None,
        listed_in: str = "",
        indexed_in: str = "",
    ) -> Created:
        """Create a QUEUED run; return ``(run_id, created)`` (a :class:`Created`).

        With an ``idempotency_key`` seen before, return the existing run id and
        ``created=False`` when the parameters match, else raise
        :class:`IdempotencyConflictError`. ``first_due_in``: when the first task
        is due; the sweeper re-arms the run if it is still QUEUED
        ``HATZ_SWEEP_GRACE`` seconds later (the publish may have been lost).
        ``listed_in``: a Redis list the new run's id is appended to in the same
        script (a batch's runs as they are made), so no run exists unlisted.
        ``indexed_in``: a sorted set the id is added to by creation time (a client's runs).
        """
        run_id = run_id or uuid.uuid4().hex
        now = self.clock()
        record = {
            **fields,
            "run_id": run_id,
            "state": RunState.QUEUED,
            "token": 0,
            "created_at": now,
            "queued_at": now,
            "updated_at": now,
            "next_at": now + first_due_in,
        }
        if idempotency_key:
            record["idempotency_key"] = idempotency_key
        idem_key = self.keys.idempotency(idempotency_key) if idempotency_key else ""
        written = _flat(record)
        result = _evalsha(
            self._create,
            keys=[
                self.keys.run(run_id),
                self.keys.runs,
                self.keys.schedule,
                idem_key,
                self.keys.metrics,
                listed_in,
                indexed_in,
            ],
            args=[
                run_id,
                now,
                now + first_due_in,
                params_fingerprint,
                self.idempotency_ttl,
                *written,
            ],
        )
        if int(result[0]) == 1:
            if indexed_in and random.random() < INDEX_TRIM_CHANCE:
                self.trim_index(indexed_in)
            return Created(run_id, True, written)
        existing, existing_fp = _str(result[1]), _str(result[2])
        if existing_fp != params_fingerprint:
            raise IdempotencyConflictError(
                f"idempotency key {idempotency_key!r} was already used for run {existing} "
                "with different parameters"
            )
        return Created(existing, False)

    def idempotent_run(self, idempotency_key: str) -> tuple[str, str] | None:
        """``(run_id, params_fingerprint)`` of the run made with this key, or None."""
        raw = self.redis.get(self.keys.idempotency(idempotency_key))
        if raw is None:
            return None
        run_id, _, fp = _str(raw).partition("|")
        return run_id, fp

    def get(self, run_id: str) -> Run | None:
        """The run record, or None when unknown or expired."""
        data = self.redis.hgetall(self.keys.run(run_id))
        if not data:
            return None
        return Run.from_hash({_str(k): _str(v) for k, v in data.items()})

    def get_many(self, run_ids: Sequence[str]) -> list[Run | None]:
        """The records of ``run_ids`` in one round trip (None for each unknown or expired)."""
        if not run_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hgetall(self.keys.run(run_id))
        return [
            Run.from_hash({_str(k): _str(v) for k, v in data.items()}) if data else None
            for data in pipe.execute()
        ]

    def require(self, run_id: str) -> Run:
        """The run record; raise :class:`RunNotFoundError` when missing."""
        run = self.get(run_id)
        if run is None:
            raise RunNotFoundError(f"no run {run_id!r} in the ledger (unknown or expired)")
        return run

    def run_ids(self, *, newest_first: bool = True, limit: int = 1000) -> list[str]:
        """Run ids by creation time; trims ids whose records expired."""
        cutoff = self.clock() - self.retention
        self.redis.zremrangebyscore(self.keys.runs, "-inf", cutoff)
        ids = (
            self.redis.zrevrange(self.keys.runs, 0, limit - 1)
            if newest_first
            else self.redis.zrange(self.keys.runs, 0, limit - 1)
        )
        return [_str(i) for i in ids]

    def trim_index(self, index: str) -> None:
        """Drop ids older than the retention (their records expired) from a sorted-set index."""
        if index:
            self.redis.zremrangebyscore(index, "-inf", self.clock() - self.retention)

    def ids_before(
        self, index: str, *, before: tuple[float, str] | None = None, limit: int = 100
    ) -> list[tuple[str, float]]:
        """``(run_id, created_at)`` from a sorted-set ``index``, newest first, after ``before``.

        ``before`` is the last ``(created_at, run_id)`` a previous page ended on;
        ties on the time are ordered by id, as Redis orders them. Ids older than
        the retention are trimmed from the index first.
        """
        self.trim_index(index)
        top: float | str = "+inf" if before is None else before[0]
        rows: list[tuple[str, float]] = []
        offset = 0
        while len(rows) < limit:
            chunk: list[tuple[str, float]] = self.redis.zrevrangebyscore(  # type: ignore[assignment]
                index, top, "-inf", start=offset, num=limit + 1, withscores=True
            )
            if not chunk:
                break
            offset += len(chunk)
            for member, score in chunk:
                run_id = _str(member)
                # Already on an earlier page: same time, not before it in Redis's order.
                if before is not None and float(score) == before[0] and run_id >= before[1]:
                    continue
                rows.append((run_id, float(score)))
        return rows[:limit]

    def due(self, before: float, *, limit: int = 500, offset: int = 0) -> list[tuple[str, float]]:
        """Scheduled runs whose ``next_at`` is earlier than ``before``, soonest first."""
        rows = self.redis.zrangebyscore(
            self.keys.schedule, "-inf", before, start=offset, num=limit, withscores=True
        )
        return [(_str(row[0]), float(row[1])) for row in rows]

    def pop_parked(
        self, before: float, *, limit: int = 1000, fields: Sequence[str] = ()
    ) -> list[tuple[str, float, Run]]:
        """Take parked runs due before ``before`` off ``Keys.parked``: ``(id, due, record)``.

        Atomic (one script), so two dispatchers never both take a run. The
        record holds ``state``, ``token`` and ``fields``; a run whose record is
        gone comes back with an empty record. Whoever pops a run must publish its
        poll; if it dies first, the run's ``next_at`` is still in the schedule and
        the sweeper re-arms it.
        """
        rows = _evalsha(self._pop_parked, keys=[self.keys.parked], args=[repr(before), limit])
        ids = [_str(rows[i]) for i in range(0, len(rows), 2)]
        if not ids:
            return []
        names = ["state", "token", *(f for f in fields if f not in ("state", "token"))]
        pipe = self.redis.pipeline(transaction=False)
        for run_id in ids:
            pipe.hmget(self.keys.run(run_id), names)
        out = []
        for i, (run_id, values) in enumerate(zip(ids, pipe.execute(), strict=True)):
            record = Run(
                {"run_id": run_id}
                | {k: _decode(k, _str(v)) for k, v in zip(names, values, strict=True) if v}
            )
            out.append((run_id, float(rows[2 * i + 1]), record if values[0] else Run()))
        return out

    def note_error(self, run_id: str, message: str) -> int:
        """Record an unexpected task error on a run; return its count (0 if no such run).

        Only ``last_error`` and the ``internal_errors`` counter change; the run's
        state and token do not, so the sweeper re-arms it as for a lost task.
        """
        run = self.get(run_id)
        if run is None:
            return 0
        count = int(run.get("internal_errors") or 0) + 1
        result = self.cas(
            run_id,
            states=None,
            fields={"last_error": message[:500], "internal_errors": count},
        )
        return count if result else 0

    # --- compare-and-set ----------------------------------------------------------

    def cas(
        self,
        run_id: str,
        *,
        states: Iterable[RunState] | None,
        token: int | None = None,
        token_field: str = "token",
        to: RunState | None = None,
        fields: Mapping[str, Any] | None = None,
        next_at: float | None = None,
        unschedule: bool = False,
        bump_token: bool = False,
        return_record: bool = False,
        park: bool = False,
        push: Sequence[tuple[str, str]] = (),
        peek: tuple[str, str] | None = None,
    ) -> CasResult:
        """Atomically change a run if its state is in ``states`` and its token is ``token``.

        ``states`` is required (None means "any state", which only metadata updates use).

        ``to`` moves the state (recording ``<state>_at``); a terminal ``to``
        starts the run's retention countdown and, unless ``next_at`` is given
        (a callback still due), removes it from the schedule. ``bump_token``
        claims the run (``token -> token+1``); ``token_field`` names the
        token (``token`` for the run chain, ``callback_token`` for deliveries).
        ``park`` (with ``next_at``): the run's next poll is not published now but
        waits in ``Keys.parked`` for :mod:`worker.runs.dispatcher`; any other schedule
        change takes the run off that list. ``push``: ``(queue key, payload)``
        messages to ``LPUSH`` if, and only if, the compare-and-set succeeds
        (:mod:`worker.store.outbox`). ``peek``: ``(hash key, field)`` read in the same round
        trip, right after the script (not atomically with it), into
        :attr:`CasResult.peeked`.
        """
        if park and next_at is None:
            raise ValueError("park needs next_at")
        now = self.clock()
        terminal = to is not None and to.is_terminal
        if unschedule or (terminal and next_at is None):
            schedule = "-"
        else:
            schedule = "" if next_at is None else repr(next_at)
        keys = [
            self.keys.run(run_id),
            self.keys.schedule,
            self.keys.metrics,
            self.keys.parked,
            *(queue for queue, _ in push),
        ]
        args = [
            run_id,
            _allowed(states),
            token_field,
            "" if token is None else str(token),
            "" if to is None else to.value,
            repr(now),
            schedule,
            str(self.retention) if terminal else "",
            "1" if bump_token else "0",
            "1" if return_record else "0",
            "1" if park else "0",
            *self._counter_args(),
            str(len(push)),
            *(payload for _, payload in push),
            *_flat(fields or {}),
        ]
        peeked = None
        if peek is None:
            result = _evalsha(self._cas, keys=keys, args=args)
        else:
            result, peeked = _evalsha_and_hget(self._cas, keys=keys, args=args, peek=peek)
        code = int(result[0])
        if code == -1:
            return CasResult(False, state_before="", peeked=peeked)
        if code == 0:
            return CasResult(False, state_before=_str(result[1]), peeked=peeked)
        record = None
        if return_record:
            record = Run.from_hash(_pairs([_str(x) for x in result[3]]))
        return CasResult(True, int(result[1]), _str(result[2]), record, peeked)

    def _counter_args(self) -> list[str]:
        counts = self.counters() if self.counters is not None else {}
        out = [str(len(counts))]
        for name, amount in counts.items():
            out += [name, repr(amount) if isinstance(amount, float) else str(int(amount))]
        return out

    def cas_durable(self, within: float, **kwargs: Any) -> CasResult:
        """:meth:`cas`, retried across a Redis outage for up to ``within`` seconds.

        For the one write that must not be lost to a Redis blip: a job id the
        API just returned exists nowhere else. Raises the last connection error
        when Redis is still away at the deadline.
        """
        deadline = time.monotonic() + within
        delay = 0.05
        while True:
            try:
                return self.cas(**kwargs)
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def claim(
        self,
        run_id: str,
        token: int,
        states: Iterable[RunState],
        lease: float,
        *,
        token_field: str = "token",
        fields: Mapping[str, Any] | None = None,
    ) -> Run | None:
        """Claim a run for one task: bump its token and hold it for ``lease`` seconds.

        Returns the record (with the new token) or None when the message is
        stale, duplicated, or the run is in another state. Stamps ``claimed_at``:
        the sweeper's stall detection reads it as "a task last worked on this run".
        """
        return self.claim_peeking(
            run_id, token, states, lease, token_field=token_field, fields=fields
        ).record

    def claim_peeking(
        self,
        run_id: str,
        token: int,
        states: Iterable[RunState],
        lease: float,
        *,
        token_field: str = "token",
        to: RunState | None = None,
        fields: Mapping[str, Any] | None = None,
        peek: tuple[str, str] | None = None,
    ) -> CasResult:
        """:meth:`claim`, the record in ``.record``; ``to`` moves the state in the same
        compare-and-set; ``peek`` as :meth:`cas` reads it."""
        stamp = {"claimed_at": self.clock()} if token_field == "token" else {}
        return self.cas(
            run_id,
            states=states,
            token=token,
            token_field=token_field,
            to=to,
            bump_token=True,
            next_at=self.clock() + lease,
            fields={**stamp, **(fields or {})},
            return_record=True,
            peek=peek,
        )


def _evalsha(script: Any, *, keys: list[str], args: list[Any]) -> Any:
    """``script(keys, args)`` without redis-py's per-call ``isinstance(client, Pipeline)``
    (a Protocol check: about 1 % of a poll's CPU). Loads the script when Redis lacks it."""
    try:
        return script.registered_client.evalsha(script.sha, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        return script(keys=keys, args=args)


def _evalsha_and_hget(
    script: Any, *, keys: list[str], args: list[Any], peek: tuple[str, str]
) -> tuple[Any, str | None]:
    """:func:`_evalsha` and ``HGET peek`` in one round trip (a pipeline, not a transaction)."""
    client = script.registered_client

    def send() -> list[Any]:
        pipe = client.pipeline(transaction=False)
        pipe.evalsha(script.sha, len(keys), *keys, *args)
        pipe.hget(*peek)
        return list(pipe.execute())

    try:
        result, value = send()
    except redis.exceptions.NoScriptError:  # Redis forgot it (a restart): load, once more
        client.script_load(script.script)
        result, value = send()
    return result, None if value is None else _str(value)


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
