"""Prometheus metrics, kept in Redis so every worker process and host adds to one set.

Why Redis and not prometheus-client's multiprocess mode: a prefork worker runs
tasks in child processes that come and go, and a deployment runs several
worker hosts. Multiprocess mode would need a shared ``PROMETHEUS_MULTIPROC_DIR``
per host, cleanup of dead children's files, and one scrape target per host
whose series must then be summed. Instead every process adds its counts to one
Redis hash (``Keys.metrics``; one ``HINCRBY`` per event, best effort) and a
custom collector reads that hash and the ledger **at scrape time**
(prometheus-client's "custom collector" pattern). One exporter
(``hatz-worker metrics-server``) then serves cluster-wide numbers; scrape
exactly one of them. Counters live as long as the Redis data (AOF), so they
survive worker restarts; Prometheus' ``rate()`` handles the rare reset.

What is counted where:

* run state transitions: in the ledger's compare-and-set script (exactly once
  per transition, atomically with it) -> ``hatz_runs_total{state}``
* Hatz API calls: an observer on :class:`~worker.hatz.client.HatzClient`, once
  per HTTP attempt -> ``hatz_api_requests_total{endpoint,outcome}``
* poll lateness: :func:`worker.runs.poll.poll_step` -> ``hatz_poll_lateness_seconds``
* callback attempts: :func:`worker.webhooks.delivery.deliver_step`
* runs in flight, overdue runs, dead letters, breaker, heartbeats: read from the
  ledger when scraped (cheap: only non-terminal runs are in ``P:schedule``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from worker.ops import queues
from worker.store.keys import Keys
from worker.store.ledger import ACTIVE_STATES, RunState

log = logging.getLogger(__name__)

#: Upper bounds of the poll-lateness histogram, seconds.
LATENESS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_SEP = "|"
_SCAN_BATCH = 500
#: In-flight runs read per scrape at most; beyond it the gauges are a lower bound.
MAX_SCANNED_RUNS = 200_000

ApiObserver = Callable[[str, str, "int | None", "str | None", float], None]


#: A scrape is served from the last reading of Redis for this long, s.
SCRAPE_CACHE_SECONDS = 5.0


def endpoint_name(method: str, path: str) -> str:
    """A bounded label for an API path (ids never become label values)."""
    if path == "/workflows/run":
        return "run"
    if path == "/workflows/presigned-url":
        return "presign"
    if path.startswith("/workflows/"):
        return "status"
    if path == "/files/upload":
        return "upload"
    if path == "/app/list":
        return "app_list"
    if path.startswith("/app/"):
        return "app_query" if path.endswith("/query") else "app_get"
    return "other"


def _bucket(seconds: float) -> str:
    for bound in LATENESS_BUCKETS:
        if seconds <= bound:
            return repr(bound)
    return "+Inf"


class Metrics:
    """Adds events to the shared counters; never raises (metrics must not fail a task).

    Unbuffered (the default), every event is one pipelined ``HINCRBY`` round
    trip. ``buffered=True`` (what worker processes use) keeps events in process
    until the next ledger compare-and-set, which applies them in the same script
    call (:meth:`drain`, wired by :class:`~worker.context.Context`), so a poll
    pays no extra round trip for its counters; :meth:`flush` writes what is
    left at the end of every task (:func:`worker.runs.task_guard.run_step`).
    """

    def __init__(self, client: redis.Redis, keys: Keys, *, buffered: bool = False) -> None:
        self.redis = client
        self.keys = keys
        self.buffered = buffered
        self._pending: dict[str, float] = {}

    def _add(self, increments: dict[str, float]) -> None:
        if self.buffered:
            for name, amount in increments.items():
                self._pending[name] = self._pending.get(name, 0) + amount
            return
        self._write(increments)

    def _write(self, increments: Mapping[str, float]) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            for name, amount in increments.items():
                # Float counters (sums) stay floats even when an increment is 0:
                # HINCRBY on a field holding "0.25" is an error.
                if isinstance(amount, float):
                    pipe.hincrbyfloat(self.keys.metrics, name, amount)
                else:
                    pipe.hincrby(self.keys.metrics, name, int(amount))
            pipe.execute()
        except redis.RedisError as exc:
            log.debug("metrics not recorded: %s", exc)

    def drain(self) -> dict[str, float]:
        """Take the buffered increments (the caller writes them to ``Keys.metrics``)."""
        pending, self._pending = self._pending, {}
        return pending

    def flush(self) -> None:
        """Write the buffered increments now (one round trip; none when nothing is buffered)."""
        if self._pending:
            self._write(self.drain())

    def api_call(
        self, method: str, path: str, status: int | None, error: str | None, seconds: float
    ) -> None:
        """One HTTP attempt to the Hatz API; ``error`` is the HatzError class name, if any."""
        outcome = error or "ok"
        self._add({_SEP.join(("api", endpoint_name(method, path), outcome)): 1})

    def poll_lateness(self, seconds: float) -> None:
        """How late a poll ran after its countdown was due."""
        self._add(
            {
                _SEP.join(("lateness", "bucket", _bucket(seconds))): 1,
                _SEP.join(("lateness", "sum")): float(round(seconds, 6)),
                _SEP.join(("lateness", "count")): 1,
            }
        )

    def callback_attempt(self, status: int | None) -> None:
        """One callback delivery attempt: its HTTP status class, or ``error`` without answer."""
        outcome = f"{status // 100}xx" if status is not None else "error"
        self._add({_SEP.join(("callback", outcome)): 1})


def state_counter_field(state: RunState | str) -> str:
    """The hash field the ledger script increments when a run enters ``state``."""
    return _SEP.join(("state", str(state)))


class HatzCollector(Collector):
    """Reads the shared counters and the ledger at scrape time."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        sweep_grace: float = 60.0,
        clock: Callable[[], float] = time.time,
        cache_seconds: float = SCRAPE_CACHE_SECONDS,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.sweep_grace = sweep_grace
        self.clock = clock
        self.cache_seconds = cache_seconds
        self._cached: tuple[float, list[Metric]] | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        """Every metric family, read at most once per ``cache_seconds`` (a scrape costs
        up to a few hundred Redis commands; several scrapers, or a retrying one, must
        not multiply that)."""
        with self._lock:
            now = self.clock()
            if self._cached is None or not 0 <= now - self._cached[0] < self.cache_seconds:
                self._cached = (now, list(self._read()))
            families = self._cached[1]
        yield from families

    def _read(self) -> Iterator[Metric]:
        """Yield every metric family; ``hatz_redis_up 0`` instead of an error when Redis fails."""
        up = GaugeMetricFamily("hatz_redis_up", "1 if the exporter could read Redis")
        try:
            families = list(self._families())
        except redis.RedisError as exc:
            log.warning("metrics scrape: cannot read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterable[Metric]:
        raw = {_s(k): _s(v) for k, v in self.redis.hgetall(self.keys.metrics).items()}
        yield from self._counters(raw)
        yield self._lateness(raw)
        yield from self._ledger_gauges()

    def _counters(self, raw: dict[str, str]) -> Iterable[Metric]:
        runs = CounterMetricFamily(
            "hatz_runs", "Runs that entered each state (QUEUED = created)", labels=["state"]
        )
        for state in RunState:
            runs.add_metric([state.value], float(raw.get(state_counter_field(state), 0)))
        yield runs
        api = CounterMetricFamily(
            "hatz_api_requests",
            "HTTP attempts to the Hatz API by endpoint and outcome (ok or error class)",
            labels=["endpoint", "outcome"],
        )
        submits = CounterMetricFamily(
            "hatz_submits", "POST /workflows/run attempts by outcome", labels=["outcome"]
        )
        polls = CounterMetricFamily(
            "hatz_polls", "GET /workflows/{job_id} attempts by outcome", labels=["outcome"]
        )
        callbacks = CounterMetricFamily(
            "hatz_callback_attempts",
            "Callback delivery attempts by HTTP status class (error = no answer)",
            labels=["outcome"],
        )
        for name, value in sorted(raw.items()):
            parts = name.split(_SEP)
            if parts[0] == "api" and len(parts) == 3:
                api.add_metric([parts[1], parts[2]], float(value))
                if parts[1] == "run":
                    submits.add_metric([parts[2]], float(value))
                elif parts[1] == "status":
                    polls.add_metric([parts[2]], float(value))
            elif parts[0] == "callback" and len(parts) == 2:
                callbacks.add_metric([parts[1]], float(value))
        yield from (api, submits, polls, callbacks)

    def _lateness(self, raw: dict[str, str]) -> Metric:
        buckets: list[tuple[str, float]] = []
        cumulative = 0.0
        for bound in [*(repr(b) for b in LATENESS_BUCKETS), "+Inf"]:
            cumulative += float(raw.get(_SEP.join(("lateness", "bucket", bound)), 0))
            buckets.append((bound, cumulative))
        family = HistogramMetricFamily(
            "hatz_poll_lateness_seconds", "How late each poll ran after it was due"
        )
        family.add_metric([], buckets, sum_value=float(raw.get("lateness|sum", 0)))
        return family

    def _ledger_gauges(self) -> Iterable[Metric]:
        now = self.clock()
        in_flight = dict.fromkeys(sorted(ACTIVE_STATES), 0)
        pending_callbacks = 0
        for states in self._scheduled_states():
            for state in states:
                if state in in_flight:
                    in_flight[state] += 1
                elif state:
                    pending_callbacks += 1
        gauge = GaugeMetricFamily(
            "hatz_runs_in_flight", "Non-terminal runs by state", labels=["state"]
        )
        for state, count in in_flight.items():
            gauge.add_metric([state.value], count)
        yield gauge
        pending = GaugeMetricFamily(
            "hatz_callbacks_pending", "Finished runs whose callback is not delivered yet"
        )
        pending.add_metric([], pending_callbacks)
        yield pending
        overdue = GaugeMetricFamily(
            "hatz_runs_overdue",
            "Runs whose next task is overdue by more than HATZ_SWEEP_GRACE (workers behind?)",
        )
        overdue.add_metric(
            [], self.redis.zcount(self.keys.schedule, "-inf", now - self.sweep_grace)
        )
        yield overdue
        parked = GaugeMetricFamily(
            "hatz_polls_parked",
            "Runs whose next poll waits in Redis, beyond HATZ_COUNTDOWN_HORIZON (P:parked)",
        )
        parked.add_metric([], self.redis.zcard(self.keys.parked))
        yield parked
        dead = GaugeMetricFamily(
            "hatz_callbacks_dead_lettered",
            "Callbacks given up on, runs' and batches' (P:callbacks:failed, "
            "P:batch-callbacks:failed)",
        )
        dead.add_metric(
            [],
            self.redis.zcard(self.keys.failed_callbacks)
            + self.redis.zcard(self.keys.failed_batch_callbacks),
        )
        yield dead
        yield self._breaker(now)
        yield self._heartbeats()
        yield self._unconsumed()

    def _scheduled_states(self) -> Iterator[list[RunState | None]]:
        """States of the runs on the schedule, in batches (one pipelined HGET per run)."""
        start = 0
        while start < MAX_SCANNED_RUNS:
            ids = self.redis.zrange(self.keys.schedule, start, start + _SCAN_BATCH - 1)
            if not ids:
                return
            pipe = self.redis.pipeline(transaction=False)
            for run_id in ids:
                pipe.hget(self.keys.run(_s(run_id)), "state")
            states = [RunState(_s(s)) if s else None for s in pipe.execute()]
            yield states
            start += _SCAN_BATCH

    def _breaker(self, now: float) -> Metric:
        # The org-wide credit-overage breaker (worker.limits.breaker, Keys.breaker);
        # an absent key means closed.
        family = GaugeMetricFamily(
            "hatz_breaker_open", "1 while the org-wide credit-overage breaker is open"
        )
        data = {_s(k): _s(v) for k, v in self.redis.hgetall(self.keys.breaker).items()}
        family.add_metric([], 1 if data.get("state") == "open" else 0)
        return family

    def _heartbeats(self) -> Metric:
        family = GaugeMetricFamily(
            "hatz_heartbeat_age_seconds",
            "Seconds since each worker/beat process last wrote its heartbeat",
            labels=["process"],
        )
        now = _server_time(self.redis)
        prefix = self.keys.heartbeat("")
        for key in self.redis.scan_iter(match=self.keys.heartbeat_pattern(), count=100):
            raw = self.redis.get(key)
            if not raw:
                continue
            try:
                at = float(json.loads(_s(raw))["at"])
            except (ValueError, KeyError, TypeError):
                continue
            family.add_metric([_s(key).removeprefix(prefix)], max(0.0, now - at))
        return family

    def _unconsumed(self) -> Metric:
        family = GaugeMetricFamily(
            "hatz_queue_unconsumed_messages",
            "Messages waiting in a queue that no live worker consumes (they wait forever)",
            labels=["queue"],
        )
        for waiting in queues.unconsumed(self.redis, self.keys):
            family.add_metric([waiting.name], waiting.messages)
        return family


def _server_time(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def start_metrics_server(
    client: redis.Redis,
    keys: Keys,
    *,
    host: str = "127.0.0.1",
    port: int = 9808,
    sweep_grace: float = 60.0,
) -> tuple[Any, Any]:
    """Serve ``/metrics`` from a background thread; return ``(server, thread)``.

    Loopback only unless ``host`` says otherwise: the endpoint has no
    authentication. A private registry holds only :class:`HatzCollector` (plus
    nothing of this exporter process itself), which reads Redis at most once
    every :data:`SCRAPE_CACHE_SECONDS`. Raises ``OSError`` when the port is taken.
    """
    from prometheus_client import CollectorRegistry, start_wsgi_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(HatzCollector(client, keys, sweep_grace=sweep_grace))
    return start_wsgi_server(port, addr=host, registry=registry)
