"""``/v1/batches``: start a batch, follow it, fetch its results, through :mod:`worker.api.batches`.

A batch is sent as JSON rows, or as a CSV/JSON Lines file in a multipart body
(streamed to a private temporary file, with the ``HATZ_UPLOAD_MAX_BYTES`` cap).
Either way the rows reach :func:`~worker.api.batches.enqueue_batch` as a file
of their own, the same as ``hatz-worker batch`` reads, so every row is checked
the same way. Results are written by :func:`~worker.api.batches.batch_results`
into a temporary file that is streamed back and then deleted.

A batch records the client that created it; another client's batch answers
``404``, as an unknown id does; an admin token sees them all.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.background import BackgroundTask

from worker.api.batches import batch_results, client_batch_key, enqueue_batch, get_batch
from worker.clients import Client
from worker.errors import BatchNotFoundError, HatzError, InvalidBatchError
from worker.http_api.auth import CurrentClient
from worker.http_api.problems import ProblemError, error_lines, problem_responses
from worker.http_api.services import Services, ServicesDep
from worker.http_api.uploads import REQUEST_PART, receive_multipart

router = APIRouter(prefix="/v1", tags=["batches"])

#: The multipart part holding the rows file.
FILE_PART = "file"
#: Largest JSON body (rows included) read into memory; larger batches go as a file.
MAX_JSON_BYTES = 16 * 1024 * 1024
CSV = "text/csv"
JSONL = "application/x-ndjson"
_JSONL_TYPES = frozenset({JSONL, "application/jsonl", "application/json-lines", "application/*"})
_CSV_TYPES = frozenset({CSV, "text/*"})

SERVER_PATHS_REFUSED = (
    "a path on the server's disk is never accepted over HTTP: send the rows as JSON "
    f"('rows') or as a CSV/JSON Lines file in a multipart part named {FILE_PART!r}"
)


class BatchOptions(BaseModel):
    """How to run a batch's rows (every field but the rows themselves)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # JSON types as the schema says

    app_id: str = Field(min_length=1, max_length=200, description="The workflow's id")
    inputs: dict[str, Any] | None = Field(
        default=None, description="Fixed inputs for every row (a row's own value wins)"
    )
    callback_url: str | None = Field(
        default=None, max_length=2048, description="Gets one batch.completed event"
    )
    run_callback_url: str | None = Field(
        default=None, max_length=2048, description="Gets every run's own callback"
    )
    max_in_flight: int | None = Field(
        default=None, ge=1, le=100_000, description="Runs submitted at once"
    )
    batch_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Rows that already completed under this key (yours) are not run again",
    )
    on_bad_rows: Literal["abort", "skip"] = Field(
        default="abort", description="abort: nothing runs if a row is bad; skip: leave them out"
    )
    metadata: dict[str, Any] | None = Field(
        default=None, description="Copied into every run's metadata (with batch_id and row)"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_server_paths(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("source" in data or "file_input" in data):
            raise ValueError(SERVER_PATHS_REFUSED)
        return data


class BatchCreate(BatchOptions):
    """``POST /v1/batches`` as JSON: the options and the rows (row N is ``rows[N-1]``)."""

    rows: list[dict[str, Any]] = Field(
        min_length=1, description="One object of inputs per run (variable_name -> value)"
    )


class BatchFileRequest(BatchOptions):
    """The ``request`` part of a multipart ``POST /v1/batches``."""

    format: Literal["csv", "jsonl"] | None = Field(
        default=None, description="The file's format; by default from its name (.csv/.jsonl)"
    )


class BadRowOut(BaseModel):
    """A row left out (``on_bad_rows: skip``) and why."""

    row: int
    problems: list[str]


class BatchOut(BaseModel):
    """A batch with live counts of its runs' states."""

    batch_id: str
    app_id: str
    state: Literal["creating", "running", "finished", "abandoned"]
    client: str | None = Field(default=None, description="The client that created it")
    inputs: dict[str, Any] = Field(default_factory=dict)
    callback_url: str | None = None
    run_callback_url: str | None = None
    callback_state: str | None = None
    max_in_flight: int
    on_bad_rows: str
    batch_key: str | None = None
    rows_in_source: int = 0
    total: int = Field(description="Rows that run")
    skipped: int = 0
    bad_rows: list[BadRowOut] = Field(default_factory=list)
    counts: dict[str, int] = Field(
        description="total, queued, running, completed, failed (and which bad ends)"
    )
    in_flight: int
    eta: float | None = Field(default=None, description="Seconds left at the pace so far")
    created_at: float
    updated_at: float | None = None
    finished_at: float | None = None

    @classmethod
    def of(cls, status: dict[str, Any]) -> BatchOut:
        """The answer for a batch's status (:meth:`BatchStatus.as_dict`)."""
        fields = {k: v for k, v in status.items() if k in cls.model_fields and v not in (None, "")}
        key = str(status.get("batch_key") or "")
        client = str(status.get("client") or "")
        prefix = client_batch_key(client, "")
        if client and key.startswith(prefix):
            key = key[len(prefix) :]  # the client's own key, not the scoped one
        fields["batch_key"] = key or None
        fields["bad_rows"] = fields.get("bad_rows") or []
        fields["inputs"] = fields.get("inputs") or {}
        return cls.model_validate(fields)


_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": BatchCreate.model_json_schema()},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [REQUEST_PART, FILE_PART],
                "properties": {
                    REQUEST_PART: {
                        **BatchFileRequest.model_json_schema(),
                        "description": "The batch options, as JSON",
                    },
                    FILE_PART: {
                        "type": "string",
                        "format": "binary",
                        "description": "The rows: a CSV with a header row, or JSON Lines",
                    },
                },
                "additionalProperties": False,
            },
            "encoding": {REQUEST_PART: {"contentType": "application/json"}},
        },
    },
}


def _options(model: type[BatchOptions], raw: bytes) -> Any:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = error_lines(exc.errors())
        raise ProblemError(422, "the batch request is not valid", errors=errors) from None


async def _read_json(request: Request, cap: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > cap:
            raise ProblemError(413, f"the JSON body is over {cap} bytes; send the rows as a file")
    return bytes(body)


def _rows_format(options: BatchFileRequest, filename: str) -> str:
    if options.format is not None:
        return options.format
    suffix = Path(filename).suffix.lower()
    if suffix in (".csv", ".jsonl", ".ndjson"):
        return "csv" if suffix == ".csv" else "jsonl"
    raise ProblemError(
        422,
        "the batch request is not valid",
        errors=[f"format: say 'csv' or 'jsonl' (the file {filename!r} is neither by its name)"],
    )


async def _received(request: Request, services: Services, directory: Path) -> tuple[Any, Path]:
    """The batch options and the rows, written to a ``.csv``/``.jsonl`` file in ``directory``."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    cap = services.context.settings.upload_max_bytes
    if media == "multipart/form-data":
        raw, files = await receive_multipart(content_type, request.stream(), directory, cap)
        options = _options(BatchFileRequest, raw)
        extra = sorted(set(files) - {FILE_PART})
        if extra or FILE_PART not in files:
            raise ProblemError(
                422,
                f"send the rows as one file part named {FILE_PART!r}"
                + (f" (unexpected: {', '.join(extra)})" if extra else ""),
            )
        received = files[FILE_PART]
        source = directory / f"rows.{_rows_format(options, received.filename)}"
        received.path.rename(source)
        return options, source
    if media in {"application/json", ""} or media.endswith("+json"):
        body = _options(BatchCreate, await _read_json(request, min(cap, MAX_JSON_BYTES)))
        source = directory / "rows.jsonl"
        with source.open("w", encoding="utf-8") as handle:
            for row in body.rows:
                handle.write(json.dumps(row) + "\n")
        return body, source
    raise ProblemError(415, "send application/json, or multipart/form-data with a rows file")


def _start(services: Services, client: Client, options: BatchOptions, source: Path) -> str:
    try:
        return enqueue_batch(
            options.app_id,
            source,
            inputs=options.inputs,
            callback_url=options.callback_url,
            run_callback_url=options.run_callback_url,
            max_in_flight=options.max_in_flight,
            batch_key=options.batch_key,
            on_bad_rows=options.on_bad_rows,
            metadata=options.metadata,
            client=client.name,
            context=services.receiving_context(source.parent),
            celery=services.celery,
        )
    except InvalidBatchError as exc:
        # Problems name the rows; the server's temporary path means nothing to the caller.
        problems = [p.replace(str(source), "the rows") for p in exc.problems]
        raise ProblemError(422, "the batch request is not valid", errors=problems) from None
    except HatzError as exc:
        raise ProblemError(502, f"asking Hatz about app {options.app_id!r} failed: {exc}") from None


def _status(services: Services, batch_id: str, client: Client) -> dict[str, Any]:
    """The batch's status if ``client`` may see it; otherwise 404, as for an unknown id."""
    try:
        status = get_batch(batch_id, context=services.context).as_dict()
    except BatchNotFoundError:
        raise ProblemError(404, f"no batch {batch_id!r}") from None
    if client.admin or status.get("client") == client.name:
        return status
    raise ProblemError(404, f"no batch {batch_id!r}")


@router.post(
    "/batches",
    status_code=201,
    response_model=BatchOut,
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses=problem_responses(401, 413, 415, 422, 429, 502),
)
async def create_batch_endpoint(
    request: Request, response: Response, client: CurrentClient, services: ServicesDep
) -> BatchOut:
    """Check every row, then start the batch (JSON rows, or multipart with a rows file).

    With ``on_bad_rows: abort`` (the default) a bad row answers ``422`` listing
    every problem by row number, and nothing runs.
    """
    directory = Path(tempfile.mkdtemp(prefix="hatz-batch-"))
    try:
        options, source = await _received(request, services, directory)
        batch_id = await run_in_threadpool(_start, services, client, options, source)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    response.headers["Location"] = f"/v1/batches/{batch_id}"
    return BatchOut.of(await run_in_threadpool(_status, services, batch_id, client))


@router.get("/batches/{batch_id}", responses=problem_responses(401, 404, 429))
def get_batch_endpoint(batch_id: str, client: CurrentClient, services: ServicesDep) -> BatchOut:
    """A batch with live counts of its runs' states."""
    return BatchOut.of(_status(services, batch_id, client))


def _results_type(accept: str | None) -> str:
    """``text/csv`` or JSON Lines, the first the ``Accept`` header takes (JSON Lines if any)."""
    for item in (accept or "*/*").split(","):
        media = item.split(";")[0].strip().lower()
        if media in _CSV_TYPES:
            return CSV
        if media in _JSONL_TYPES or media == "*/*":
            return JSONL
    raise ProblemError(406, f"results come as {CSV} or {JSONL} (Accept)")


_RESULTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One line per row: row, run_id, status, error, job_id, inputs, "
        "outputs, documents (CSV cells holding JSON for the structured ones)",
        "content": {
            CSV: {"schema": {"type": "string"}},
            JSONL: {"schema": {"type": "string"}},
        },
    },
    **problem_responses(401, 404, 406, 422, 429),
}


@router.get(
    "/batches/{batch_id}/results",
    response_class=Response,
    responses=_RESULTS_RESPONSES,
)
async def batch_results_endpoint(
    batch_id: str,
    client: CurrentClient,
    services: ServicesDep,
    accept: Annotated[str | None, Header(max_length=1000)] = None,
) -> Response:
    """One line per row (status, outputs, document URLs) as CSV or JSON Lines, by ``Accept``
    (``text/csv`` or ``application/x-ndjson``; JSON Lines by default)."""
    media = _results_type(accept)
    await run_in_threadpool(_status, services, batch_id, client)
    directory = Path(tempfile.mkdtemp(prefix="hatz-results-"))
    target = directory / ("results.csv" if media == CSV else "results.jsonl")
    try:
        await run_in_threadpool(batch_results, batch_id, target, context=services.context)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return FileResponse(
        target,
        media_type=media,
        filename=f"batch-{batch_id}{target.suffix}",
        background=BackgroundTask(shutil.rmtree, directory, ignore_errors=True),
    )
