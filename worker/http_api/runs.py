"""``/v1/runs``: enqueue, read, list and cancel runs (through :mod:`worker.api.runs`)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["runs"])
