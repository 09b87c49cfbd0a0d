"""The process-wide bundle of settings, Redis, Hatz client and ledger.

Tasks get it from :func:`get_context`; tests build their own
:class:`Context` from explicit settings instead of patching globals.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis import Redis

from config import Settings, load_settings
from worker.api_budget import ApiBudget
from worker.hatz_client import HatzClient
from worker.keys import Keys
from worker.ledger import Ledger


def redis_from_url(url: str) -> Redis:
    """A Redis client with timeouts, keepalive and health checks always on."""
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=10,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=25,
        retry_on_timeout=True,
    )


@dataclass
class Context:
    """Everything a pipeline function needs; one per process."""

    settings: Settings
    redis: Redis
    client: HatzClient
    ledger: Ledger
    clock: Callable[[], float] = field(default=time.time)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        redis_client: Redis | None = None,
        client: HatzClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Context:
        """Build a context; pass ``redis_client``/``client`` to inject fakes."""
        r = redis_client if redis_client is not None else redis_from_url(settings.redis_url)
        ledger = Ledger(
            r,
            keys=Keys(settings.key_prefix),
            retention=settings.run_retention,
            idempotency_ttl=settings.idempotency_ttl,
            clock=clock,
        )
        if client is None:
            budget = None
            if settings.api_max_rps > 0:
                budget = ApiBudget(r, ledger.keys.api_budget, settings.api_max_rps)
            client = HatzClient.from_settings(settings, before_request=budget)
        return cls(
            settings=settings,
            redis=r,
            client=client,
            ledger=ledger,
            clock=clock,
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
        return _context


def set_context(context: Context | None) -> None:
    """Install (or clear) the process's context, e.g. in an embedded worker."""
    global _context, _pid
    with _lock:
        _context = context
        _pid = os.getpid()
