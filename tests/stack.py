"""The integration-test stack: a private redis-server, the fake Hatz server, a callback
receiver and a real `celery worker` subprocess, plus helpers the tests share."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from celery import Celery

from config import Settings
from tests.conftest import API_KEY, FILE_ROOTS, make_settings
from worker.api.runs import enqueue_run, wait_for_run
from worker.context import Context
from worker.fake_hatz import FakeApp, FakeHatz
from worker.local.stack import CallbackReceiver, CeleryProcess, LocalRedis
from worker.store.ledger import Run
from worker.taskqueue.app import create_app

QUIET_WORKER = ["--without-gossip", "--without-mingle"]


class Stack:
    """One running stack; ``values`` are the settings shared by the tests and the worker."""

    def __init__(
        self,
        redis: LocalRedis,
        fake: FakeHatz,
        receiver: CallbackReceiver,
        values: Mapping[str, Any],
        *,
        concurrency: int = 2,
        app_defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.redis = redis
        self.fake = fake
        self.receiver = receiver
        self.values = {
            "file_roots": FILE_ROOTS,
            **values,
            "redis_url": redis.url,
            "base_url": fake.url,
        }
        self.settings: Settings = make_settings(**self.values)
        self.context = Context.from_settings(self.settings)
        self.celery: Celery = create_app(self.settings)
        self.concurrency = concurrency
        self.app_defaults = {"name": "test app", "duration": 0.6, "pending_seconds": 0.1}
        self.app_defaults.update(app_defaults or {})
        self.worker = self.new_worker()
        self.logs: list[str] = []

    def new_worker(self) -> CeleryProcess:
        """A worker process (not started) with this stack's settings."""
        return CeleryProcess(
            {**self.values, "api_key": API_KEY},
            args=["--pool", "prefork", "--concurrency", str(self.concurrency), *QUIET_WORKER],
        )

    def restart_worker(self) -> None:
        """Stop the worker (keeping its log) and start a fresh one."""
        self.worker.stop()
        self.logs.append(self.worker.log_text())
        self.worker = self.new_worker().start()
        self.worker.wait_ready()

    def app(self, **kwargs: Any) -> FakeApp:
        """Serve a new fake app with a fresh id."""
        fields = {"id": str(uuid.uuid4()), **self.app_defaults, **kwargs}
        return self.fake.add_app(FakeApp(**fields))

    def enqueue(self, app_id: str, inputs: dict[str, Any] | None = None, **kw: Any) -> str:
        """Enqueue a run the way an application would."""
        return enqueue_run(app_id, inputs or {}, context=self.context, celery=self.celery, **kw)

    def wait(self, run_id: str, timeout: float = 30) -> Run:
        """Wait until the run is terminal."""
        return wait_for_run(run_id, timeout=timeout, interval=0.05, context=self.context)

    def callback_state(self, run_id: str) -> str:
        """The run's ``callback_state`` in the ledger."""
        return str(self.context.ledger.require(run_id).get("callback_state") or "")

    def calls(self, endpoint: str, app_id: str | None = None) -> list[dict[str, Any]]:
        """The fake's call log for one endpoint (and app)."""
        calls = self.fake.calls(endpoint=endpoint)
        return [c for c in calls if app_id is None or c.get("app_id") == app_id]

    def received(self, run_id: str) -> list[dict[str, Any]]:
        """Every callback request the receiver got for this run, whatever it answered."""
        with self.receiver._lock:
            deliveries = list(self.receiver.deliveries)
        return [d for d in deliveries if _run_of(d) == run_id]

    def poll_gaps(self, app_id: str) -> list[float]:
        """Seconds between consecutive status polls of this app's jobs, from the fake's log."""
        times = sorted(c["ts"] for c in self.calls("status", app_id))
        return [b - a for a, b in itertools.pairwise(times)]

    def deliveries_for(self, run_id: str) -> list[dict[str, Any]]:
        """The callbacks for this run that the receiver answered with 2xx."""
        return [d for d in self.receiver.successful() if _run_of(d) == run_id]


def assert_spaced(gaps: list[float], interval: float, jitter: float = 0.1) -> None:
    """Polls ``interval`` ± ``jitter`` apart: never early; the median not late beyond
    scheduling slack."""
    assert min(gaps) >= interval * (1 - jitter) - 0.02, gaps
    assert sorted(gaps)[len(gaps) // 2] <= interval * (1 + jitter) + 0.25, gaps


def _run_of(delivery: Mapping[str, Any]) -> str | None:
    data = json.loads(delivery["body"]).get("data") or {}
    return data.get("run_id")


@contextmanager
def running_stack(stack_class: type[Stack] = Stack, /, **kwargs: Any) -> Iterator[Stack]:
    """Start a stack (``kwargs`` go to ``stack_class``); stop it and check a clean shutdown."""
    with (
        LocalRedis() as redis,
        FakeHatz(api_key=API_KEY, port=0) as fake,
        CallbackReceiver() as receiver,
    ):
        s = stack_class(redis, fake, receiver, **kwargs)
        s.worker.start()
        try:
            s.worker.wait_ready()
            yield s
        finally:
            code = s.worker.stop()
            print(s.worker.log_text()[-4000:])
            s.context.client.close()
            assert code == 0, "the worker did not shut down cleanly"
