"""``GET /v1/me``: which client a token belongs to (a cheap way to check a token)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from worker.http_api.auth import CurrentClient
from worker.http_api.problems import problem_responses

router = APIRouter(prefix="/v1", tags=["clients"])


class Me(BaseModel):
    """The calling client."""

    name: str
    admin: bool


@router.get("/me", responses=problem_responses(401, 429, 503))
async def me(client: CurrentClient) -> Me:
    """The client the bearer token belongs to."""
    return Me(name=client.name, admin=client.admin)
