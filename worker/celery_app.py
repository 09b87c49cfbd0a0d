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
from worker import task_names

TASK_MODULES = ["tasks.runs", "tasks.callbacks", "tasks.maintenance", "tasks.batches"]


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery configuration for ``settings`` (README "Celery configuration" explains each)."""
    # Countdown tasks wait in the worker, unacknowledged, until due; the Redis
    # transport redelivers any message unacked for longer than
    # visibility_timeout. Settings refuse a visibility_timeout shorter than
    # twice the longest countdown, so a countdown is never redelivered as a duplicate.
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        "socket_timeout": 15,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 25,
        "retry_on_timeout": True,
    }
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
        # Task events cost the worker's main process three Redis round trips per task
        # (over a quarter of its CPU per poll, see README "Performance"). Off by default:
        # `celery worker -E`, or Flower (which enables them remotely), turns them on.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": {
            "hatz-sweeper": {"task": task_names.SWEEP, "schedule": settings.sweep_interval},
        },
    }


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app; configured from ``settings`` or, lazily, from the environment."""
    celery = Celery("hatz_worker", include=TASK_MODULES)
    if settings is not None:
        celery.config_from_object(SimpleNamespace(**celery_config(settings)))
        return celery

    def _configure(sender: Celery, **_: Any) -> None:
        try:
            current = load_settings()
        except ConfigError as exc:
            if "celery" in sys.argv[0]:
                # `celery -A worker ...`: one clear message, not a traceback.
                print(f"hatz-worker: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
            raise
        sender.config_from_object(SimpleNamespace(**celery_config(current)))

    celery.on_configure.connect(_configure, weak=False)
    return celery


app = create_app()


def publish(steps: list[Any], celery: Celery | None = None) -> None:
    """Send each :class:`~worker.pipeline.Next` by task name, routed by ``task_routes``."""
    target = celery or app
    for step in steps:
        target.send_task(step.task, args=list(step.args), countdown=step.countdown or None)
