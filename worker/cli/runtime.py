"""What every ``hatz-worker`` command is handed: settings, ledger context, Hatz client and
Celery app, each built on first use, and the exit codes the commands return.

Exit codes: 0 success; 1 the operation failed (Hatz API error, run ended
badly, already terminal); 2 bad usage or configuration (nothing enqueued);
3 ``--timeout`` expired while waiting; 130 interrupted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from celery import Celery

from config import Settings, load_settings
from worker.context import Context
from worker.hatz.client import HatzClient

PROG = "hatz-worker"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WAIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130


class Runtime:
    """What commands need, built lazily (so ``--help`` and ``demo`` never read settings).

    Tests inject ``settings``, ``context`` and/or ``celery``; otherwise settings
    come from the environment via :func:`config.load_settings`.
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        context: Context | None = None,
        celery: Celery | None = None,
    ) -> None:
        self._settings = settings or (context.settings if context is not None else None)
        self._context = context
        self._celery = celery
        self._client: HatzClient | None = context.client if context is not None else None
        self._owned: list[Callable[[], object]] = []

    @property
    def settings(self) -> Settings:
        """The settings; raises :class:`config.ConfigError` when the environment is invalid."""
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def context(self) -> Context:
        """The ledger/Redis/client bundle."""
        if self._context is None:
            self._context = Context.from_settings(self.settings, client=self._client)
            self._client = self._context.client
            self._owned += [self._context.client.close, self._context.redis.close]
        return self._context

    @property
    def client(self) -> HatzClient:
        """A Hatz API client (no Redis needed)."""
        if self._client is None:
            self._client = HatzClient.from_settings(self.settings)
            self._owned.append(self._client.close)
        return self._client

    @property
    def celery(self) -> Celery:
        """The Celery app runs are published with."""
        if self._celery is None:
            from worker.taskqueue.app import create_app

            self._celery = create_app(self.settings)
            self._owned.append(self._celery.close)
        return self._celery

    def close(self) -> None:
        """Close whatever this runtime opened (never injected objects)."""
        for close in reversed(self._owned):
            with contextlib.suppress(Exception):  # best effort at exit
                close()
        self._owned.clear()
