"""Batches: one app, many input rows, at most ``max_in_flight`` runs submitted at once.

A batch is created in one go, *after* every row has been validated (locally and
against the app's ``user_inputs``): each good row becomes a normal run in the
ledger (``batch_id`` and ``row`` fields), created QUEUED but **held**: its
``next_at`` lies far in the future, so neither a worker nor the sweeper
touches it, and its run id waits in ``P:batch:<id>:pending``.

Releasing is one Lua script (:data:`_RELEASE`): while the batch's in-flight
set has fewer than ``max_in_flight`` members it moves the next pending run id
into that set, atomically, so concurrent releases never exceed the limit. The
released run is then scheduled and its ``hatz.submit`` published, and from
there it is an ordinary run: polling, callbacks and the sweeper just work.

:func:`tick` is the batch's one idempotent step: prune in-flight runs that are
terminal (freeing their slots), release into the free slots, and finish the
batch once nothing is pending or in flight. :func:`worker.runs.finish.finish`
publishes a tick whenever a batch run ends; the periodic batch sweep ticks
every active batch, which recovers a tick lost to a crash (a slot is never
lost: the in-flight set is re-derived from the run records).

Finishing is a compare-and-set (``running -> finished``), so the batch-level
``batch.completed`` callback is queued exactly once; it is delivered with the
same Standard Webhooks signing as run callbacks, under its own token.

A creation that dies half-way (a worker killed while a scheduled batch was
being created, a CLI interrupted) leaves a batch ``creating`` and some held
runs. The batch is indexed (and its runs listed in ``P:batch:<id>:created``)
from the start, so the batch sweep finds it: after :data:`CREATING_GRACE` it
is ``abandoned`` and those runs CANCELED (so they no longer hold its batch
key, and they expire like any ended run). The creator's own last step is a compare-and-set
``creating -> running``, so a creation that outlives the grace does not revive
an abandoned batch: it cancels what it made and raises.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import requests

from worker import task_names
from worker.context import Context
from worker.errors import (
    BatchNotFoundError,
    HatzNotFoundError,
    InvalidBatchError,
    InvalidRunError,
)
from worker.hatz.types import App
from worker.runs.apps import fetch_app
from worker.runs.inputs import validate_inputs
from worker.runs.request import check_request
from worker.runs.submit import submit_hint
from worker.store.ledger import Run, RunState, fingerprint
from worker.store.outbox import Next
from worker.webhooks import signing
from worker.webhooks.delivery import RETRYABLE_STATUS
from worker.webhooks.ssrf import check_callback_url

log = logging.getLogger(__name__)

OnBadRows = Literal["skip", "abort"]
BatchState = Literal["creating", "running", "finished", "abandoned"]

#: Held runs are due this far in the future: never re-armed before release.
HELD_FOR = 10 * 365 * 86400.0
#: A batch still ``creating`` this long after it started was interrupted: abandon it.
CREATING_GRACE = 600.0
_ABANDONED = "batch creation was interrupted; its runs were canceled"
#: After release, the sweeper may re-arm the run's submit this long after it was due.
_FIRST_DUE_IN = 60.0
_MAX_PROBLEMS_KEPT = 200
_MAX_SUMMARY_FAILURES = 50
_BATCH_EVENT = "batch.completed"

#: How a run's state is counted in batch progress.
_COUNT_AS = {
    RunState.QUEUED: "queued",
    RunState.UPLOADING: "running",
    RunState.SUBMITTING: "running",
    RunState.SUBMITTED: "running",
    RunState.RUNNING: "running",
    RunState.COMPLETED: "completed",
    RunState.FAILED: "failed",
    RunState.TIMED_OUT: "failed",
    RunState.REJECTED: "failed",
    RunState.CANCELED: "failed",
    RunState.AMBIGUOUS: "failed",
}

# KEYS: pending list, in-flight set. ARGV: max in flight.
# Returns the released run id, or false when the batch is full or nothing is pending.
_RELEASE = """
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[1]) then return false end
local run_id = redis.call('LPOP', KEYS[1])
if not run_id then return false end
redis.call('SADD', KEYS[2], run_id)
return run_id
"""

# KEYS: batch hash. ARGV: n conditions, then n (field, ",allowed,values,") pairs,
# then field, value pairs to set. Returns 1 when every condition held (and the set
# happened), else 0.
_BATCH_CAS = """
local n = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 0, n - 1 do
  local value = redis.call('HGET', KEYS[1], ARGV[2 + 2 * i]) or ''
  if not string.find(ARGV[3 + 2 * i], ',' .. value .. ',', 1, true) then return 0 end
end
if #ARGV > 1 + 2 * n then redis.call('HSET', KEYS[1], unpack(ARGV, 2 + 2 * n)) end
return 1
"""

_INT_FIELDS = frozenset(
    {"total", "max_in_flight", "skipped", "reused", "callback_token", "rows_in_source"}
)
_FLOAT_FIELDS = frozenset({"created_at", "finished_at", "updated_at"})
_JSON_FIELDS = frozenset({"bad_rows", "counts", "callback_attempts", "inputs"})


# --- rows and sources -----------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One input row: its 1-based number in the source, input values and local files."""

    number: int
    inputs: dict[str, Any]
    files: dict[str, str]

    def content_hash(self, app_id: str) -> str:
        """A stable hash of what this row would submit (the resume key of the row)."""
        return fingerprint({"app_id": app_id, "inputs": self.inputs, "files": self.files})


@dataclass(frozen=True)
class BadRow:
    """A row that failed validation, with every problem found."""

    number: int
    problems: list[str]

    def describe(self) -> str:
        """``row N: problem; problem``."""
        return f"row {self.number}: " + "; ".join(self.problems)


def _row_from_mapping(
    number: int,
    values: Mapping[str, Any],
    fixed: Mapping[str, Any],
    file_input: str | None,
    base_dir: Path,
) -> Row:
    inputs: dict[str, Any] = dict(fixed)
    files: dict[str, str] = {}
    for key, value in values.items():
        if value is None or value == "":
            continue  # an empty cell leaves an optional input unset
        if key == file_input:
            path = Path(str(value)).expanduser()
            files[key] = str(path if path.is_absolute() else base_dir / path)
            inputs.pop(key, None)
        else:
            inputs[key] = value
    return Row(number, inputs, files)


def read_source(
    source: str | os.PathLike[str] | None,
    *,
    inputs: Mapping[str, Any] | None = None,
    file_input: str | None = None,
) -> tuple[list[Row], list[BadRow]]:
    """Read a batch source into rows and rows that could not be parsed.

    A row's number is its line in the file (in a CSV the header is row 1, as in
    a spreadsheet; blank lines are skipped but keep the count); in a folder,
    its 1-based position by name.

    * ``*.csv``: one row per line after the header; columns are variable names,
      an empty cell leaves that input unset.
    * ``*.jsonl`` / ``*.ndjson``: one JSON object per non-blank line.
    * a folder: one row per regular, non-hidden file (sorted by name), given as
      the ``file_input`` variable.
    * ``None``: a single row of the fixed ``inputs`` alone.

    ``inputs`` are fixed values for every row (a row's own value wins). With
    ``file_input``, that column (CSV/JSONL) holds a local path, relative to the
    source file's folder, to upload.
    """
    fixed = dict(inputs or {})
    if source is None:
        return [Row(1, fixed, {})], []
    path = Path(source).expanduser()
    rows: list[Row] = []
    bad: list[BadRow] = []
    if path.is_dir():
        if not file_input:
            raise InvalidBatchError(["a folder source needs --file-input VAR (the file's input)"])
        entries = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        for number, entry in enumerate(entries, start=1):
            rows.append(Row(number, dict(fixed), {file_input: str(entry.resolve())}))
        return rows, bad
    if not path.is_file():
        raise InvalidBatchError([f"source not found: {path}"])
    suffix = path.suffix.lower()
    base_dir = path.resolve().parent
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames:
                raise InvalidBatchError([f"{path}: no header row"])
            for record in reader:
                number = reader.line_num  # the spreadsheet row: the header is row 1
                if None in record:
                    bad.append(BadRow(number, ["more cells than header columns"]))
                    continue
                rows.append(_row_from_mapping(number, record, fixed, file_input, base_dir))
        return rows, bad
    if suffix in {".jsonl", ".ndjson"}:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except ValueError as exc:
                    bad.append(BadRow(number, [f"not JSON: {exc}"]))
                    continue
                if not isinstance(value, dict):
                    bad.append(BadRow(number, ["not a JSON object"]))
                    continue
                rows.append(_row_from_mapping(number, value, fixed, file_input, base_dir))
        return rows, bad
    raise InvalidBatchError([f"{path}: unknown source type (use .csv, .jsonl or a folder)"])


def validate_rows(app: App, rows: Iterable[Row]) -> tuple[list[Row], list[BadRow]]:
    """Split rows into good ones and bad ones (local checks + the app's ``user_inputs``)."""
    good: list[Row] = []
    bad: list[BadRow] = []
    for row in rows:
        inputs, files, problems = check_request(app.id, row.inputs, row.files, None, None)
        problems += validate_inputs(app, inputs, {**row.files, **files})
        if problems:
            bad.append(BadRow(row.number, problems))
        else:
            good.append(Row(row.number, inputs, files))
    return good, bad


# --- records --------------------------------------------------------------------------


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


def _flat(fields: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in fields.items():
        if value is not None:
            out += [key, _encode(value)]
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _batch_cas(
    ctx: Context, batch_id: str, conditions: Mapping[str, Iterable[str]], fields: Mapping[str, Any]
) -> bool:
    script = ctx.redis.register_script(_BATCH_CAS)
    args: list[str] = [str(len(conditions))]
    for name, allowed in conditions.items():
        args += [name, "," + ",".join(allowed) + ","]
    args += _flat({**fields, "updated_at": ctx.clock()})
    return bool(int(script(keys=[ctx.keys.batch(batch_id)], args=args)))


def get_record(ctx: Context, batch_id: str) -> dict[str, Any]:
    """The raw batch record (decoded); raise :class:`BatchNotFoundError` when unknown."""
    raw = ctx.redis.hgetall(ctx.keys.batch(batch_id))
    if not raw:
        raise BatchNotFoundError(f"no batch {batch_id!r} (unknown or expired)")
    return {_text(k): _decode(_text(k), _text(v)) for k, v in raw.items()}


def row_run_ids(ctx: Context, batch_id: str) -> list[str]:
    """The batch's run ids in row order."""
    return [_text(r) for r in ctx.redis.lrange(ctx.keys.batch_rows(batch_id), 0, -1)]


def _states(ctx: Context, run_ids: Sequence[str]) -> list[RunState | None]:
    pipe = ctx.redis.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hget(ctx.keys.run(run_id), "state")
    return [RunState(_text(s)) if s else None for s in pipe.execute()]


# --- create -----------------------------------------------------------------------------


def create_batch(
    ctx: Context,
    app_id: str,
    source: str | os.PathLike[str] | None = None,
    *,
    inputs: Mapping[str, Any] | None = None,
    file_input: str | None = None,
    callback_url: str | None = None,
    run_callback_url: str | None = None,
    max_in_flight: int | None = None,
    batch_key: str | None = None,
    on_bad_rows: OnBadRows = "abort",
    schedule: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> tuple[str, list[Next]]:
    """Validate every row, record the batch and its held runs; return ``(batch_id, steps)``.

    Nothing is created when the source, the app or (with ``on_bad_rows="abort"``)
    any row is bad: :class:`InvalidBatchError` lists every problem with row
    numbers. With ``"skip"`` bad rows are recorded in the batch (``bad_rows``)
    and left out. ``steps`` are the first releases' submits, to publish.

    With ``batch_key``, rows that already completed under the same key (same
    app and row content) are not submitted again: the batch reuses those runs.
    """
    if on_bad_rows not in ("skip", "abort"):
        raise InvalidBatchError([f"on_bad_rows must be 'skip' or 'abort', not {on_bad_rows!r}"])
    limit = max_in_flight if max_in_flight is not None else ctx.settings.batch_max_in_flight
    problems: list[str] = []
    if not isinstance(limit, int) or limit < 1:
        problems.append("max_in_flight must be an integer >= 1")
    for url in (callback_url, run_callback_url):
        if url:
            try:
                check_callback_url(url, ctx.settings)
            except InvalidRunError as exc:
                problems += exc.problems
    if problems:
        raise InvalidBatchError(problems)
    rows, unparsable = read_source(source, inputs=inputs, file_input=file_input)
    try:
        app = fetch_app(ctx, app_id)
    except HatzNotFoundError:
        raise InvalidBatchError([f"unknown app_id {app_id!r}"]) from None
    good, bad = validate_rows(app, rows)
    bad = sorted(unparsable + bad, key=lambda b: b.number)
    if bad and on_bad_rows == "abort":
        raise InvalidBatchError([b.describe() for b in bad])
    if not good:
        raise InvalidBatchError(["no valid rows", *(b.describe() for b in bad)])

    batch_id = uuid.uuid4().hex
    now = ctx.clock()
    key_map = ctx.keys.batch_key(batch_key) if batch_key else ""
    reuse = _resumable(ctx, app_id, key_map, good)
    record: dict[str, Any] = {
        "batch_id": batch_id,
        "app_id": app_id,
        "state": "creating",
        "source": str(source) if source is not None else "",
        "inputs": dict(inputs or {}),
        "file_input": file_input or "",
        "callback_url": callback_url or "",
        "run_callback_url": run_callback_url or "",
        "max_in_flight": limit,
        "on_bad_rows": on_bad_rows,
        "batch_key": batch_key or "",
        "schedule": schedule or "",
        "rows_in_source": len(rows) + len(unparsable),
        "total": len(good),
        "skipped": len(bad),
        "bad_rows": [{"row": b.number, "problems": b.problems} for b in bad][:_MAX_PROBLEMS_KEPT],
        "created_at": now,
        "updated_at": now,
        "callback_state": "" if not callback_url else "not_due",
        "callback_token": 0,
    }
    flat = _flat(record)
    # Indexed from the start, so the batch sweep can abandon a creation that dies.
    start = ctx.redis.pipeline(transaction=True)
    start.hset(ctx.keys.batch(batch_id), mapping=dict(zip(flat[::2], flat[1::2], strict=True)))
    start.zadd(ctx.keys.batches, {batch_id: now})
    start.zadd(ctx.keys.active_batches, {batch_id: now})
    start.execute()
    run_ids: list[str] = []
    pending: list[str] = []
    reused = 0
    for row in good:
        row_hash = row.content_hash(app_id)
        if row.number in reuse:
            run_ids.append(reuse[row.number])
            reused += 1
            continue
        params = {
            "app_id": app_id,
            "inputs": row.inputs,
            "files": row.files,
            "callback_url": run_callback_url or "",
            "metadata": {**dict(metadata or {}), "batch_id": batch_id, "row": row.number},
            "is_draft_app": False,
            "batch_id": batch_id,
            "row": row.number,
        }
        run_id, _ = ctx.ledger.create(
            params, first_due_in=HELD_FOR, listed_in=ctx.keys.batch_created(batch_id)
        )
        run_ids.append(run_id)
        pending.append(run_id)
        if key_map:
            ctx.redis.hset(key_map, row_hash, run_id)
    pipe = ctx.redis.pipeline(transaction=True)
    pipe.rpush(ctx.keys.batch_rows(batch_id), *run_ids)
    if pending:
        pipe.rpush(ctx.keys.batch_pending(batch_id), *pending)
    if key_map:
        pipe.expire(key_map, ctx.settings.run_retention)
    pipe.execute()
    # Last, and only from ``creating``: a batch the sweep abandoned meanwhile stays so.
    if not _batch_cas(
        ctx, batch_id, {"state": ["creating"]}, {"state": "running", "reused": reused}
    ):
        _cancel_runs(ctx, pending)
        raise InvalidBatchError(
            [f"batch {batch_id}: {_ABANDONED} (took over {CREATING_GRACE:g} s)"]
        )
    ctx.redis.delete(ctx.keys.batch_created(batch_id))
    log.info(
        "batch %s: %d row(s) for app %s (%d reused, %d bad row(s) skipped), max %d in flight",
        batch_id,
        len(good),
        app_id,
        reused,
        len(bad),
        limit,
    )
    return batch_id, tick(ctx, batch_id)


def _resumable(ctx: Context, app_id: str, key_map: str, rows: Sequence[Row]) -> dict[int, str]:
    """Rows already COMPLETED under this batch key: row number -> that run id.

    A row whose earlier run is still going would be submitted twice: refuse.
    """
    if not key_map:
        return {}
    previous = {_text(k): _text(v) for k, v in ctx.redis.hgetall(key_map).items()}
    reuse: dict[int, str] = {}
    busy: list[str] = []
    for row in rows:
        earlier = previous.get(row.content_hash(app_id))
        run = ctx.ledger.get(earlier) if earlier else None
        if run is None:
            continue
        if run.state is RunState.COMPLETED:
            reuse[row.number] = run.run_id
        elif not run.state.is_terminal:
            busy.append(f"row {row.number}: still {run.state.value} as run {run.run_id}")
    if busy:
        raise InvalidBatchError(["an earlier batch with this batch key is still running", *busy])
    return reuse


# --- an interrupted creation ------------------------------------------------------------


def _cancel_runs(ctx: Context, run_ids: Iterable[str]) -> None:
    """Cancel held runs that never got going (QUEUED only: anything else is left alone)."""
    for run_id in run_ids:
        ctx.ledger.cas(
            run_id, states={RunState.QUEUED}, to=RunState.CANCELED, fields={"error": _ABANDONED}
        )


def _abandon_if_stale(ctx: Context, batch_id: str) -> bool:
    """Abandon a batch whose creation started over :data:`CREATING_GRACE` s ago; say if it did.

    The compare-and-set ``creating -> abandoned`` comes first, so a creation still
    finishing cannot revive the batch (its own last step is ``creating -> running``).
    """
    started = ctx.redis.hget(ctx.keys.batch(batch_id), "created_at")
    if started is None or ctx.clock() - float(_text(started)) < CREATING_GRACE:
        return False
    fields = {"state": "abandoned", "finished_at": ctx.clock(), "error": _ABANDONED}
    if not _batch_cas(ctx, batch_id, {"state": ["creating"]}, fields):
        return False
    created = [_text(r) for r in ctx.redis.lrange(ctx.keys.batch_created(batch_id), 0, -1)]
    _cancel_runs(ctx, created)
    ctx.redis.delete(ctx.keys.batch_created(batch_id))
    ctx.redis.zrem(ctx.keys.active_batches, batch_id)
    log.warning("batch %s: %s (%d run(s))", batch_id, _ABANDONED, len(created))
    return True


# --- tick: prune, release, finish -------------------------------------------------------


def _schedule_release(ctx: Context, run_id: str) -> Next | None:
    """Make a released (held) run due now; its submit task, or None if it already ended."""
    result = ctx.ledger.cas(
        run_id, states={RunState.QUEUED}, next_at=ctx.clock() + _FIRST_DUE_IN, return_record=True
    )
    if not result or result.record is None:
        return None
    return Next(task_names.SUBMIT, (run_id, result.record.token, submit_hint(result.record)))


def tick(ctx: Context, batch_id: str) -> list[Next]:
    """The batch's one idempotent step: free slots of ended runs, release, maybe finish.

    Safe to run any number of times, concurrently: slots are taken by
    :data:`_RELEASE` atomically and given back by removing a run that the
    ledger says is terminal. Returns the submits (and the batch callback) to publish.
    """
    keys = ctx.keys
    state = ctx.redis.hget(keys.batch(batch_id), "state")
    if state is None or _text(state) != "running":
        if state is not None and _text(state) == "creating":
            _abandon_if_stale(ctx, batch_id)
        elif state is None or _text(state) in ("finished", "abandoned"):
            ctx.redis.zrem(keys.active_batches, batch_id)
        return []
    limit = int(ctx.redis.hget(keys.batch(batch_id), "max_in_flight") or 1)
    steps: list[Next] = []
    inflight = [_text(m) for m in ctx.redis.smembers(keys.batch_inflight(batch_id))]
    held_after = ctx.clock() + HELD_FOR / 2
    for run_id, run_state in zip(inflight, _states(ctx, inflight), strict=True):
        if run_state is None or run_state.is_terminal:
            ctx.redis.srem(keys.batch_inflight(batch_id), run_id)
        elif run_state is RunState.QUEUED:
            # Released, but the process died before making it due: do it now.
            run = ctx.ledger.get(run_id)
            if run is not None and float(run.get("next_at") or 0) > held_after:
                step = _schedule_release(ctx, run_id)
                steps += [step] if step else []
    release = ctx.redis.register_script(_RELEASE)
    while True:
        released = release(
            keys=[keys.batch_pending(batch_id), keys.batch_inflight(batch_id)], args=[limit]
        )
        if not released:
            break
        run_id = _text(released)
        step = _schedule_release(ctx, run_id)
        if step is None:  # ended while pending (canceled): give the slot straight back
            ctx.redis.srem(keys.batch_inflight(batch_id), run_id)
            continue
        steps.append(step)
    if ctx.redis.llen(keys.batch_pending(batch_id)) == 0 and not ctx.redis.scard(
        keys.batch_inflight(batch_id)
    ):
        steps += _finish(ctx, batch_id)
    return steps


def _finish(ctx: Context, batch_id: str) -> list[Next]:
    run_ids = row_run_ids(ctx, batch_id)
    states = _states(ctx, run_ids)
    if any(s is not None and not s.is_terminal for s in states):
        return []  # a run is still going (e.g. released by another tick just now)
    counts = _counts(states)
    record = get_record(ctx, batch_id)
    has_callback = bool(record.get("callback_url"))
    fields: dict[str, Any] = {"state": "finished", "finished_at": ctx.clock(), "counts": counts}
    if has_callback:
        fields["callback_state"] = "pending"
    if not _batch_cas(ctx, batch_id, {"state": ["running"]}, fields):
        return []  # another tick finished it first
    ctx.redis.zrem(ctx.keys.active_batches, batch_id)
    ctx.redis.expire(ctx.keys.batch(batch_id), ctx.settings.run_retention)
    ctx.redis.expire(ctx.keys.batch_rows(batch_id), ctx.settings.run_retention)
    log.info("batch %s finished: %s", batch_id, json.dumps(counts, sort_keys=True))
    steps: list[Next] = []
    if has_callback:
        steps.append(Next(task_names.DELIVER_BATCH_CALLBACK, (batch_id, 0)))
    schedule = str(record.get("schedule") or "")
    # A firing of this schedule queued behind this batch (overlap "queue") goes now;
    # HDEL is atomic, so exactly one finisher sends it.
    if schedule and ctx.redis.hdel(ctx.keys.schedule_state(schedule), "queued"):
        steps.append(Next(task_names.FIRE_SCHEDULE, (schedule, "queued")))
    return steps


def _counts(states: Sequence[RunState | None]) -> dict[str, int]:
    counts = {"total": len(states), "queued": 0, "running": 0, "completed": 0, "failed": 0}
    for state in states:
        if state is None:
            counts["failed"] += 1  # an expired record is never silently "completed"
            counts["expired"] = counts.get("expired", 0) + 1
            continue
        counts[_COUNT_AS[state]] += 1
        if _COUNT_AS[state] == "failed" and state is not RunState.FAILED:
            # "failed" counts every bad end; the breakdown says which.
            name = state.value.lower()
            counts[name] = counts.get(name, 0) + 1
    return counts


def sweep_batches(ctx: Context, *, limit: int = 200) -> list[Next]:
    """Tick every active batch (beat, every ``HATZ_SWEEP_INTERVAL``): recovers lost ticks."""
    steps: list[Next] = []
    for batch_id in ctx.redis.zrange(ctx.keys.active_batches, 0, limit - 1):
        steps += tick(ctx, _text(batch_id))
    return steps


# --- status and results -----------------------------------------------------------------


@dataclass
class BatchStatus:
    """A batch's record with live counts (``queued``/``running``/``completed``/``failed``)."""

    record: dict[str, Any]
    counts: dict[str, int]
    in_flight: int

    @property
    def batch_id(self) -> str:
        """The batch id."""
        return str(self.record["batch_id"])

    @property
    def finished(self) -> bool:
        """True once every run of the batch is terminal and the batch was closed
        (``finished``, or ``abandoned`` when its creation was interrupted)."""
        return self.record.get("state") in ("finished", "abandoned")

    def done(self) -> int:
        """Rows that ended (completed or failed)."""
        return self.counts["completed"] + self.counts["failed"]

    def eta(self, now: float | None = None) -> float | None:
        """Seconds until the batch is expected to finish, from its pace so far; None if unknown."""
        done = self.done()
        total = self.counts["total"]
        if self.finished or done == 0:
            return 0.0 if self.finished else None
        elapsed = (time.time() if now is None else now) - float(self.record["created_at"])
        return elapsed / done * (total - done)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the record plus ``counts``, ``in_flight`` and ``eta``."""
        return {
            **self.record,
            "counts": self.counts,
            "in_flight": self.in_flight,
            "eta": self.eta(),
        }


def batch_status(ctx: Context, batch_id: str) -> BatchStatus:
    """The batch and live counts from its runs' records."""
    record = get_record(ctx, batch_id)
    counts = _counts(_states(ctx, row_run_ids(ctx, batch_id)))
    counts["skipped"] = int(record.get("skipped") or 0)
    counts["reused"] = int(record.get("reused") or 0)
    in_flight = int(ctx.redis.scard(ctx.keys.batch_inflight(batch_id)))
    return BatchStatus(record, counts, in_flight)


def _outputs(run: Run) -> list[dict[str, Any]]:
    return [
        {
            "step_id": s.get("step_id"),
            "output_type": s.get("output_type"),
            "output": s.get("output_data"),
        }
        for s in run.get("step_outputs") or []
        if s.get("output_type") not in ("dump",)
    ]


def result_rows(ctx: Context, batch_id: str) -> list[dict[str, Any]]:
    """One dict per batch row, in row order: row, run_id, status, error, outputs, documents."""
    out: list[dict[str, Any]] = []
    for run_id in row_run_ids(ctx, batch_id):
        run = ctx.ledger.get(run_id)
        if run is None:
            out.append({"row": None, "run_id": run_id, "status": "expired"})
            continue
        documents = run.get("documents") or {}
        out.append(
            {
                "row": int(run.get("row") or 0),
                "run_id": run_id,
                "status": run.state.value,
                "error": run.get("error") or "",
                "job_id": run.get("job_id") or "",
                "inputs": run.get("inputs") or {},
                "outputs": _outputs(run),
                "documents": {k: v.get("url") for k, v in sorted(documents.items())},
            }
        )
    return out


def write_results(
    ctx: Context, batch_id: str, out: str | os.PathLike[str], *, download: str | None = None
) -> int:
    """Write one line per row to ``out`` (``.csv`` or ``.jsonl``); return the rows written.

    With ``download``, every document is fetched into that folder as
    ``row<N>-<step_id><ext>`` and the local path is added (``files``).
    """
    rows = result_rows(ctx, batch_id)
    if download:
        folder = Path(download)
        folder.mkdir(parents=True, exist_ok=True)
        for row in rows:
            files: dict[str, str] = {}
            for step_id, url in (row.get("documents") or {}).items():
                ext = Path(str(url).split("?", 1)[0]).suffix[:10]
                target = folder / f"row{row['row']:05d}-{step_id}{ext}"
                response = requests.get(url, timeout=(5, 60))
                response.raise_for_status()
                target.write_bytes(response.content)
                files[step_id] = str(target)
            row["files"] = files
    target_path = Path(out)
    if target_path.suffix.lower() == ".csv":
        columns = ["row", "run_id", "status", "error", "job_id", "inputs", "outputs", "documents"]
        if download:
            columns.append("files")
        with target_path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {
                        k: (json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v)
                        for k, v in row.items()
                    }
                )
    elif target_path.suffix.lower() in (".jsonl", ".ndjson"):
        with target_path.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, sort_keys=True, default=str) + "\n")
    else:
        raise InvalidBatchError([f"{target_path}: results go to a .csv or .jsonl file"])
    return len(rows)


# --- the batch callback -------------------------------------------------------------------


def build_batch_event(ctx: Context, batch_id: str) -> dict[str, Any]:
    """The ``batch.completed`` body: counts and failed rows' errors; no document links."""
    record = get_record(ctx, batch_id)
    failures: list[dict[str, Any]] = []
    for row in result_rows(ctx, batch_id):
        if row["status"] != RunState.COMPLETED.value and len(failures) < _MAX_SUMMARY_FAILURES:
            failures.append(
                {
                    "row": row["row"],
                    "run_id": row["run_id"],
                    "status": row["status"].lower(),
                    "error": row.get("error") or None,
                }
            )
    finished = float(record.get("finished_at") or ctx.clock())
    return {
        "type": _BATCH_EVENT,
        "timestamp": datetime.fromtimestamp(finished, UTC).isoformat(),
        "data": {
            "batch_id": batch_id,
            "app_id": record.get("app_id"),
            "schedule": record.get("schedule") or None,
            "batch_key": record.get("batch_key") or None,
            "counts": {**(record.get("counts") or {}), "skipped": int(record.get("skipped") or 0)},
            "bad_rows": [b["row"] for b in record.get("bad_rows") or []],
            "created_at": record.get("created_at"),
            "finished_at": record.get("finished_at"),
            "failures": failures,
        },
    }


def deliver_batch_callback(ctx: Context, batch_id: str, token: int) -> list[Next]:
    """One delivery attempt of the batch's callback; a retry is scheduled on failure.

    Claimed by a CAS on the batch's ``callback_token``, so a duplicated task
    never delivers twice.
    """
    s = ctx.settings
    claimed = _batch_cas(
        ctx,
        batch_id,
        {"callback_token": [str(token)], "callback_state": ["pending", "retrying"]},
        {"callback_token": token + 1, "callback_state": "sending"},
    )
    if not claimed:
        return []
    token += 1
    record = get_record(ctx, batch_id)
    body = json.dumps(build_batch_event(ctx, batch_id), separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "hatz-worker-callbacks/0.1",
        **signing.headers(s.webhook_secrets(), f"msg_batch_{batch_id}_completed", body),
    }
    attempts = list(record.get("callback_attempts") or [])
    status: int | None = None
    error = ""
    try:
        response = requests.post(
            str(record["callback_url"]),
            data=body,
            headers=headers,
            timeout=(s.callback_connect_timeout, s.callback_timeout),
            allow_redirects=False,
        )
        status = response.status_code
    except requests.RequestException as exc:
        error = type(exc).__name__
    attempts.append({"at": ctx.clock(), **({"status": status} if status else {"error": error})})
    if status is not None and 200 <= status < 300:
        _batch_cas(
            ctx,
            batch_id,
            {"callback_token": [str(token)]},
            {"callback_state": "delivered", "callback_attempts": attempts[-20:]},
        )
        log.info("batch %s: callback delivered (%s)", batch_id, status)
        return []
    retryable = status is None or status >= 500 or status in RETRYABLE_STATUS
    delays = s.callback_retry_delays
    if retryable and len(attempts) < len(delays) and delays[len(attempts)] <= s.max_countdown():
        delay = delays[len(attempts)]
        _batch_cas(
            ctx,
            batch_id,
            {"callback_token": [str(token)]},
            {"callback_state": "retrying", "callback_attempts": attempts[-20:]},
        )
        log.warning(
            "batch %s: callback failed (%s); retry in %.1f s", batch_id, status or error, delay
        )
        return [Next(task_names.DELIVER_BATCH_CALLBACK, (batch_id, token), delay)]
    _batch_cas(
        ctx,
        batch_id,
        {"callback_token": [str(token)]},
        {"callback_state": "failed", "callback_attempts": attempts[-20:]},
    )
    log.error("batch %s: callback failed for good (%s)", batch_id, status or error)
    return []


def list_batches(ctx: Context, *, limit: int = 20) -> list[dict[str, Any]]:
    """Recent batch records, newest first (expired ones skipped)."""
    out: list[dict[str, Any]] = []
    for raw in ctx.redis.zrevrange(ctx.keys.batches, 0, limit - 1):
        batch_id = _text(raw)
        try:
            out.append(get_record(ctx, batch_id))
        except BatchNotFoundError:
            ctx.redis.zrem(ctx.keys.batches, batch_id)
    return out
