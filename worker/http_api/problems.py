"""RFC 9457 problem details: every error the API answers is ``application/problem+json``.

One handler per kind of failure turns it into ``{type, title, status, detail,
errors}``; ``errors`` lists every problem found (the same messages
:class:`~worker.errors.InvalidRunError` gives the Python API and the CLI).
No input may produce a 500: anything unexpected is logged and answered as a
plain ``500`` problem without a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from worker.errors import (
    HatzError,
    IdempotencyConflictError,
    InvalidRunError,
    RunNotFoundError,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    type: str = Field(default="about:blank", description="A URI reference naming the problem")
    title: str = Field(description="The HTTP status phrase")
    status: int = Field(description="The HTTP status code")
    detail: str = Field(default="", description="What went wrong, for a person")
    errors: list[str] = Field(default_factory=list, description="Every problem found")


class ProblemError(Exception):
    """Raised by a handler to answer with a problem (status, detail, every error)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors)
        self.headers = dict(headers or {})


def problem_response(
    status: int,
    detail: str = "",
    *,
    errors: Iterable[str] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A ``application/problem+json`` answer."""
    body = Problem(
        title=HTTPStatus(status).phrase, status=status, detail=detail, errors=list(errors)
    )
    return JSONResponse(
        body.model_dump(), status_code=status, headers=dict(headers or {}), media_type=PROBLEM_JSON
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting the problems a route may answer."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


def problem_validation_responses(schema: dict[str, Any]) -> None:
    """Make every ``422`` FastAPI documents by itself (``HTTPValidationError`` as
    ``application/json``) say what is really answered: a problem; and document on
    every operation the ``503`` any of them answers while Redis is unreachable."""
    unavailable = problem_responses(503)[503]
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.setdefault("503", unavailable)
            answer = responses.get("422")
            if answer is None or PROBLEM_JSON in answer.get("content", {}):
                continue
            answer["content"] = problem_responses(422)[422]["content"]
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def _location(loc: Iterable[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:] or parts
    return ".".join(parts)


def error_lines(errors: Iterable[Mapping[str, Any]]) -> list[str]:
    """pydantic's validation errors as ``where: what`` lines (``body``: the whole body)."""
    return [f"{_location(e.get('loc', ())) or 'body'}: {e.get('msg', 'invalid')}" for e in errors]


async def _problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(exc.status, exc.detail, errors=exc.errors, headers=exc.headers)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return problem_response(exc.status_code, str(exc.detail), headers=headers)


_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"})


def allowed_methods(request: Request) -> list[str]:
    """Every method the API's schema documents at the request's path (Starlette's own
    ``405`` names only the first matching route's, though several routes share a path)."""
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(path):
            methods |= {m.upper() for m in operations if m.upper() in _METHODS}
    return sorted(methods)


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problem_response(422, "the request is not valid", errors=error_lines(exc.errors()))


async def _invalid_run(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidRunError)
    return problem_response(422, "the run request is not valid", errors=exc.problems)


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    return problem_response(409, str(exc))


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return problem_response(404, str(exc))


async def _hatz_failed(_: Request, exc: Exception) -> JSONResponse:
    log.warning("Hatz API call failed: %s", exc)
    return problem_response(502, f"the Hatz API call failed: {exc}")


async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("Redis unavailable: %s", exc)
    return problem_response(503, "the run store is unavailable", headers={"Retry-After": "5"})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "internal error; the server log has the details")


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` as a problem."""
    app.add_exception_handler(ProblemError, _problem)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(InvalidRunError, _invalid_run)
    app.add_exception_handler(IdempotencyConflictError, _conflict)
    app.add_exception_handler(RunNotFoundError, _not_found)
    app.add_exception_handler(HatzError, _hatz_failed)
    app.add_exception_handler(redis.RedisError, _redis_down)
    app.add_exception_handler(Exception, _unexpected)
