"""A batch's records in Redis: the batch hash, its compare-and-set script and its row list.

Field values are stored as text (numbers as ``repr``, structures as JSON) and
decoded by name, so readers get ints, floats and lists back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from worker.context import Context
from worker.errors import BatchNotFoundError
from worker.store.ledger import RunState

BatchState = Literal["creating", "running", "finished", "abandoned"]

# KEYS: batch hash, then a schedule zset (used by 'add' and 'rem'). ARGV: n conditions,
# the schedule change ('' none, 'add', 'rem'), its score, its member, then n (field,
# ",allowed,values,") pairs, then field, value pairs to set. Returns 1 when every
# condition held (and the set and the schedule change happened), else 0.
_BATCH_CAS = """
local n = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 0, n - 1 do
  local value = redis.call('HGET', KEYS[1], ARGV[5 + 2 * i]) or ''
  if not string.find(ARGV[6 + 2 * i], ',' .. value .. ',', 1, true) then return 0 end
end
if #ARGV > 4 + 2 * n then redis.call('HSET', KEYS[1], unpack(ARGV, 5 + 2 * n)) end
if ARGV[2] == 'add' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4]) end
if ARGV[2] == 'rem' then redis.call('ZREM', KEYS[2], ARGV[4]) end
return 1
"""

_INT_FIELDS = frozenset(
    {
        "total",
        "max_in_flight",
        "skipped",
        "reused",
        "callback_token",
        "callback_tries",
        "callback_rearms",
        "rows_in_source",
    }
)
_FLOAT_FIELDS = frozenset({"created_at", "finished_at", "updated_at"})
_JSON_FIELDS = frozenset({"bad_rows", "counts", "callback_attempts", "inputs"})


def _decode(name: str, raw: str) -> Any:
    if name in _JSON_FIELDS:
        return json.loads(raw) if raw else None
    if name in _INT_FIELDS:
        return int(raw) if raw else 0
    if name in _FLOAT_FIELDS:
        return float(raw) if raw else None
    return raw


def _encode(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def flat(fields: Mapping[str, Any]) -> list[str]:
    """``[field, value, ...]`` as stored: None values left out, the rest as text."""
    out: list[str] = []
    for key, value in fields.items():
        if value is not None:
            out += [key, _encode(value)]
    return out


def text(value: Any) -> str:
    """A Redis reply (bytes or str) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def batch_cas(
    ctx: Context,
    batch_id: str,
    conditions: Mapping[str, Iterable[str]],
    fields: Mapping[str, Any],
    *,
    schedule: str | None = None,
    due_at: float | None = None,
) -> bool:
    """Set ``fields`` (and ``updated_at``) if every field in ``conditions`` holds one of
    its allowed values, atomically; say whether it did.

    With ``schedule`` (a sorted set's key), the same step also puts the batch on it
    scored ``due_at``, or takes it off when ``due_at`` is None.
    """
    script = ctx.redis.register_script(_BATCH_CAS)
    op = "" if schedule is None else ("rem" if due_at is None else "add")
    args: list[str] = [str(len(conditions)), op, repr(due_at or 0.0), batch_id]
    for name, allowed in conditions.items():
        args += [name, "," + ",".join(allowed) + ","]
    args += flat({**fields, "updated_at": ctx.clock()})
    keys = [ctx.keys.batch(batch_id), schedule or ctx.keys.batch(batch_id)]
    return bool(int(script(keys=keys, args=args)))


def get_record(ctx: Context, batch_id: str) -> dict[str, Any]:
    """The raw batch record (decoded); raise :class:`BatchNotFoundError` when unknown."""
    raw = ctx.redis.hgetall(ctx.keys.batch(batch_id))
    if not raw:
        raise BatchNotFoundError(f"no batch {batch_id!r} (unknown or expired)")
    return {text(k): _decode(text(k), text(v)) for k, v in raw.items()}


def row_run_ids(ctx: Context, batch_id: str) -> list[str]:
    """The batch's run ids in row order."""
    return [text(r) for r in ctx.redis.lrange(ctx.keys.batch_rows(batch_id), 0, -1)]


def run_states(ctx: Context, run_ids: Sequence[str]) -> list[RunState | None]:
    """Each run's state (None for an expired record), in one pipelined round trip."""
    pipe = ctx.redis.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hget(ctx.keys.run(run_id), "state")
    return [RunState(text(s)) if s else None for s in pipe.execute()]


def list_batches(ctx: Context, *, limit: int = 20) -> list[dict[str, Any]]:
    """Recent batch records, newest first (expired ones skipped)."""
    out: list[dict[str, Any]] = []
    for raw in ctx.redis.zrevrange(ctx.keys.batches, 0, limit - 1):
        batch_id = text(raw)
        try:
            out.append(get_record(ctx, batch_id))
        except BatchNotFoundError:
            ctx.redis.zrem(ctx.keys.batches, batch_id)
    return out
