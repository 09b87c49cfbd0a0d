"""The measurements. Each returns plain JSON-ready dicts; :mod:`bench.report` tabulates them.

Every scenario starts its own worker(s) on a freshly flushed Redis and a reset
fake, so nothing one measures leaks into the next.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from celery import Celery

from bench import apps as bench_apps
from bench.stack import (
    API_KEY,
    FakeServer,
    Worker,
    cpu_seconds,
    load_average,
    pss_bytes,
    rss_bytes,
)
from config import Settings
from worker import task_names
from worker.api.runs import enqueue_run
from worker.context import Context
from worker.local.stack import CallbackReceiver, LocalRedis
from worker.runs.poll_hints import poll_hint
from worker.store.ledger import PRE_SUBMIT_STATES, RunState
from worker.taskqueue.app import create_app

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PIPELINE_QUEUES = list(task_names.ALL_QUEUES)
_SEED_THREADS = 4
LONG_JOB = 36_000.0  # seconds: "many minutes", so in-flight runs never finish in the window


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Bench:
    """The private Redis and fake Hatz server, and the harness's own clients."""

    redis: LocalRedis
    fake: FakeServer
    settings: Settings
    ctx: Context
    celery: Celery
    bench_celery: Celery

    @classmethod
    @contextmanager
    def running(cls) -> Iterator[Bench]:
        """Start redis-server and the fake; stop them afterwards."""
        with LocalRedis() as redis:
            fake = FakeServer().start()
            try:
                settings = Settings(_env_file=None, **cls.base_settings(redis.url, fake.url))
                ctx = Context.from_settings(settings)
                bench = cls(
                    redis,
                    fake,
                    settings,
                    ctx,
                    create_app(settings),
                    bench_apps.create_bench_app(settings),
                )
                try:
                    yield bench
                finally:
                    ctx.client.close()
            finally:
                fake.stop()

    @staticmethod
    def base_settings(redis_url: str, fake_url: str) -> dict[str, Any]:
        """Worker settings every scenario starts from."""
        return {
            "api_key": API_KEY,
            "base_url": fake_url,
            "redis_url": redis_url,
            "poll_initial_delay": 0.0,
            "poll_interval": 5.0,
            "poll_backoff": 1.0,
            "poll_max_interval": 300.0,
            "poll_jitter": 0.1,
            "app_cache_ttl": 60.0,
            "http_read_timeout": 10.0,
            "http_retries": 2,
            "webhook_secret": SECRET,
            "callback_allow_private": True,
            "log_level": "WARNING",
        }

    def reset(self) -> None:
        """Empty Redis and the fake's jobs and counters."""
        self.ctx.redis.flushall()
        self.fake.reset("all")

    def used_memory(self) -> int:
        """Redis ``used_memory``."""
        return int(self.ctx.redis.info("memory")["used_memory"])

    def start_worker(
        self,
        concurrency: int,
        *,
        bench_tasks: bool = False,
        pool: str = "prefork",
        wait: bool = True,
        **overrides: Any,
    ) -> Worker:
        """A worker (pipeline, or the bench baselines) with these setting overrides.

        ``wait``: until it answers a ping; without, the caller times the start-up itself
        (a worker started on a full queue may drain it before the first ping answers).
        """
        values = {**self.base_settings(self.redis.url, self.fake.url), **overrides}
        if bench_tasks:
            worker = Worker(
                values,
                app_module="bench.apps",
                queues=[bench_apps.QUEUE_NOOP, bench_apps.QUEUE_NAIVE],
                concurrency=concurrency,
                pool=pool,
            )
        else:
            worker = Worker(values, queues=PIPELINE_QUEUES, concurrency=concurrency, pool=pool)
        worker.start()
        if not wait:
            return worker
        try:
            worker.wait_pinged(self.celery)
        except BaseException:
            worker.close()
            raise
        return worker

    def redis_pid(self) -> list[int]:
        """redis-server's pid."""
        return [self.redis.process.pid] if self.redis.process else []

    def fake_pid(self) -> list[int]:
        """The fake server's pid."""
        return [self.fake.process.pid] if self.fake.process else []


def measure_rate(count: Callable[[], int], total: int, timeout: float) -> float:
    """Completions per second between 10 % and 90 % of ``total`` (skips start-up and tail).

    The crossing times are interpolated between samples taken every 5 ms.
    """
    return measure_rate_and_cpu(count, total, timeout, {})[0]


def measure_rate_and_cpu(
    count: Callable[[], int],
    total: int,
    timeout: float,
    processes: Mapping[str, Callable[[], Sequence[int]]],
) -> tuple[float, dict[str, float]]:
    """:func:`measure_rate`, and the CPU microseconds per completion of each group of
    ``processes`` (name -> its pids, looked up at 10 %) between 10 % and 90 %."""
    lo, hi = total * 0.1, total * 0.9
    samples: list[tuple[float, int]] = []
    pids: dict[str, Sequence[int]] = {}
    at_lo: tuple[int, dict[str, float]] | None = None
    deadline = time.monotonic() + timeout
    while not samples or samples[-1][1] < hi:
        samples.append((time.monotonic(), count()))
        if at_lo is None and samples[-1][1] >= lo and processes:
            pids = {name: find() for name, find in processes.items()}
            at_lo = (samples[-1][1], {name: cpu_seconds(p) for name, p in pids.items()})
        if samples[-1][0] > deadline:
            raise TimeoutError(f"only {samples[-1][1]}/{total} done after {timeout} s")
        time.sleep(0.005)
    cpu: dict[str, float] = {}
    if at_lo is not None and samples[-1][1] > at_lo[0]:
        done = samples[-1][1] - at_lo[0]
        cpu = {name: 1e6 * (cpu_seconds(p) - at_lo[1][name]) / done for name, p in pids.items()}

    def crossing(level: float) -> float:
        for (t0, c0), (t1, c1) in itertools.pairwise(samples):
            if c1 >= level:
                return t0 + (t1 - t0) * (level - c0) / (c1 - c0) if c1 > c0 else t1
        return samples[-1][0]

    return (hi - lo) / max(1e-6, crossing(hi) - crossing(lo)), cpu


def _processes(b: Bench, worker: Worker) -> dict[str, Callable[[], Sequence[int]]]:
    """The process groups whose CPU a headline figure reports (see README "Performance")."""
    return {
        "worker_main": lambda: [worker.process.pid] if worker.process else [],
        "worker_pool": worker.children,
        "redis": b.redis_pid,
        "fake_hatz": b.fake_pid,
    }


# --- 1. ceiling and first-poll runs ----------------------------------------------------------


def noop_ceiling(b: Bench, n: int, concurrency: int) -> dict[str, Any]:
    """No-op Celery tasks per second: queue ``n``, then start the worker and time them."""
    b.reset()
    with b.bench_celery.producer_or_acquire() as producer:
        for _ in range(n):
            b.bench_celery.send_task(bench_apps.NOOP, producer=producer)
    worker = b.start_worker(concurrency, bench_tasks=True, wait=False)
    try:
        rate, cpu = measure_rate_and_cpu(
            lambda: int(b.ctx.redis.get(bench_apps.NOOP_DONE) or 0),
            n,
            timeout=120 + n / 50,
            processes=_processes(b, worker),
        )
    finally:
        worker.close()
    return {"tasks": n, "concurrency": concurrency, "tasks_per_s": rate, "cpu_us_per_task": cpu}


def first_poll_runs(b: Bench, n: int, concurrency: int) -> dict[str, Any]:
    """Runs per second whose job is complete at the first poll (2 Celery tasks per run)."""
    b.reset()
    app_id = b.fake.add_app(duration=0.0, pending_seconds=0.0, steps=[{"output_type": "dump"}])
    for _ in range(n):
        enqueue_run(app_id, {}, context=b.ctx, celery=b.celery)
    schedule = b.ctx.keys.schedule
    worker = b.start_worker(concurrency, wait=False, poll_initial_delay=0.0)
    try:
        rate, cpu = measure_rate_and_cpu(
            lambda: n - int(b.ctx.redis.zcard(schedule)),
            n,
            timeout=120 + n / 20,
            processes=_processes(b, worker),
        )
        _wait_all_done(b, n, timeout=60)
    finally:
        worker.close()
    stats = b.fake.stats()["by_endpoint"]
    return {
        "runs": n,
        "concurrency": concurrency,
        "runs_per_s": rate,
        "cpu_us_per_run": cpu,
        "tasks_per_run": 2,
        "status_calls_per_run": stats.get("status", 0) / n,
        "submits_per_run": stats.get("run", 0) / n,
    }


def _wait_all_done(b: Bench, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while b.ctx.redis.zcard(b.ctx.keys.schedule) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)


# --- seeding in-flight runs ---------------------------------------------------------------


def seed_running(
    b: Bench, app_id: str, n: int, interval: float, horizon: float | None = None
) -> list[str]:
    """Put ``n`` runs in flight without going through submit, as submit would leave them.

    Jobs are created at the fake directly; each run is written to the ledger
    (QUEUED, then compare-and-set to RUNNING with its ``job_id``, ``due_at`` and
    ``poll_interval``) and gets its poll task with a countdown spread uniformly
    over one interval, so the load is steady from the start; a poll due beyond
    ``HATZ_COUNTDOWN_HORIZON`` is parked instead, as the pipeline would.
    """
    job_ids = b.fake.create_jobs(app_id, n)
    ledger = b.ctx.ledger
    if horizon is None:
        horizon = b.settings.countdown_horizon
    fields = {"app_id": app_id, "inputs": {}, "files": {}, "callback_url": "", "metadata": {}}

    def seed(jobs: list[str]) -> list[str]:
        run_ids = [ledger.create(fields, first_due_in=interval + 60)[0] for _ in jobs]
        with b.celery.producer_or_acquire() as producer:
            for run_id, job_id in zip(run_ids, jobs, strict=True):
                countdown = random.uniform(0, interval)
                now = time.time()
                # As the pipeline reschedules: a poll beyond the horizon is parked.
                park = 0 < horizon < countdown
                ledger.cas(
                    run_id,
                    states=PRE_SUBMIT_STATES,
                    token=0,
                    to=RunState.RUNNING,
                    next_at=now + countdown,
                    park=park,
                    fields={
                        "job_id": job_id,
                        "submit_attempts": 1,
                        "submitted_at": now,
                        "poll_interval": interval,
                        "due_at": now + countdown,
                        "hatz_status": "running",
                        "steps_done": 0,
                    },
                )
                if not park:
                    hint = poll_hint(
                        {
                            "job_id": job_id,
                            "app_id": app_id,
                            "state": RunState.RUNNING.value,
                            "due_at": now + countdown,
                            "poll_interval": interval,
                            "hatz_status": "running",
                            "steps_done": 0,
                            "submitted_at": now,
                        }
                    )
                    b.celery.send_task(
                        task_names.POLL,
                        args=[run_id, 0, hint],
                        countdown=countdown,
                        producer=producer,
                    )
        return run_ids

    parts = [job_ids[i::_SEED_THREADS] for i in range(_SEED_THREADS)]
    with ThreadPoolExecutor(_SEED_THREADS) as pool:
        return [run_id for part in pool.map(seed, parts) for run_id in part]


class LatenessSampler:
    """Collects ``last_poll_lateness`` of every poll the ledger records, by snapshots.

    A snapshot reads ``poll_count`` and ``last_poll_lateness`` of every run; a
    run whose count moved since the last snapshot contributes its lateness.
    Snapshots come faster than the poll interval, so no poll is missed.
    """

    def __init__(self, b: Bench, run_ids: Sequence[str]) -> None:
        self.b = b
        self.run_ids = list(run_ids)
        self.counts: dict[str, int] = {}
        self.samples: list[float] = []
        self.polls = 0

    def snapshot(self, record: bool = True) -> None:
        """Read every run once (pipelined)."""
        r, keys = self.b.ctx.redis, self.b.ctx.keys
        for start in range(0, len(self.run_ids), 2000):
            chunk = self.run_ids[start : start + 2000]
            pipe = r.pipeline(transaction=False)
            for run_id in chunk:
                pipe.hmget(keys.run(run_id), ["poll_count", "last_poll_lateness"])
            for run_id, (count, lateness) in zip(chunk, pipe.execute(), strict=True):
                polls = int(count or 0)
                if record and polls > self.counts.get(run_id, 0):
                    self.polls += polls - self.counts.get(run_id, 0)
                    if lateness is not None:
                        self.samples.append(float(lateness))
                self.counts[run_id] = polls


def inflight(
    b: Bench,
    n: int,
    interval: float,
    window: float,
    concurrency: int = 2,
    pool: str = "prefork",
    settle: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """``n`` runs in flight polling every ``interval`` s: RSS, Redis, lateness, CPU.

    ``settle``: start measuring once the worker has taken every seeded poll task
    from the queue (off when the point is to overload it).
    """
    b.reset()
    worker = b.start_worker(concurrency, pool=pool, **overrides)
    try:
        time.sleep(0.5)
        rss_idle = rss_bytes(worker.pids())
        mem0 = b.used_memory()
        app_id = b.fake.add_app(duration=LONG_JOB, pending_seconds=0.0)
        seed_started = time.monotonic()
        run_ids = seed_running(b, app_id, n, interval, overrides.get("countdown_horizon"))
        seed_seconds = time.monotonic() - seed_started
        # Publishing 10k countdowns outruns the worker's intake: the ones due before it
        # has taken them all from the queue are late because of the seeding, not the
        # steady state. Measure only after the queue is drained.
        # (An overloaded worker never drains it: give up after n/200 s.)
        deadline = time.monotonic() + (max(10.0, n / 200) if settle else 0.0)
        while b.ctx.redis.llen(task_names.QUEUE_POLL) and time.monotonic() < deadline:
            time.sleep(0.2)
        ingest_seconds = time.monotonic() - seed_started - seed_seconds
        sampler = LatenessSampler(b, run_ids)
        sampler.snapshot(record=False)
        pids = worker.pids()
        cpu0 = (cpu_seconds(pids), cpu_seconds(b.redis_pid()), cpu_seconds(b.fake_pid()))
        status0, t0 = b.fake.calls("status"), time.monotonic()
        period = min(10.0, max(0.5, interval / 3))
        rss_peak = pss_peak = 0
        while time.monotonic() - t0 < window:
            time.sleep(min(period, max(0.0, window - (time.monotonic() - t0))))
            sampler.snapshot()
            rss_peak = max(rss_peak, rss_bytes(worker.pids()))
            pss_peak = max(pss_peak, pss_bytes(worker.pids()))
        elapsed = time.monotonic() - t0
        status1 = b.fake.calls("status")
        cpu1 = (cpu_seconds(pids), cpu_seconds(b.redis_pid()), cpu_seconds(b.fake_pid()))
        mem1 = b.used_memory()
        one_run = b.ctx.redis.memory_usage(b.ctx.keys.run(run_ids[0])) or 0
        load = load_average()
    finally:
        worker.close()
    polls = status1 - status0
    return {
        "runs": n,
        "interval_s": interval,
        "concurrency": concurrency,
        "pool": pool,
        "window_s": round(elapsed, 1),
        "seed_s": round(seed_seconds, 1),
        "intake_s": round(ingest_seconds, 1),
        "offered_polls_per_s": n / interval,
        "polls_per_s": polls / elapsed,
        "lateness_samples": len(sampler.samples),
        "lateness_p50_s": percentile(sampler.samples, 50),
        "lateness_p99_s": percentile(sampler.samples, 99),
        "lateness_max_s": max(sampler.samples, default=None),
        "worker_rss_mb": rss_peak / 2**20,
        "worker_rss_idle_mb": rss_idle / 2**20,
        "worker_pss_mb": pss_peak / 2**20,
        "redis_bytes_per_run": (mem1 - mem0) / n,
        "ledger_hash_bytes": one_run,
        "worker_cpu_cores": (cpu1[0] - cpu0[0]) / elapsed,
        "redis_cpu_cores": (cpu1[1] - cpu0[1]) / elapsed,
        "fake_cpu_cores": (cpu1[2] - cpu0[2]) / elapsed,
        "worker_cpu_ms_per_poll": 1000 * (cpu1[0] - cpu0[0]) / polls if polls else None,
        "load_avg_1m": load,
    }


def keeps_up(result: dict[str, Any], p99_limit: float = 1.0) -> bool:
    """Lateness p99 within the limit and at least 90 % of the offered polls done."""
    p99 = result["lateness_p99_s"]
    return (
        p99 is not None
        and p99 <= p99_limit
        and result["polls_per_s"] >= 0.9 * result["offered_polls_per_s"]
    )


# --- 2. sustained poll throughput ----------------------------------------------------------


def poll_throughput(
    b: Bench, n: int, interval: float, window: float, concurrency: int = 2, pool: str = "prefork"
) -> dict[str, Any]:
    """Offer more polls than the worker can do and count what it does."""
    result = inflight(b, n, interval, window, concurrency, pool, settle=False)
    return {
        "runs": n,
        "pool": pool,
        "concurrency": concurrency,
        "offered_polls_per_s": result["offered_polls_per_s"],
        "polls_per_s": result["polls_per_s"],
        "worker_cpu_cores": result["worker_cpu_cores"],
        "worker_cpu_ms_per_poll": result["worker_cpu_ms_per_poll"],
        "redis_cpu_cores": result["redis_cpu_cores"],
        "fake_cpu_cores": result["fake_cpu_cores"],
        "load_avg_1m": result["load_avg_1m"],
    }


# --- 4. the naive baseline ---------------------------------------------------------------


def naive_vs_ours(
    b: Bench, k: int, duration: float, interval: float, concurrency: int = 2
) -> dict[str, Any]:
    """``k`` runs of ``duration`` s: sleep-polling tasks, then our pipeline, same concurrency."""
    b.reset()
    app_id = b.fake.add_app(duration=duration, pending_seconds=0.0)
    worker = b.start_worker(concurrency, bench_tasks=True)
    r = b.ctx.redis
    try:
        started = time.monotonic()
        for _ in range(k):
            b.bench_celery.send_task(bench_apps.NAIVE, args=[app_id, interval])
        peak = 0
        while int(r.get(bench_apps.NAIVE_DONE) or 0) < k:
            peak = max(peak, int(r.get(bench_apps.NAIVE_INFLIGHT) or 0))
            if time.monotonic() - started > 60 + 2 * k * duration:
                raise TimeoutError("naive runs did not finish")
            time.sleep(0.02)
        naive_elapsed = time.monotonic() - started
    finally:
        worker.close()

    b.reset()
    app_id = b.fake.add_app(duration=duration, pending_seconds=0.0)
    worker = b.start_worker(concurrency, poll_interval=interval, poll_initial_delay=interval)
    try:
        started = time.monotonic()
        for _ in range(k):
            enqueue_run(app_id, {}, context=b.ctx, celery=b.celery)
        ours_peak = 0
        while (left := int(r.zcard(b.ctx.keys.schedule))) > 0:
            ours_peak = max(ours_peak, len(b.fake.stats()["jobs"]) - (k - left))
            if time.monotonic() - started > 60 + 2 * duration:
                raise TimeoutError("our runs did not finish")
            time.sleep(0.05)
        ours_elapsed = time.monotonic() - started
    finally:
        worker.close()
    return {
        "runs": k,
        "duration_s": duration,
        "interval_s": interval,
        "concurrency": concurrency,
        "naive_max_in_flight": peak,
        "naive_runs_per_s": k / naive_elapsed,
        "ours_max_in_flight": ours_peak,
        "ours_runs_per_s": k / ours_elapsed,
    }


# --- 5 and 6. detection latency and API economy ------------------------------------------------


def detection(b: Bench, m: int, duration: float, interval: float, spread: float) -> dict[str, Any]:
    """Fake completion -> callback received, and API calls per run by endpoint."""
    b.reset()
    app_id = b.fake.add_app(
        duration=duration,
        pending_seconds=0.0,
        steps=[{"output_type": "dump"}, {"output_type": "document"}],
    )
    with CallbackReceiver() as receiver:
        worker = b.start_worker(2, poll_interval=interval, poll_initial_delay=interval)
        try:
            for _ in range(m):
                enqueue_run(app_id, {}, context=b.ctx, callback_url=receiver.url, celery=b.celery)
                time.sleep(spread / m)
            deadline = time.monotonic() + 60 + 3 * duration
            while len(receiver.successful()) < m and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            worker.close()
        deliveries = receiver.successful()
    stats = b.fake.stats()
    jobs = stats["jobs"]
    latencies = []
    for delivery in deliveries:
        data = json.loads(delivery["body"])["data"]  # type: ignore[arg-type]
        done = jobs.get(data["job_id"], {}).get("first_complete_at")
        if done is not None:
            latencies.append(float(delivery["at"]) - float(done))  # type: ignore[arg-type]
    by_endpoint = {k: v / m for k, v in sorted(stats["by_endpoint"].items())}
    documents = 1
    minimum = 1 + math.ceil(duration / interval) + documents
    total = sum(by_endpoint.values())
    return {
        "runs": m,
        "callbacks": len(deliveries),
        "duration_s": duration,
        "interval_s": interval,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p99_s": percentile(latencies, 99),
        "goal_p50_s": interval / 2 + 0.2,
        "calls_per_run": by_endpoint,
        "calls_per_run_total": total,
        "minimum_calls_per_run": minimum,
        "economy_ratio": total / minimum,
    }


def rate_budget_present() -> bool:
    """Whether the shared request-rate budget setting (HATZ_API_MAX_RPS) exists."""
    return "api_max_rps" in Settings.model_fields
