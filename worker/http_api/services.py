"""What every request handler is handed: the context, the Celery app, the client store.

One :class:`Services` per app, built by :func:`worker.http_api.app.create_app`
and kept in ``app.state``; handlers take it with ``Depends(get_services)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request

from worker.clients import ClientRateLimit, ClientStore
from worker.context import Context


@dataclass
class Services:
    """The API process's shared objects (all safe to use from several threads)."""

    context: Context
    celery: Celery | None
    clients: ClientStore
    rate_limit: ClientRateLimit

    @classmethod
    def build(cls, context: Context, celery: Celery | None = None) -> Services:
        """Services over one context; ``celery`` None publishes through the default app."""
        settings = context.settings
        return cls(
            context=context,
            celery=celery,
            clients=ClientStore(context.redis, context.keys, clock=context.clock),
            rate_limit=ClientRateLimit(
                context.redis,
                context.keys,
                rate=settings.client_rate_limit,
                burst=settings.client_rate_burst,
            ),
        )

    def receiving_context(self, folder: Path) -> Context:
        """The context for checking and reading what one request sent, saved in ``folder``.

        ``folder`` (the request's own temporary folder) is added to the allowed file
        roots (``HATZ_FILE_ROOTS``): the files received over HTTP pass the same check
        as any local file, and never reach a worker as paths.
        """
        settings = self.context.settings
        roots = [*settings.file_roots, str(folder)]
        return dataclasses.replace(
            self.context, settings=settings.model_copy(update={"file_roots": roots})
        )


def get_services(request: Request) -> Services:
    """The app's :class:`Services`."""
    services: Services = request.app.state.services
    return services


async def services_dependency(request: Request) -> Services:
    """:func:`get_services` as a FastAPI dependency: async, so it costs no worker thread."""
    return get_services(request)


#: Handler parameter type: ``services: ServicesDep``.
ServicesDep = Annotated[Services, Depends(services_dependency)]
