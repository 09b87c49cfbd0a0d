"""The ``/v1`` endpoints, written from the Hatz API documentation.

Each handler gets a :class:`Call` after routing, fault injection and the API
key check (see :mod:`.dispatch`), validates like FastAPI, and returns a
:class:`~.messages.Response` that also carries what the call log records.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .body import PayloadTooLarge
from .documents import document_for
from .faults import FaultConfig
from .jobs import fill_template, input_label
from .messages import Request, Response, detail_response, json_response
from .models import FakeApp
from .multipart import MultipartError, content_type_boundary, parse_multipart
from .presign import FILES_PATH, MAX_EXPIRES_IN, Grant, peek_job_id, presign, s3_error, verify
from .routing import Route, Router
from .state import FakeState, UploadedFile
from .validation import Fields, error_item, missing, query_int, read_json, unprocessable

#: Room for form fields and part headers around an upload's file part.
_UPLOAD_OVERHEAD = 1024 * 1024


@dataclass
class Call:
    """One routed API request and the fault configuration that applies to it."""

    state: FakeState
    request: Request
    endpoint: str
    faults: FaultConfig = field(default_factory=FaultConfig)


@dataclass(frozen=True)
class Endpoint:
    """How to serve one route."""

    handler: Callable[[Call], Response]
    #: Finds the app a request is about, so that app's own faults can apply.
    locate_app: Callable[[Call], str | None] = lambda call: None
    #: Downloads are authorised by their signature, not the API key.
    needs_key: bool = True


# --- files ----------------------------------------------------------------------


def upload(call: Call) -> Response:
    """``POST /v1/files/upload``: store a multipart ``file`` and return its ``file_uuid``."""
    state, request = call.state, call.request
    limit = state.max_upload_bytes
    declared = request.body.declared_length
    if declared is not None and declared > limit + _UPLOAD_OVERHEAD:
        return _too_large(limit)
    media, boundary = content_type_boundary(request.header("Content-Type"))
    if media != "multipart/form-data":
        # FastAPI finds no form fields in a non-form body, so `file` is missing.
        return unprocessable([missing(["body", "file"], None)])
    if boundary is None:
        return detail_response(400, "There was an error parsing the body")
    try:
        parts = parse_multipart(
            request.body.read,
            boundary,
            max_file_bytes=limit,
            max_total_bytes=limit + _UPLOAD_OVERHEAD,
        )
    except MultipartError:
        return detail_response(400, "There was an error parsing the body")
    except PayloadTooLarge:
        return _too_large(limit)
    fields = {part.name: part for part in parts}
    file_part = fields.get("file")
    if file_part is None:
        return unprocessable([missing(["body", "file"], None)])
    if not file_part.is_file:
        text = file_part.text()
        msg = "Value error, Expected UploadFile, received: <class 'str'>"
        return unprocessable(
            [error_item("value_error", ["body", "file"], msg, text, {"error": {}})]
        )
    scope_type, scope_id = fields.get("scope_type"), fields.get("scope_id")
    stored = UploadedFile(
        file_uuid=str(uuid.uuid4()),
        filename=file_part.filename or "",
        size=file_part.size,
        sha256=file_part.sha256,
        content_type=file_part.content_type,
        scope_type=None if scope_type is None else scope_type.text(),
        scope_id=None if scope_id is None else scope_id.text(),
        uploaded_at=state.clock(),
    )
    state.add_file(stored)
    return json_response(
        200,
        {
            "file_uuid": stored.file_uuid,
            "filename": stored.filename,
            "size": stored.size,
            "scope_type": stored.scope_type,
            "scope_id": stored.scope_id,
        },
    )


def _too_large(limit: int) -> Response:
    # The server drains a modest unread remainder (keeping the connection) or closes it.
    return detail_response(413, f"File too large: the limit is {limit} bytes")


# --- workflows --------------------------------------------------------------------


def run(call: Call) -> Response:
    """``POST /v1/workflows/run``: validate, then create a job (``Workflow Job Invoked``)."""
    state = call.state
    body = read_json(call.request)
    if body.errors:
        return unprocessable(body.errors)
    fields = Fields(body.value)
    app_id = fields.string("app_id")
    inputs = fields.mapping("inputs")
    fields.boolean("is_draft_app", False)
    if fields.errors or app_id is None or inputs is None:
        return unprocessable(fields.errors)
    app = state.get_app(app_id)
    if app is None:
        return _logged(detail_response(404, "App not found"), app_id=app_id, inputs=inputs)
    if app.kind != "workflow":
        detail = (
            f"App {app_id} is an App Builder app, not a workflow: use POST /v1/app/{{id}}/query"
        )
        return _logged(detail_response(400, detail), app_id=app_id, inputs=inputs)
    problem = _input_problem(state, app, inputs)
    if problem is not None:
        return _logged(detail_response(400, problem), app_id=app_id, inputs=inputs)
    job = state.create_job(app, inputs, call.faults)
    if state.injector.chance(call.faults.fault_after_create_rate):
        # The job exists, but the caller only sees a gateway error.
        response = state.injector.error_response()
        response.status = 502
        response.fault = "error_after_create"
    else:
        response = json_response(200, {"status": "Workflow Job Invoked", "job_id": job.job_id})
    return _logged(response, app_id=app_id, inputs=inputs, job_id=job.job_id)


def _input_problem(state: FakeState, app: FakeApp, inputs: dict[str, Any]) -> str | None:
    for spec in app.user_inputs:
        value = inputs.get(spec.variable_name)
        absent = value is None or value == ""
        if spec.required and absent:
            return f"Missing required input: {spec.variable_name!r}"
        if (
            spec.is_file
            and not absent
            and (not isinstance(value, str) or state.get_file(value) is None)
        ):
            return (
                f"Input {spec.variable_name!r} is a file_upload input: its value must be the "
                f"file_uuid of a file uploaded with POST /v1/files/upload, got {value!r}"
            )
    return None


def _logged(
    response: Response,
    *,
    app_id: str | None = None,
    inputs: dict[str, Any] | None = None,
    job_id: str | None = None,
) -> Response:
    response.app_id = app_id
    response.inputs = inputs
    response.job_id = job_id
    return response


def status(call: Call) -> Response:
    """``GET /v1/workflows/{job_id}``: the job as it stands now."""
    state = call.state
    job_id = call.request.params["job_id"]
    job = state.get_job(job_id)
    if job is None:
        return _logged(detail_response(404, "Job not found"), job_id=job_id)
    state.recorder.job_polled(job_id)
    if state.is_lost(job_id):
        return _logged(detail_response(404, "Job not found"), job_id=job_id, app_id=job.app_id)
    rendered = job.render(state.clock(), tenant_id=state.tenant_id, user_id=state.user_id)
    return _logged(json_response(200, rendered), job_id=job_id, app_id=job.app_id)


def presigned_url(call: Call) -> Response:
    """``POST /v1/workflows/presigned-url``: a temporary download URL for a document step."""
    state = call.state
    body = read_json(call.request)
    if body.errors:
        return unprocessable(body.errors)
    fields = Fields(body.value)
    job_id = fields.string("job_id")
    step_id = fields.string("step_id")
    expires_in = fields.integer("expires_in", 3600, ge=1, le=MAX_EXPIRES_IN)
    if fields.errors or job_id is None or step_id is None or expires_in is None:
        return unprocessable(fields.errors)
    job = state.get_job(job_id)
    if job is None or state.is_lost(job_id):
        return _logged(detail_response(404, "Job not found"), job_id=job_id)
    plan = job.plan_for(step_id)
    if plan is None:
        return _logged(detail_response(404, "Step not found"), job_id=job_id, app_id=job.app_id)
    now = state.clock()
    if not plan.step.is_document or plan.status_at(now) != "complete":
        response = detail_response(400, "Step output is not a document")
        return _logged(response, job_id=job_id, app_id=job.app_id)
    url = presign(state.root_url, state.signing_key, Grant(job_id, step_id, now, expires_in))
    response = json_response(200, {"url": url, "expires_in": expires_in})
    return _logged(response, job_id=job_id, app_id=job.app_id)


def download(call: Call) -> Response:
    """``GET /_fake/files/{token}``: the document behind a presigned URL (no API key)."""
    state, request = call.state, call.request
    granted = verify(
        state.signing_key,
        request.params["token"],
        request.query_value("X-Amz-Expires"),
        request.query_value("X-Amz-Signature"),
        state.clock(),
    )
    if isinstance(granted, Response):
        return granted
    job = state.get_job(granted.job_id)
    plan = None if job is None else job.plan_for(granted.step_id)
    if job is None or plan is None:
        response = s3_error(404, "NoSuchKey", "The specified key does not exist.")
        return _logged(response, job_id=granted.job_id)
    content, content_type, filename = document_for(job, plan)
    response = Response(
        200,
        content,
        content_type,
        {"Content-Disposition": f'attachment; filename="{filename}"', "ETag": f'"{job.job_id}"'},
    )
    return _logged(response, job_id=job.job_id, app_id=job.app_id)


# --- App Builder -------------------------------------------------------------------------


def app_list(call: Call) -> Response:
    """``GET /v1/app/list``: apps and workflows, name-filtered, then paginated."""
    request = call.request
    errors: list[dict[str, Any]] = []
    limit = query_int(request, "limit", 100, errors, ge=1, le=1000)
    offset = query_int(request, "offset", 0, errors, ge=0)
    if errors or limit is None or offset is None:
        return unprocessable(errors)
    apps = call.state.list_apps(request.query_value("name"))
    return json_response(200, {"data": [app.to_item() for app in apps[offset : offset + limit]]})


def app_get(call: Call) -> Response:
    """``GET /v1/app/{app_id}``: one app or workflow."""
    app = call.state.get_app(call.request.params["app_id"])
    if app is None:
        return detail_response(404, "App not found")
    return json_response(200, app.to_item())


def app_query(call: Call) -> Response:
    """``POST /v1/app/{app_id}/query``: answer an App Builder app synchronously.

    The documentation does not show this response; the fake answers
    ``{"app_id", "model", "response"}`` where ``response`` is the app's prompt
    with the inputs filled in. Streaming is not supported (400).
    """
    state = call.state
    app_id = call.request.params["app_id"]
    body = read_json(call.request)
    if body.errors:
        return unprocessable(body.errors)
    fields = Fields(body.value)
    inputs = fields.mapping("inputs")
    stream = fields.boolean("stream", False)
    if fields.errors or inputs is None:
        return unprocessable(fields.errors)
    app = state.get_app(app_id)
    if app is None:
        return detail_response(404, "App not found")
    if stream:
        return detail_response(400, "Streaming is not supported by this server")
    if app.kind != "app":
        detail = f"App {app_id} is a workflow: run it with POST /v1/workflows/run"
        return detail_response(400, detail)
    problem = _input_problem(state, app, inputs)
    if problem is not None:
        return detail_response(400, problem)
    labels = {name: input_label(value) for name, value in inputs.items()}
    if app.prompt:
        text = f"Response to: {fill_template(app.prompt, labels)}"
    else:
        described = ", ".join(f"{k}={v}" for k, v in labels.items()) or "no inputs"
        text = f"{app.name} response for {described}"
    response = json_response(200, {"app_id": app.id, "model": app.default_model, "response": text})
    return _logged(response, app_id=app.id, inputs=inputs)


# --- which app a request is about (for per-app faults) -----------------------------------


def _app_of_body(call: Call) -> str | None:
    body = read_json(call.request)
    value = body.value.get("app_id")
    return value if isinstance(value, str) else None


def _app_of_job_param(call: Call) -> str | None:
    job = call.state.get_job(call.request.params["job_id"])
    return None if job is None else job.app_id


def _app_of_body_job(call: Call) -> str | None:
    job_id = read_json(call.request).value.get("job_id")
    job = call.state.get_job(job_id) if isinstance(job_id, str) else None
    return None if job is None else job.app_id


def _app_of_path(call: Call) -> str | None:
    return call.request.params["app_id"]


def _app_of_token(call: Call) -> str | None:
    job_id = peek_job_id(call.request.params["token"])
    job = None if job_id is None else call.state.get_job(job_id)
    return None if job is None else job.app_id


API_ROUTER: Router[Endpoint] = Router(
    [
        Route("POST", "/v1/files/upload", "upload", Endpoint(upload)),
        Route("POST", "/v1/workflows/run", "run", Endpoint(run, _app_of_body)),
        Route(
            "POST",
            "/v1/workflows/presigned-url",
            "presign",
            Endpoint(presigned_url, _app_of_body_job),
        ),
        Route("GET", "/v1/workflows/{job_id}", "status", Endpoint(status, _app_of_job_param)),
        Route("GET", "/v1/app/list", "app_list", Endpoint(app_list)),
        Route("GET", "/v1/app/{app_id}", "app_get", Endpoint(app_get, _app_of_path)),
        Route("POST", "/v1/app/{app_id}/query", "app_query", Endpoint(app_query, _app_of_path)),
        Route(
            "GET",
            FILES_PATH + "{token}",
            "download",
            Endpoint(download, _app_of_token, needs_key=False),
        ),
    ]
)
