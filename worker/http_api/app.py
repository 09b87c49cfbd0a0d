"""The app factory: :func:`create_app` builds the FastAPI app ``hatz-worker serve`` runs.

Where to add more:

- another group of API endpoints: a module with an ``APIRouter``, added to
  :data:`ROUTERS` (every app includes them, in order);
- something that is not an API router (the web console's pages and static
  files, middleware): an *extension*, a function ``(app: FastAPI) -> None``
  passed to :func:`create_app` in ``extensions``; it runs after the routers
  and the problem handlers are installed and may read ``app.state.services``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from celery import Celery
from fastapi import APIRouter, FastAPI

from worker.context import Context
from worker.http_api import apps, batches, health, me, runs
from worker.http_api.problems import (
    Problem,
    install_problem_handlers,
    problem_validation_responses,
)
from worker.http_api.services import Services

#: Every API router, in the order they are included.
ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    me.router,
    runs.router,
    batches.router,
    apps.router,
)

#: Installs something more into the app (see the module docstring).
Extension = Callable[[FastAPI], None]

DESCRIPTION = (
    "Run Hatz AI workflows from any language over HTTP. Authenticate with "
    "`Authorization: Bearer <token>` (a token from `hatz-worker tokens create NAME`). "
    "Every error is an RFC 9457 `application/problem+json` object listing every problem."
)


def create_app(
    context: Context,
    *,
    celery: Celery | None = None,
    extensions: Sequence[Extension] = (),
) -> FastAPI:
    """The HTTP API over ``context`` (its Redis, ledger and Hatz client).

    ``celery`` publishes the runs' tasks (None: the default app, configured
    from the environment); ``extensions`` install more into the app.
    """
    app = FastAPI(
        title="hatz-worker",
        version="1",
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.services = Services.build(context, celery)
    install_problem_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    for extend in extensions:
        extend(app)
    _register_problem_schema(app)
    return app


def _register_problem_schema(app: FastAPI) -> None:
    """Make ``#/components/schemas/Problem`` exist even if no route names the model itself."""
    build = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            schema = build()
            problem_validation_responses(schema)
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).setdefault(
                "Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
