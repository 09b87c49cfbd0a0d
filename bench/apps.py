"""Bench-only Celery tasks, on our own Celery configuration: the baselines.

``bench.noop`` is the ceiling: a task that only counts itself (one ``INCR`` so
the harness can see it finish), run by the same Redis, the same
:func:`worker.taskqueue.config.celery_config` and the same worker flags as the
pipeline. ``bench.naive_run`` is the obvious alternative to self-rescheduling
polls: submit, then ``time.sleep(interval)`` and poll in a loop, holding a
worker process for the whole run.

Start a worker for them with ``celery -A bench.apps worker -Q bench.noop,bench.naive``.
"""

from __future__ import annotations

import os
import sys
import time
from types import SimpleNamespace
from typing import Any

import redis
from celery import Celery
from kombu.entity import Queue

from config import ConfigError, Settings, load_settings
from worker.hatz.client import HatzClient
from worker.taskqueue.config import celery_config

NOOP = "bench.noop"
NAIVE = "bench.naive_run"
QUEUE_NOOP = "bench.noop"
QUEUE_NAIVE = "bench.naive"
NOOP_DONE = "bench:noop:done"
NAIVE_INFLIGHT = "bench:naive:inflight"
NAIVE_DONE = "bench:naive:done"


def bench_config(settings: Settings) -> dict[str, Any]:
    """Our Celery configuration, with the bench queues instead of the hatz.* ones."""
    conf = celery_config(settings)
    conf["task_queues"] = [Queue(QUEUE_NOOP), Queue(QUEUE_NAIVE)]  # type: ignore[no-untyped-call]
    conf["task_routes"] = {NOOP: {"queue": QUEUE_NOOP}, NAIVE: {"queue": QUEUE_NAIVE}}
    conf["task_default_queue"] = QUEUE_NOOP
    conf["beat_schedule"] = {}
    return conf


def create_bench_app(settings: Settings | None = None) -> Celery:
    """The bench Celery app; configured from ``settings`` or, lazily, from the environment."""
    celery = Celery("hatz_bench")
    if settings is not None:
        celery.config_from_object(SimpleNamespace(**bench_config(settings)))
        return celery

    def _configure(sender: Celery, **_: Any) -> None:
        try:
            current = load_settings()
        except ConfigError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        sender.config_from_object(SimpleNamespace(**bench_config(current)))

    celery.on_configure.connect(_configure, weak=False)
    return celery


app = create_bench_app()

_clients: dict[int, tuple[redis.Redis, HatzClient]] = {}


def _clients_for_process() -> tuple[redis.Redis, HatzClient]:
    """One Redis and one Hatz client per (pool child) process."""
    pid = os.getpid()
    if pid not in _clients:
        settings = load_settings()
        _clients[pid] = (
            redis.Redis.from_url(settings.redis_url),
            HatzClient.from_settings(settings),
        )
    return _clients[pid]


@app.task(name=NOOP, acks_late=False)  # type: ignore[untyped-decorator]  # as hatz.submit/poll
def noop() -> None:
    """Do nothing but count: the ceiling of a Celery task on this Redis and these settings."""
    _clients_for_process()[0].incr(NOOP_DONE)


@app.task(name=NAIVE)  # type: ignore[untyped-decorator]
def naive_run(app_id: str, interval: float) -> str:
    """Submit a run, then sleep-poll it until it ends: the baseline a user would write."""
    r, client = _clients_for_process()
    job = client.run_workflow(app_id, {})
    r.incr(NAIVE_INFLIGHT)
    try:
        while True:
            time.sleep(interval)
            status = client.get_job(job.job_id).status
            if status in ("complete", "failed"):
                return status
    finally:
        r.decr(NAIVE_INFLIGHT)
        r.incr(NAIVE_DONE)
