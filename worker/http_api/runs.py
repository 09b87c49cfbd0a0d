"""``/v1/runs``: enqueue, read, list and cancel runs, through :mod:`worker.api.runs`.

A client sees, lists and cancels only the runs it created (another client's
run answers ``404``, as an unknown id does); an admin token sees them all.
Handlers check the token themselves (``BearerToken`` + ``authenticate``), in
the worker thread they run in anyway: under load each extra thread hop costs
as much as the Redis calls of a request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from worker.api.runs import (
    cancel_run,
    check_run,
    create_run,
    find_idempotent_run,
    get_run,
    page_runs,
)
from worker.clients import Client
from worker.errors import HatzError, RunNotFoundError
from worker.http_api.auth import BearerToken, authenticate
from worker.http_api.models import RunList, RunOut, RunRequest
from worker.http_api.problems import ProblemError, error_lines, problem_responses
from worker.http_api.services import Services, ServicesDep
from worker.http_api.uploads import REQUEST_PART, ReceivedFile, receive_multipart
from worker.store.ledger import Run, RunState

router = APIRouter(prefix="/v1", tags=["runs"])


#: ``Prefer: wait=N`` waits at most this long, s.
MAX_WAIT = 60
#: How often a waiting request looks at its run, s.
WAIT_INTERVAL = 0.1
MAX_JSON_BYTES = 256 * 1024

_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": RunRequest.model_json_schema()},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [REQUEST_PART],
                "properties": {
                    REQUEST_PART: {
                        "type": "string",
                        "description": "The run request as JSON (the application/json body)",
                    }
                },
                "additionalProperties": {
                    "type": "string",
                    "format": "binary",
                    "description": "One file per file_upload input, named by its variable",
                },
            }
        },
    },
}


def _owned(run: Run, client: Client) -> Run:
    """``run`` if ``client`` may see it; otherwise 404, exactly as for an unknown id."""
    if client.admin or run.get("client") == client.name:
        return run
    raise ProblemError(404, f"no run {run.run_id[:100]!r}")


def _find(services: Services, run_id: str, client: Client) -> Run:
    try:
        run = get_run(run_id, context=services.context)
    except RunNotFoundError:
        raise ProblemError(404, f"no run {run_id[:100]!r}") from None
    return _owned(run, client)


def _wait_preference(prefer: str | None) -> int | None:
    """N from ``Prefer: wait=N`` (capped at :data:`MAX_WAIT`); None if absent or unreadable."""
    for token in (prefer or "").split(","):
        name, _, value = token.strip().partition("=")
        if name.strip().lower() == "wait" and value.strip().isdigit():
            return min(int(value.strip()), MAX_WAIT)
    return None


def _parse_request(raw: bytes) -> RunRequest:
    try:
        return RunRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = error_lines(exc.errors())
        raise ProblemError(422, "the run request is not valid", errors=errors) from None


async def _read_json(request: Request) -> bytes | None:
    """The body, or None once it is over :data:`MAX_JSON_BYTES` (the rest is left unread)."""
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_JSON_BYTES:
            return None
    return bytes(body)


def _is_json(media: str) -> bool:
    return media in {"application/json", ""} or media.endswith("+json")


def _upload(services: Services, files: dict[str, ReceivedFile]) -> dict[str, str]:
    """Upload each received file to Hatz; ``{input name: file_uuid}``."""
    uuids: dict[str, str] = {}
    for name, received in sorted(files.items()):
        try:
            uuids[name] = services.context.client.upload_file(received.path).file_uuid
        except HatzError as exc:
            raise ProblemError(502, f"uploading file {name!r} to Hatz failed: {exc}") from None
    return uuids


def _fingerprint(
    body: RunRequest, files: dict[str, ReceivedFile], idempotency_key: str | None
) -> str | None:
    """The request (its fields and its files' contents), to compare idempotent retries;
    None without an ``Idempotency-Key`` (nothing to compare with)."""
    if not idempotency_key:
        return None
    canonical = json.dumps(
        {
            "request": body.model_dump(mode="json"),
            "files": {n: f.sha256 for n, f in sorted(files.items())},
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _enqueue(
    services: Services,
    client: Client,
    body: RunRequest,
    files: dict[str, ReceivedFile],
    idempotency_key: str | None,
    fingerprint: str | None,
) -> tuple[Run, bool]:
    """Upload the files (unless this is a retry of a request already made), record the run
    and return it with whether it is new: as written, or read for an idempotent retry.

    Files given as https:// URLs (``body.files``) are recorded as such: the worker
    fetches and uploads them, as for ``enqueue_run(files=...)``.
    """
    urls = body.files or {}
    twice = sorted(set(urls) & set(files))
    if twice:
        errors = [f"files: {name!r} is given both as a part and as a URL" for name in twice]
        raise ProblemError(422, "the run request is not valid", errors=errors)
    if files:  # every problem before anything is uploaded
        check_run(
            body.app_id,
            body.inputs,
            files={**urls, **{name: received.path for name, received in files.items()}},
            callback_url=body.callback_url,
            metadata=body.metadata,
            events=body.events,
            timeout=body.timeout,
            context=services.receiving_context(next(iter(files.values())).path.parent),
        )
    if files and idempotency_key and fingerprint:
        existing = find_idempotent_run(
            idempotency_key,
            request_fingerprint=fingerprint,
            client=client.name,
            context=services.context,
        )
        if existing is not None:
            # Its files were uploaded the first time.
            return get_run(existing, context=services.context), False
    file_uuids = _upload(services, files)
    created = create_run(
        body.app_id,
        {**body.inputs, **file_uuids},
        files=urls or None,
        callback_url=body.callback_url,
        metadata=body.metadata,
        is_draft_app=body.is_draft_app,
        idempotency_key=idempotency_key,
        events=body.events,
        timeout=body.timeout,
        client=client.name,
        request_fingerprint=fingerprint,
        context=services.context,
        celery=services.celery,
    )
    return created.record or get_run(created.run_id, context=services.context), created.created


async def _wait(services: Services, run_id: str, seconds: int) -> Run:
    """The run once terminal, or as it is after ``seconds``; holds no thread while waiting."""
    deadline = time.monotonic() + seconds
    while True:
        run = await run_in_threadpool(get_run, run_id, context=services.context)
        if run.state.is_terminal or time.monotonic() >= deadline:
            return run
        await asyncio.sleep(min(WAIT_INTERVAL, max(0.0, deadline - time.monotonic())))


def _json_run(
    services: Services,
    token: str | None,
    media: str,
    raw: bytes | None,
    idempotency_key: str | None,
) -> tuple[Run, bool]:
    """A JSON request, start to end in one worker thread: authenticate, check, record, read."""
    client = authenticate(services, token)  # 401 and 429 come before anything about the body
    if not _is_json(media):
        raise ProblemError(415, "send application/json, or multipart/form-data with files")
    if raw is None:
        raise ProblemError(413, f"the JSON body is over {MAX_JSON_BYTES // 1024} KiB")
    body = _parse_request(raw)
    fingerprint = _fingerprint(body, {}, idempotency_key)
    return _enqueue(services, client, body, {}, idempotency_key, fingerprint)


async def _multipart_run(
    request: Request,
    content_type: str,
    services: Services,
    token: str | None,
    idempotency_key: str | None,
) -> tuple[Run, bool]:
    """A request with files: authenticated before a byte of them is received."""
    client = await run_in_threadpool(authenticate, services, token)
    with tempfile.TemporaryDirectory(prefix="hatz-upload-") as directory:
        cap = services.context.settings.upload_max_bytes
        raw, files = await receive_multipart(content_type, request.stream(), Path(directory), cap)
        body = _parse_request(raw)
        return await run_in_threadpool(
            _enqueue,
            services,
            client,
            body,
            files,
            idempotency_key,
            _fingerprint(body, files, idempotency_key),
        )


@router.post(
    "/runs",
    status_code=201,
    response_model=RunOut,
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses={
        200: {"model": RunOut, "description": "An idempotent retry: the run made the first time"},
        **problem_responses(401, 409, 413, 415, 422, 429, 502, 503),
    },
)
async def create_run_endpoint(
    request: Request,
    token: BearerToken,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    prefer: Annotated[str | None, Header()] = None,
) -> Response:
    """Enqueue a run (JSON, or multipart/form-data with one file part per file input).

    ``Idempotency-Key``: the same key with the same request answers the same run
    (``200``); with another request, ``409``. ``Prefer: wait=N`` (N ≤ 60) answers
    when the run ends or after N seconds.
    """
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media == "multipart/form-data":
        run, created = await _multipart_run(request, content_type, services, token, idempotency_key)
    else:
        # The body (at most MAX_JSON_BYTES) is read first, so that authenticating,
        # checking and recording take one trip to a worker thread, not two.
        raw = await _read_json(request)
        run, created = await run_in_threadpool(
            _json_run, services, token, media, raw, idempotency_key
        )
    headers = {"Location": f"/v1/runs/{run.run_id}"}
    wait = _wait_preference(prefer)
    if wait is not None:
        headers["Preference-Applied"] = f"wait={wait}"
        if not run.state.is_terminal:
            run = await _wait(services, run.run_id, wait)
    # Serialized here, once: the response model above is for the schema.
    return Response(
        RunOut.of(run).model_dump_json(),
        status_code=201 if created else 200,
        headers=headers,
        media_type="application/json",
    )


@router.get("/runs/{run_id}", responses=problem_responses(401, 404, 422, 429, 503))
def get_run_endpoint(run_id: str, token: BearerToken, services: ServicesDep) -> RunOut:
    """One run: state, job, timestamps, step outputs, documents, error, metadata."""
    client = authenticate(services, token)
    return RunOut.of(_find(services, run_id, client))


@router.get("/runs", responses=problem_responses(401, 422, 429, 503))
def list_runs_endpoint(
    token: BearerToken,
    services: ServicesDep,
    state: RunState | None = None,
    app_id: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> RunList:
    """The client's runs (an admin: everyone's), newest first, a page at a time."""
    client = authenticate(services, token)
    try:
        page = page_runs(
            client=None if client.admin else client.name,
            state=state,
            app_id=app_id,
            limit=limit,
            cursor=cursor,
            context=services.context,
        )
    except ValueError as exc:
        raise ProblemError(422, "the query is not valid", errors=[f"cursor: {exc}"]) from None
    return RunList(runs=[RunOut.of(r) for r in page.runs], next_cursor=page.next_cursor)


@router.post("/runs/{run_id}/cancel", responses=problem_responses(401, 404, 409, 422, 429, 503))
def cancel_run_endpoint(run_id: str, token: BearerToken, services: ServicesDep) -> RunOut:
    """Stop following a run (``CANCELED``). A job already at Hatz keeps running there."""
    client = authenticate(services, token)
    _find(services, run_id, client)
    if not cancel_run(run_id, context=services.context, celery=services.celery):
        run = get_run(run_id, context=services.context)
        raise ProblemError(409, f"run {run_id!r} already ended ({run.state.value})")
    return RunOut.of(get_run(run_id, context=services.context))
