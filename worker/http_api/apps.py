"""``/v1/apps``: the Hatz apps and workflows, through :mod:`worker.api.apps` (cached)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from worker.api.apps import get_app, list_apps
from worker.errors import HatzError, HatzNotFoundError
from worker.hatz.types import App
from worker.http_api.auth import CurrentClient
from worker.http_api.problems import ProblemError, problem_responses
from worker.http_api.services import ServicesDep

router = APIRouter(prefix="/v1", tags=["apps"])


class AppInput(BaseModel):
    """One of an app's inputs (``file_upload`` ones take a file)."""

    variable_name: str
    variable_type: str = Field(description="e.g. short_answer, paragraph, file_upload")
    required: bool
    display_name: str
    description: str
    position: int


class AppOut(BaseModel):
    """An App Builder app or a workflow, as Hatz describes it."""

    id: str
    name: str
    description: str
    is_workflow: bool = Field(description="Workflows have steps; plain apps have prompts")
    user_inputs: list[AppInput]
    steps: list[dict[str, Any]] | None = None

    @classmethod
    def of(cls, app: App) -> AppOut:
        """The answer for one app."""
        return cls(
            id=app.id,
            name=app.name,
            description=app.description,
            is_workflow=app.is_workflow,
            user_inputs=[
                AppInput.model_validate(ui.model_dump(include=set(AppInput.model_fields)))
                for ui in app.user_inputs
            ],
            steps=app.steps,
        )


class AppList(BaseModel):
    """``GET /v1/apps``: one page of apps."""

    apps: list[AppOut]
    total: int = Field(description="How many apps match in all")
    next_offset: int | None = Field(
        default=None, description="Pass as `offset` for the next page; null on the last page"
    )


def _hatz_unavailable(exc: HatzError) -> ProblemError:
    return ProblemError(502, f"asking Hatz for its apps failed: {exc}")


@router.get("/apps", responses=problem_responses(401, 422, 429, 502))
async def list_apps_endpoint(
    client: CurrentClient,
    services: ServicesDep,
    name: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AppList:
    """Every app and workflow of the Hatz account (with ``name``: whose name contains it,
    case-insensitive), a page at a time. Cached for ``HATZ_APP_CACHE_TTL`` seconds."""
    try:
        apps = await run_in_threadpool(list_apps, name=name, context=services.context)
    except HatzError as exc:
        raise _hatz_unavailable(exc) from None
    page = apps[offset : offset + limit]
    more = offset + len(page) < len(apps)
    return AppList(
        apps=[AppOut.of(a) for a in page],
        total=len(apps),
        next_offset=offset + len(page) if more else None,
    )


@router.get("/apps/{app_id}", responses=problem_responses(401, 404, 429, 502))
async def get_app_endpoint(app_id: str, client: CurrentClient, services: ServicesDep) -> AppOut:
    """One app or workflow with its inputs. Cached for ``HATZ_APP_CACHE_TTL`` seconds."""
    try:
        app = await run_in_threadpool(get_app, app_id, context=services.context)
    except HatzNotFoundError:
        raise ProblemError(404, f"no app {app_id!r}") from None
    except HatzError as exc:
        raise _hatz_unavailable(exc) from None
    return AppOut.of(app)
