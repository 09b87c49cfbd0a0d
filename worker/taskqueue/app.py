"""The Celery app: created, configured from settings (:mod:`worker.taskqueue.config`), tasks found.

Start it the Celery way: ``celery -A worker worker`` and ``celery -A worker beat``.
Settings are read when Celery first needs its configuration, so importing
this module never touches the environment.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

from celery import Celery, signals

from config import ConfigError, Settings, load_settings
from worker.ops import logs
from worker.store.outbox import send_step
from worker.taskqueue.config import celery_config, startup_problems
from worker.taskqueue.heartbeat import WorkerHeartbeat
from worker.taskqueue.poll_dispatcher import PollDispatcher

# Imported for its Celery signal receivers (logging setup, per-task log context).
_ = logs

TASK_MODULES = ["tasks.runs", "tasks.callbacks", "tasks.maintenance", "tasks.batches"]


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    """At worker start: refuse an unsafe configuration, apply the kombu workaround."""
    from worker.taskqueue import kombu_fixes

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"hatz-worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    problems = startup_problems(settings)
    if problems:
        print(f"hatz-worker: refusing to start: {problems[0]}", file=sys.stderr)
        raise SystemExit(2)
    kombu_fixes.apply()


signals.worker_init.connect(_on_worker_init, weak=False)


def _on_process_init(sender: Any = None, **_: Any) -> None:
    """In each pool process: follow-up tasks ride on the ledger's compare-and-set."""
    from worker.context import get_context
    from worker.store.outbox import Outbox

    get_context().outbox = Outbox(app)


signals.worker_process_init.connect(_on_process_init, weak=False)


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app; configured from ``settings`` or, lazily, from the environment."""
    celery = Celery("hatz_worker", include=TASK_MODULES)
    celery.steps["consumer"].add(WorkerHeartbeat)
    celery.steps["consumer"].add(PollDispatcher)
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
    """Send each :class:`~worker.store.outbox.Next` by task name, routed by ``task_routes``."""
    target = celery or app
    for step in steps:
        send_step(target, step)
