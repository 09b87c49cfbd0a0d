"""Schedules: batches that celery beat starts on a cron or an interval.

Declared as ``[[schedule]]`` tables in the TOML file ``HATZ_SCHEDULES_FILE``
and/or as a JSON list in ``HATZ_SCHEDULES`` (names must be unique)::

    [[schedule]]
    name = "nightly-reports"
    cron = "0 2 * * *"                      # or: every = 3600 (seconds)
    app_id = "5ae6e9dd-..."
    source = "/data/reports/{date:%Y-%m-%d}/"   # folder/CSV/JSONL; or leave out for one run
    file_input = "report_file"
    inputs = { summary_style = "executive" }
    callback_url = "https://example.com/hooks/batches"
    max_in_flight = 5
    overlap = "skip"                         # or "queue"
    enabled = true

``source`` is formatted with ``date`` (now, UTC) and ``yesterday``.

Beat sends ``hatz.fire_schedule(name)``; :func:`fire` does the work. Two
guards keep a schedule single: a Redis ``SET NX`` **fire key** per schedule and
slot (the cron minute; for an interval, one key living 0.8 of the interval), so
a restarted or duplicated beat never fires the same slot twice; and the
**overlap** policy: while the schedule's previous batch still runs, a firing
is skipped (``skip``) or remembered and started when that batch finishes
(``queue``, at most one waiting).

A firing that fails (a Hatz 5xx or timeout, a Redis blip, a source that cannot
be read yet) records the error on the schedule (``last_error``, shown by
``hatz-worker schedules list``) and is retried with backoff
(:data:`FIRE_RETRY_DELAYS`) while its slot lasts. The fire key holds the
firing's id while it works and ``done:<batch>`` after, so a retry of a slot
that since succeeded does nothing.
"""

from __future__ import annotations

import json
import logging
import tomllib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from celery.schedules import crontab

from config import ConfigError, Settings
from worker import task_names
from worker.batches.create import create_batch
from worker.batches.request import BatchRequest
from worker.context import Context
from worker.errors import InvalidBatchError, ScheduleError
from worker.store.outbox import Next

log = logging.getLogger(__name__)

Outcome = Literal["fired", "duplicate", "skipped_overlap", "queued", "error"]
#: Waits before each retry of a failed firing, s; the last repeats until the slot ends.
FIRE_RETRY_DELAYS = (10.0, 30.0, 60.0, 120.0, 300.0)
#: A retry is only sent when it would run at least this long before its slot ends, s.
FIRE_RETRY_MARGIN = 5.0
#: A firing still marked under way after this long was lost with its worker, s.
LOST_FIRING_AFTER = 600.0
#: How long a firing queued behind the previous batch holds its own slot, ms.
SLOT_FOR_QUEUED_MS = 3_600_000
_KNOWN = {
    "name",
    "cron",
    "every",
    "app_id",
    "source",
    "file_input",
    "inputs",
    "callback_url",
    "max_in_flight",
    "enabled",
    "overlap",
    "on_bad_rows",
}


@dataclass(frozen=True)
class Schedule:
    """One declared schedule."""

    name: str
    app_id: str
    cron: str = ""
    every: float = 0.0
    source: str = ""
    file_input: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    callback_url: str = ""
    max_in_flight: int | None = None
    enabled: bool = True
    overlap: Literal["skip", "queue"] = "skip"
    on_bad_rows: Literal["skip", "abort"] = "skip"

    def beat_schedule(self) -> Any:
        """The celery beat schedule object: a ``crontab`` or an interval in seconds."""
        if self.cron:
            minute, hour, dom, month, dow = self.cron.split()
            return crontab(
                minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow
            )
        return timedelta(seconds=self.every)

    def when(self) -> str:
        """Human description: ``cron 0 2 * * *`` or ``every 3600 s``."""
        return f"cron {self.cron}" if self.cron else f"every {self.every:g} s"

    def render_source(self, now: datetime) -> str:
        """``source`` with ``{date:%Y-%m-%d}``/``{yesterday:...}`` filled in (or '')."""
        if not self.source:
            return ""
        return self.source.format(date=now, yesterday=now - timedelta(days=1))

    def batch_request(self, now: datetime) -> BatchRequest:
        """The batch a firing at ``now`` starts."""
        return BatchRequest(
            self.app_id,
            self.render_source(now) or None,
            inputs=self.inputs,
            file_input=self.file_input or None,
            callback_url=self.callback_url or None,
            max_in_flight=self.max_in_flight,
            on_bad_rows=self.on_bad_rows,
        )

    def slot(self, now: datetime) -> tuple[str, int]:
        """The fire key's slot name and lifetime (ms) for a firing at ``now``."""
        if self.cron:
            return now.strftime("%Y%m%d%H%M"), 3_600_000
        # One firing per 0.8 interval: a beat restarted (or doubled) after a firing
        # cannot fire again, while the next regular firing (one interval later) passes.
        return "interval", max(1, int(self.every * 800))


def _parse_one(item: Any, index: int) -> tuple[Schedule | None, list[str]]:
    """One declaration as a :class:`Schedule`, or None and every problem found."""
    where = f"schedule #{index + 1}"
    if not isinstance(item, dict):
        return None, [f"{where}: must be a table/object"]
    name = item.get("name")
    if isinstance(name, str) and name:
        where = f"schedule {name!r}"
    problems = [
        *_identity_problems(item, where),
        *_timing_problems(item, where),
        *_option_problems(item, where),
    ]
    if problems:
        return None, problems
    return _schedule_from(item), []


def _identity_problems(item: dict[str, Any], where: str) -> list[str]:
    """Unknown fields, the name and the app."""
    problems: list[str] = []
    unknown = sorted(set(item) - _KNOWN)
    if unknown:
        problems.append(f"{where}: unknown field(s) {', '.join(unknown)}")
    name = item.get("name")
    if (
        not isinstance(name, str)
        or not name
        or not name.replace("-", "").replace("_", "").isalnum()
    ):
        problems.append(f"{where}: name must be letters, digits, '-' or '_'")
    if not isinstance(item.get("app_id"), str) or not item.get("app_id"):
        problems.append(f"{where}: app_id is required")
    return problems


def _timing_problems(item: dict[str, Any], where: str) -> list[str]:
    """Exactly one of a valid five-field ``cron`` or a positive ``every``."""
    cron, every = item.get("cron", ""), item.get("every", 0)
    if bool(cron) == bool(every):
        return [f"{where}: give exactly one of cron or every"]
    if cron:
        try:
            parts = str(cron).split()
            if len(parts) != 5:
                raise ValueError("needs 5 fields: minute hour day-of-month month day-of-week")
            crontab(*parts[:2], day_of_week=parts[4], day_of_month=parts[2], month_of_year=parts[3])
        except (ValueError, TypeError) as exc:
            return [f"{where}: bad cron {cron!r}: {exc}"]
        return []
    if not isinstance(every, int | float) or isinstance(every, bool) or every <= 0:
        return [f"{where}: every must be a number of seconds > 0"]
    return []


def _option_problems(item: dict[str, Any], where: str) -> list[str]:
    """The overlap and bad-row policies, the fixed inputs, the limit and the source pattern."""
    problems: list[str] = []
    if item.get("overlap", "skip") not in ("skip", "queue"):
        problems.append(f"{where}: overlap must be 'skip' or 'queue'")
    if item.get("on_bad_rows", "skip") not in ("skip", "abort"):
        problems.append(f"{where}: on_bad_rows must be 'skip' or 'abort'")
    if not isinstance(item.get("inputs", {}), dict):
        problems.append(f"{where}: inputs must be a table/object")
    mif = item.get("max_in_flight")
    if mif is not None and (not isinstance(mif, int) or isinstance(mif, bool) or mif < 1):
        problems.append(f"{where}: max_in_flight must be an integer >= 1")
    source = item.get("source", "")
    if source:
        try:
            str(source).format(date=datetime.now(UTC), yesterday=datetime.now(UTC))
        except (KeyError, ValueError, IndexError) as exc:
            problems.append(f"{where}: bad source pattern {source!r}: {exc}")
    return problems


def _schedule_from(item: dict[str, Any]) -> Schedule:
    """The :class:`Schedule` of a declaration already checked."""
    return Schedule(
        name=str(item["name"]),
        app_id=str(item["app_id"]),
        cron=str(item.get("cron", "") or ""),
        every=float(item.get("every", 0) or 0),
        source=str(item.get("source", "") or ""),
        file_input=str(item.get("file_input") or ""),
        inputs=dict(item.get("inputs") or {}),
        callback_url=str(item.get("callback_url") or ""),
        max_in_flight=item.get("max_in_flight"),
        enabled=bool(item.get("enabled", True)),
        overlap=item.get("overlap", "skip"),
        on_bad_rows=item.get("on_bad_rows", "skip"),
    )


def parse_schedules(items: list[Any]) -> list[Schedule]:
    """Schedules from declarations; raise :class:`ScheduleError` listing every problem."""
    schedules: list[Schedule] = []
    problems: list[str] = []
    for index, item in enumerate(items):
        schedule, found = _parse_one(item, index)
        problems += found
        if schedule is not None:
            schedules.append(schedule)
    names = [s.name for s in schedules]
    problems += [f"schedule {n!r} declared twice" for n in sorted(set(names)) if names.count(n) > 1]
    if problems:
        raise ScheduleError("; ".join(problems))
    return schedules


def load_schedules(settings: Settings) -> list[Schedule]:
    """Every schedule from ``HATZ_SCHEDULES_FILE`` and ``HATZ_SCHEDULES``."""
    items: list[Any] = []
    if settings.schedules_file:
        path = Path(settings.schedules_file).expanduser()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ScheduleError(f"HATZ_SCHEDULES_FILE {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ScheduleError(f"HATZ_SCHEDULES_FILE {path}: not TOML: {exc}") from None
        declared = data.get("schedule", [])
        if not isinstance(declared, list):
            raise ScheduleError(f"HATZ_SCHEDULES_FILE {path}: use [[schedule]] tables")
        items += declared
    if settings.schedules.strip():
        try:
            declared = json.loads(settings.schedules)
        except ValueError as exc:
            raise ScheduleError(f"HATZ_SCHEDULES: not JSON: {exc}") from None
        if not isinstance(declared, list):
            raise ScheduleError("HATZ_SCHEDULES: must be a JSON list of objects")
        items += declared
    return parse_schedules(items)


def find_schedule(settings: Settings, name: str) -> Schedule:
    """The schedule called ``name``; :class:`ScheduleError` when unknown."""
    for schedule in load_schedules(settings):
        if schedule.name == name:
            return schedule
    raise ScheduleError(f"no schedule named {name!r}")


def beat_entries(settings: Settings) -> dict[str, dict[str, Any]]:
    """``beat_schedule`` entries for every enabled schedule (raises :class:`ConfigError`)."""
    try:
        schedules = load_schedules(settings)
    except ScheduleError as exc:
        raise ConfigError(str(exc)) from None
    return {
        f"hatz-schedule:{s.name}": {
            "task": task_names.FIRE_SCHEDULE,
            "schedule": s.beat_schedule(),
            "args": (s.name,),
        }
        for s in schedules
        if s.enabled
    }


@dataclass
class FireResult:
    """What one firing did: ``outcome``, the batch it started, tasks to publish."""

    outcome: Outcome
    batch_id: str = ""
    error: str = ""
    steps: list[Next] = field(default_factory=list)


@dataclass(frozen=True)
class _Claim:
    """A firing's hold on its slot: the fire key's value is ``firing`` while it works."""

    slot: str
    firing: str
    attempt: int


def _record(ctx: Context, name: str, result: FireResult) -> FireResult:
    key = ctx.keys.schedule_state(name)
    pipe = ctx.redis.pipeline(transaction=True)
    pipe.hincrby(key, f"count_{result.outcome}", 1)
    pipe.hset(key, mapping={"last_outcome": result.outcome, "last_at": repr(ctx.clock())})
    if result.outcome == "fired":
        pipe.hset(key, mapping={"last_batch": result.batch_id, "last_fired_at": repr(ctx.clock())})
    if result.error:
        pipe.hset(key, mapping={"last_error": result.error[:500], "last_error_at": ctx.clock()})
    pipe.execute()
    log.log(
        logging.WARNING if result.outcome == "error" else logging.INFO,
        "schedule %s: %s%s%s",
        name,
        result.outcome,
        f" batch {result.batch_id}" if result.batch_id else "",
        f": {result.error}" if result.error else "",
    )
    return result


def _previous_running(ctx: Context, name: str) -> str:
    last = ctx.redis.hget(ctx.keys.schedule_state(name), "last_batch")
    if not last:
        return ""
    state = ctx.redis.hget(ctx.keys.batch(str(last)), "state")
    return str(last) if state in ("creating", "running") else ""


def fire(
    ctx: Context,
    name: str,
    *,
    reason: str = "beat",
    now: datetime | None = None,
    slot: str = "",
    firing: str = "",
    attempt: int = 0,
) -> FireResult:
    """Fire schedule ``name`` once: guard the slot, apply the overlap policy, start its batch.

    ``reason``: ``beat`` (guarded by the fire key), ``queued`` (a firing that
    waited for the previous batch), ``retry`` (a firing that failed, tried again
    within its slot: ``slot``, ``firing`` and ``attempt`` say which) or
    ``manual`` (``schedules run-now``: no fire key, the overlap policy still applies).

    Any error while starting the batch (a Hatz 5xx or timeout, a Redis blip, a
    source that cannot be read) is recorded on the schedule and, for a beat,
    queued or retried firing, tried again with backoff until its slot ends.
    """
    schedule = find_schedule(ctx.settings, name)
    moment = now or datetime.fromtimestamp(ctx.clock(), UTC)
    claim = _claim(ctx, name, schedule, reason, moment, slot, firing, attempt)
    if claim is None and reason in ("beat", "retry"):
        return _record(ctx, name, FireResult("duplicate"))
    if claim is not None:
        _mark_firing(ctx, name, claim)
    try:
        result = _start(ctx, name, schedule, reason, moment)
    except Exception as exc:  # any error: a firing is never lost silently (see docstring)
        return _failed(ctx, name, claim, exc)
    finally:
        if claim is not None:
            ctx.redis.hdel(ctx.keys.schedule_state(name), "firing")
    if claim is not None:
        _settle(ctx, name, claim, result.batch_id or result.outcome)
    return _record(ctx, name, result)


def _claim(
    ctx: Context,
    name: str,
    schedule: Schedule,
    reason: str,
    moment: datetime,
    slot: str,
    firing: str,
    attempt: int,
) -> _Claim | None:
    """Take the firing's slot (a beat or a queued firing) or check it is still ours (a retry).

    None: a beat's slot is taken (a duplicate), a retry's slot is over or done,
    or a manual firing (which holds no slot).
    """
    if reason == "retry":
        held = ctx.redis.get(ctx.keys.schedule_fire(name, slot))
        return _Claim(slot, firing, attempt) if held is not None and str(held) == firing else None
    if reason == "beat":
        slot, ttl_ms = schedule.slot(moment)
    elif reason == "queued":
        slot, ttl_ms = f"queued-{int(ctx.clock())}", SLOT_FOR_QUEUED_MS
    else:
        return None
    firing = uuid.uuid4().hex
    if not ctx.redis.set(ctx.keys.schedule_fire(name, slot), firing, nx=True, px=ttl_ms):
        return None
    _report_lost(ctx, name)
    return _Claim(slot, firing, 0)


def _mark_firing(ctx: Context, name: str, claim: _Claim) -> None:
    """Say on the schedule that a firing is under way (cleared when it ends, either way)."""
    mark = json.dumps({"slot": claim.slot, "at": ctx.clock()})
    ctx.redis.hset(ctx.keys.schedule_state(name), "firing", mark)


def _report_lost(ctx: Context, name: str) -> None:
    """Record a firing that never ended (its worker died mid-way) as an error, once."""
    raw = ctx.redis.hget(ctx.keys.schedule_state(name), "firing")
    if not raw:
        return
    try:
        mark = json.loads(raw)
        slot, since = str(mark["slot"]), float(mark["at"])
    except (ValueError, KeyError, TypeError):
        slot, since = "?", 0.0
    if ctx.clock() - since < LOST_FIRING_AFTER:
        return  # another firing is still at work
    if ctx.redis.hdel(ctx.keys.schedule_state(name), "firing"):
        error = f"the firing of slot {slot} never ended (its worker was lost); no batch started"
        _record(ctx, name, FireResult("error", error=error))


def _start(
    ctx: Context, name: str, schedule: Schedule, reason: str, moment: datetime
) -> FireResult:
    """The overlap policy, then the batch."""
    running = _previous_running(ctx, name)
    if running:
        if schedule.overlap == "skip":
            return FireResult("skipped_overlap", error=f"{running} still running")
        ctx.redis.hset(ctx.keys.schedule_state(name), "queued", reason)
        # The batch may have finished between the check and the flag: then take the
        # flag back ourselves (HDEL is atomic, so only one side fires).
        if _previous_running(ctx, name) or not ctx.redis.hdel(
            ctx.keys.schedule_state(name), "queued"
        ):
            return FireResult("queued")
    batch_id, steps = create_batch(ctx, schedule.batch_request(moment), schedule=name)
    return FireResult("fired", batch_id=batch_id, steps=steps)


def _settle(ctx: Context, name: str, claim: _Claim, done: str) -> None:
    """Mark the slot done (its key keeps its life): a late retry of it then does nothing."""
    key = ctx.keys.schedule_fire(name, claim.slot)
    if ctx.redis.get(key) == claim.firing:
        ctx.redis.set(key, f"done:{done}", xx=True, keepttl=True)


def _failed(ctx: Context, name: str, claim: _Claim | None, exc: Exception) -> FireResult:
    """Record the error on the schedule; retry within the slot while it lasts."""
    if isinstance(exc, InvalidBatchError):
        error = str(exc)
    else:
        error = f"{type(exc).__name__}: {exc}"
        log.warning("schedule %s: firing failed", name, exc_info=True)
    if claim is None:
        return _record(ctx, name, FireResult("error", error=error))
    delay = FIRE_RETRY_DELAYS[min(claim.attempt, len(FIRE_RETRY_DELAYS) - 1)]
    left_ms = int(ctx.redis.pttl(ctx.keys.schedule_fire(name, claim.slot)))
    if left_ms < (delay + FIRE_RETRY_MARGIN) * 1000:
        return _record(ctx, name, FireResult("error", error=f"{error} (gave up: the slot is over)"))
    attempt = claim.attempt + 1
    retry = Next(
        task_names.FIRE_SCHEDULE, (name, "retry", claim.slot, claim.firing, attempt), delay
    )
    ctx.redis.hset(ctx.keys.schedule_state(name), "retry_at", repr(ctx.clock() + delay))
    text = f"{error} (retry {attempt} in {delay:g} s)"
    return _record(ctx, name, FireResult("error", error=text, steps=[retry]))


def schedule_state(ctx: Context, name: str) -> dict[str, str]:
    """A schedule's recorded state: counters per outcome, last batch, last error."""
    raw = ctx.redis.hgetall(ctx.keys.schedule_state(name))
    return {str(k): str(v) for k, v in raw.items()}
