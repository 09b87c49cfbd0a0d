"""Every Celery setting, derived from :class:`config.Settings` (docs: "Celery configuration").

The Celery app (:mod:`worker.taskqueue.app`) loads this when it first needs its
configuration; the benchmarks' apps reuse it so they measure the same worker.
"""

from __future__ import annotations

from typing import Any

from kombu.entity import Exchange, Queue

from config import Settings
from worker import task_names
from worker.batches.schedules import beat_entries

#: Hard and soft per-task time limits, s. A task never outlives its message's
#: visibility timeout: :func:`startup_problems` checks countdown + hard limit.
TASK_SOFT_TIME_LIMIT = 600
TASK_TIME_LIMIT = 660
#: Cold shutdown (SIGQUIT, a second Ctrl-C) first waits this long for running tasks.
SOFT_SHUTDOWN_TIMEOUT = 30.0


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
        # No task here is ever sent with a priority: one Redis list per queue, not
        # kombu's four (every fetch is a BRPOP over 4 keys instead of 16).
        "priority_steps": [0],
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
        # The Redis result backend ignores socket options in its transport
        # options: it reads the redis_* settings below (celery.backends.redis
        # RedisBackend.__init__), so they are set again here, explicitly.
        "redis_socket_timeout": transport["socket_timeout"],
        "redis_socket_connect_timeout": transport["socket_connect_timeout"],
        "redis_socket_keepalive": True,
        "redis_retry_on_timeout": True,
        "redis_backend_health_check_interval": transport["health_check_interval"],
        # Result writes retry across a Redis restart instead of failing the task.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 20,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_channel_error_retry": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_queues": _queues(settings),
        "task_default_queue": task_names.QUEUE_DEFAULT,
        "task_routes": routes,
        # Tasks are idempotent (ledger CAS), so redelivery after a crash is safe.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Countdown tasks are held in worker memory until due; this caps how many
        # (celery >= 5.5; further ones wait in Redis, not in RAM).
        "worker_eta_task_limit": settings.worker_eta_task_limit,
        # On a broker connection loss, let running tasks finish. Cancelling them
        # (the Celery 6 default) would kill a hatz.submit mid-POST, and its run
        # would have to become AMBIGUOUS (chaos row "Redis killed and restarted").
        # Their acks are lost with the connection; the messages stay in the
        # unacked hash and come back after visibility_timeout with stale tokens.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # SIGTERM is a warm shutdown (running tasks finish, held countdown
        # messages are restored to their queue). Only a cold shutdown (SIGQUIT)
        # uses this: it still gives running tasks this long first.
        "worker_soft_shutdown_timeout": SOFT_SHUTDOWN_TIMEOUT,
        "task_ignore_result": True,
        "result_expires": 86400,
        "task_soft_time_limit": TASK_SOFT_TIME_LIMIT,
        "task_time_limit": TASK_TIME_LIMIT,
        # Task events cost the worker's main process three Redis round trips per task
        # (over a quarter of its CPU per poll, see README "Performance"). Off by default:
        # `celery worker -E`, or Flower (which enables them remotely), turns them on.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "timezone": "UTC",
        "enable_utc": True,
        # Celery's default scheduler plus a heartbeat for health probes (worker.ops.health).
        "beat_scheduler": "worker.taskqueue.heartbeat:HeartbeatScheduler",
        "beat_schedule": {
            "hatz-sweeper": {"task": task_names.SWEEP, "schedule": settings.sweep_interval},
            "hatz-batches": {"task": task_names.BATCH_SWEEP, "schedule": settings.sweep_interval},
            **beat_entries(settings),
        },
    }


def startup_problems(settings: Settings) -> list[str]:
    """Why a worker must not start with ``settings`` (empty when it may).

    A message is redelivered by Redis once unacknowledged for longer than
    ``visibility_timeout``; a countdown task is unacknowledged from the moment
    the worker fetches it until it finishes, so the timeout must cover the
    longest countdown plus the hard task time limit, or a slow task would run
    twice. (Settings already require twice the longest countdown.)
    """
    needed = settings.longest_countdown() + TASK_TIME_LIMIT
    if settings.visibility_timeout < needed:
        return [
            f"HATZ_VISIBILITY_TIMEOUT ({settings.visibility_timeout} s) must be at least the "
            f"longest countdown plus the task time limit ({needed:.0f} s), or a task still "
            "running would be redelivered and run twice"
        ]
    return []


def _queues(settings: Settings) -> list[Queue]:
    """The queues a worker consumes by default (``-Q`` narrows them).

    Celery's default queue is declared as Celery itself declares it (exchange and
    routing key ``celery``), so a plain ``send_task("hatz.run_workflow", ...)``
    from an app that names no queue reaches a worker instead of waiting forever.
    """
    queues = [Queue(q) for q in task_names.ALL_QUEUES]  # type: ignore[no-untyped-call]
    if settings.consume_celery_queue:
        default = task_names.QUEUE_CELERY
        queues.append(Queue(default, Exchange(default), routing_key=default))  # type: ignore[no-untyped-call]
    return queues
