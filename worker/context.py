"""The process-wide bundle of settings, Redis, Hatz client and ledger.

Tasks get it from :func:`get_context`; tests build their own
:class:`Context` from explicit settings instead of patching globals.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from redis import Redis
from redis.sentinel import Sentinel

from config import Settings, load_settings
from worker.hatz.client import HatzClient
from worker.hatz.types import App
from worker.limits.budget import ApiBudget
from worker.ops.metrics import Metrics
from worker.store.keys import Keys
from worker.store.ledger import Ledger

_CONNECTION_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "socket_timeout": 10,
    "socket_connect_timeout": 5,
    "socket_keepalive": True,
    "health_check_interval": 25,
    "retry_on_timeout": True,
}


def redis_from_url(url: str) -> Redis:
    """A Redis client with timeouts, keepalive and health checks always on."""
    return Redis.from_url(url, **_CONNECTION_OPTIONS)


def sentinel_addresses(url: str) -> tuple[list[tuple[str, int]], int, str | None]:
    """``sentinel://[:pw@]h1:26379/0;sentinel://h2:26379/0`` -> (sentinels, db, password).

    The same ``;``-separated form kombu's Sentinel transport and Celery's
    Sentinel result backend accept; db and password (of the master) come from
    the first address, as in kombu.
    """
    sentinels: list[tuple[str, int]] = []
    db, password = 0, None
    for i, chunk in enumerate(p for p in url.split(";") if p.strip()):
        parts = urlsplit(chunk.strip())
        sentinels.append((parts.hostname or "127.0.0.1", parts.port or 26379))
        if i == 0:
            path = parts.path.strip("/")
            db = int(path) if path.isdigit() else 0
            password = unquote(parts.password) if parts.password else None
    return sentinels, db, password


def redis_from_settings(settings: Settings) -> Redis:
    """The ledger's Redis client: direct, or the current master found through Sentinel.

    With ``sentinel://`` the client asks the sentinels for the master named
    ``HATZ_REDIS_SENTINEL_MASTER`` and follows it across failovers, as the
    broker (kombu) and result backend (Celery) do with the same URL.
    """
    if urlsplit(settings.redis_url).scheme != "sentinel":
        return redis_from_url(settings.redis_url)
    sentinels, db, password = sentinel_addresses(settings.redis_url)
    sentinel = Sentinel(sentinels, db=db, password=password, **_CONNECTION_OPTIONS)
    master: Redis = sentinel.master_for(settings.redis_sentinel_master)
    return master


class Encoder(Protocol):
    """Builds the broker messages of follow-up steps (see :mod:`worker.store.outbox`)."""

    def encode(self, steps: Sequence[Any]) -> list[tuple[str, str]] | None:
        """``(queue key, payload)`` per step, or None when it cannot."""


@dataclass
class Context:
    """Everything a pipeline function needs; one per process."""

    settings: Settings
    redis: Redis
    client: HatzClient
    ledger: Ledger
    clock: Callable[[], float] = field(default=time.time)
    _metrics: Metrics | None = field(default=None, repr=False)
    #: Workflow definitions this process read, with when their Redis cache entry
    #: expires (see :func:`worker.runs.apps.fetch_app`).
    apps: dict[str, tuple[float, App]] = field(default_factory=dict, repr=False)
    #: Learned poll windows this process planned, by app, with when to plan again
    #: (see :func:`worker.runs.poll_plan.window_for`).
    poll_windows: dict[str, tuple[float, Any]] = field(default_factory=dict, repr=False)
    #: Set in worker pool processes: follow-up tasks are pushed by the ledger's
    #: compare-and-set itself (:mod:`worker.store.outbox`); None publishes them afterwards.
    outbox: Encoder | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self._metrics is None:
            self._metrics = Metrics(self.redis, self.ledger.keys, buffered=True)
        if self._metrics.buffered:
            self.ledger.counters = self._metrics.drain

    @property
    def metrics(self) -> Metrics:
        """The shared Prometheus counters (see :mod:`worker.ops.metrics`).

        Buffered: the counts ride on the next ledger compare-and-set, and
        :func:`worker.runs.task_guard.run_step` flushes what is left after each task.
        """
        assert self._metrics is not None  # set in __post_init__
        return self._metrics

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        redis_client: Redis | None = None,
        client: HatzClient | None = None,
        clock: Callable[[], float] = time.time,
        buffered_metrics: bool = True,
    ) -> Context:
        """Build a context; pass ``redis_client``/``client`` to inject fakes.

        ``buffered_metrics=False`` writes each metric event at once instead of with
        the next ledger compare-and-set: for a process that makes Hatz API calls
        outside tasks, from several threads (the HTTP API's uploads).
        """
        r = redis_client if redis_client is not None else redis_from_settings(settings)
        keys = Keys(settings.key_prefix)
        ledger = Ledger(
            r,
            keys=keys,
            retention=settings.run_retention,
            idempotency_ttl=settings.idempotency_ttl,
            clock=clock,
        )
        metrics = Metrics(r, keys, buffered=buffered_metrics)
        if client is None:
            budget = None
            if settings.api_max_rps > 0:
                budget = ApiBudget(r, ledger.keys.api_budget, settings.api_max_rps)
            client = HatzClient.from_settings(
                settings, before_request=budget, observer=metrics.api_call
            )
        return cls(
            settings=settings,
            redis=r,
            client=client,
            ledger=ledger,
            clock=clock,
            _metrics=metrics,
        )

    @property
    def keys(self) -> Keys:
        """The Redis key builder."""
        return self.ledger.keys


_lock = threading.Lock()
_context: Context | None = None
_pid = 0


def get_context() -> Context:
    """The process's context, built from the environment on first use.

    Rebuilt after a fork: a prefork pool child must not share the parent's
    sockets.
    """
    global _context, _pid
    with _lock:
        if _context is None or _pid != os.getpid():
            _context = Context.from_settings(load_settings())
            _pid = os.getpid()
            # Counters still buffered when a CLI process exits (tasks flush their own).
            atexit.register(_context.metrics.flush)
        return _context


def set_context(context: Context | None) -> None:
    """Install (or clear) the process's context, e.g. in an embedded worker."""
    global _context, _pid
    with _lock:
        _context = context
        _pid = os.getpid()
