"""The Celery app. Every Celery setting is derived from :class:`config.Settings` here.

Start it the Celery way: ``celery -A worker worker`` and ``celery -A worker beat``.
Settings are read when Celery first needs its configuration, so importing
this module never touches the environment.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

from celery import Celery
from kombu.entity import Queue

from config import ConfigError, Settings, load_settings
from worker import logs, task_names
from worker.health import WorkerHeartbeat
from worker.schedules import beat_entries

# Imported for its Celery signal receivers (logging setup, per-task log context).
_ = logs

TASK_MODULES = ["tasks.runs", "tasks.callbacks", "tasks.maintenance", "tasks.batches"]


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery configuration for ``settings`` (README "Celery configuration" explains each)."""
    # Countdown tasks wait in the worker, unacknowledged, until due; the Redis
    # transport redelivers any message unacked for longer than
    # visibility_timeout. Settings refuse a visibility_timeout shorter than
    # twice the longest countdown, so a countdown is never redelivered as a duplicate.
    transport: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout,
        "socket_timeout": 15,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 25,
        "retry_on_timeout": True,
    }
    if settings.redis_sentinel_master:
        # sentinel://h1:26379;sentinel://h2:26379 URLs: kombu's Sentinel transport and
        # Celery's Sentinel result backend both take the master's name from here.
        transport["master_name"] = settings.redis_sentinel_master
    routes = {name: {"queue": queue} for name, queue in task_names.ROUTES.items()}
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "broker_transport_options": dict(transport),
        "result_backend_transport_options": dict(transport),
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_channel_error_retry": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_queues": [Queue(q) for q in task_names.ALL_QUEUES],  # type: ignore[no-untyped-call]
        "task_default_queue": task_names.QUEUE_DEFAULT,
        "task_routes": routes,
        # Tasks are idempotent (ledger CAS), so redelivery after a crash is safe.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "result_expires": 86400,
        "task_soft_time_limit": 600,
        "task_time_limit": 660,
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "timezone": "UTC",
        "enable_utc": True,
        # Celery's default scheduler plus a heartbeat for health probes (worker.health).
        "beat_scheduler": "worker.health:HeartbeatScheduler",
        "beat_schedule": {
            "hatz-sweeper": {"task": task_names.SWEEP, "schedule": settings.sweep_interval},
            "hatz-batches": {"task": task_names.BATCH_SWEEP, "schedule": settings.sweep_interval},
            **beat_entries(settings),
        },
    }


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app; configured from ``settings`` or, lazily, from the environment."""
    celery = Celery("hatz_worker", include=TASK_MODULES)
    celery.steps["consumer"].add(WorkerHeartbeat)
    if settings is not None:
        celery.config_from_object(SimpleNamespace(**celery_config(settings)))
        return celery

    def _configure(sender: Celery, **_: Any) -> None:
        try:
            current = load_settings()
            config = celery_config(current)  # a bad schedule file is a ConfigError too
        except ConfigError as exc:
            if "celery" in sys.argv[0]:
                # `celery -A worker ...`: one clear message, not a traceback.
                print(f"hatz-worker: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
            raise
        sender.config_from_object(SimpleNamespace(**config))

    celery.on_configure.connect(_configure, weak=False)
    return celery


app = create_app()


def publish(steps: list[Any], celery: Celery | None = None) -> None:
    """Send each :class:`~worker.pipeline.Next` by task name, routed by ``task_routes``."""
    target = celery or app
    for step in steps:
        target.send_task(step.task, args=list(step.args), countdown=step.countdown or None)
