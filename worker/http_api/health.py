"""``GET /healthz``: is this API process up and can it reach Redis (no token needed)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from worker.http_api.problems import problem_responses
from worker.http_api.services import ServicesDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    """The health answer."""

    status: Literal["ok"] = "ok"


@router.get("/healthz", responses=problem_responses(503))
def healthz(services: ServicesDep) -> Health:
    """``200 {"status": "ok"}`` when Redis answers; ``503`` problem when it does not."""
    services.context.redis.ping()
    return Health()
