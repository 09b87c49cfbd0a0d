"""Bearer-token authentication and the per-client rate limit, as FastAPI dependencies.

``Depends(current_client)`` gives a handler the calling :class:`~worker.clients.Client`:
a missing, unknown or revoked token answers ``401`` with ``WWW-Authenticate:
Bearer`` (RFC 6750), a client over its rate ``429`` with ``Retry-After``.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from worker.clients import Client
from worker.http_api.problems import ProblemError
from worker.http_api.services import Services, ServicesDep

REALM = "hatz-worker"

bearer = HTTPBearer(
    auto_error=False,
    description="A client token from `hatz-worker tokens create NAME`.",
)


def authenticate(services: Services, token: str | None) -> Client:
    """The client ``token`` belongs to, after taking one request from its rate limit.

    Raises :class:`ProblemError` 401 (no or bad token) or 429 (over the rate).
    Usable outside a request too (e.g. a login form).
    """
    if not token:
        raise ProblemError(
            401,
            "a bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'},
        )
    client, wait = services.rate_limit.authenticate(token)
    if client is None:
        raise ProblemError(
            401,
            "the bearer token is not valid (unknown or revoked)",
            headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'},
        )
    if wait > 0:
        raise ProblemError(
            429,
            f"client {client.name!r} is over its request rate; retry later",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return client


def current_client(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Client:
    """The calling client (a FastAPI dependency; it runs in a worker thread of its own)."""
    return authenticate(services, credentials.credentials if credentials else None)


async def bearer_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> str | None:
    """The bearer token sent, not yet checked (a FastAPI dependency that costs no thread).

    For a handler that calls :func:`authenticate` itself, first thing, in the
    worker thread it runs in anyway: one thread hop per request instead of two.
    """
    return credentials.credentials if credentials else None


def admin_client(client: Annotated[Client, Depends(current_client)]) -> Client:
    """The calling client, which must hold an admin token (403 otherwise)."""
    if not client.admin:
        raise ProblemError(403, "this needs an admin token")
    return client


#: Handler parameter types: ``client: CurrentClient``, or ``token: BearerToken`` to
#: :func:`authenticate` in the handler.
CurrentClient = Annotated[Client, Depends(current_client)]
AdminClient = Annotated[Client, Depends(admin_client)]
BearerToken = Annotated[str | None, Depends(bearer_token)]
