"""From a parsed request to a response: routing, faults, API key, overage, handler.

The order is deliberate. Injected latency, errors, hangs and rate limits act
like infrastructure in front of the API (a proxy or gateway), so they come
before the API key check and before any job is created: a faulted submit
never creates a job. The credit overage is an API decision, after the key.
Every ``/v1`` request (and download) is recorded before it is answered, so
stats read right after a response already include it.
"""

from __future__ import annotations

from collections.abc import Callable

from .admin import ADMIN_PREFIX, handle_admin
from .api import API_ROUTER, Call, Endpoint
from .body import BadBody, PayloadTooLarge
from .faults import overage_response, rate_limit_response
from .messages import Request, Response, detail_response
from .presign import FILES_PATH
from .state import FakeState

#: The 401 body for a missing or wrong ``X-API-Key``.
UNAUTHORIZED_DETAIL = "Invalid or missing API key"


def handle(state: FakeState, request: Request) -> Response:
    """Answer one request. A hang is recorded, slept through, then returned as ``hang_up``."""
    if request.path.startswith(ADMIN_PREFIX) and not request.path.startswith(FILES_PATH):
        return _guard_body(lambda: handle_admin(state, request))
    match = API_ROUTER.match(request.method, request.path)
    if match.route is None:
        response = match.error()
        _record(state, "unknown", request, response)
        return response
    request.params = match.params
    call = Call(state, request, match.route.name)
    endpoint = match.route.target
    response = _guard_body(lambda: _serve(call, endpoint))
    _record(state, call.endpoint, request, response)
    if response.hang_up:
        state.sleep(response.hang_seconds)
    return response


def _serve(call: Call, endpoint: Endpoint) -> Response:
    state, name = call.state, call.endpoint
    app_id = endpoint.locate_app(call)
    faults = state.effective_faults(app_id)
    call.faults = faults
    if faults.applies_to(name):
        state.sleep(faults.latency)
        kind = state.injector.draw(faults)
        if kind == "timeout":
            return Response(
                0, hang_up=True, hang_seconds=faults.hang_seconds, fault="timeout", app_id=app_id
            )
        if kind is not None:
            response = state.injector.error_response() if kind == "error" else rate_limit_response()
            response.fault = kind
            response.app_id = app_id
            return response
    if endpoint.needs_key and not state.key_ok(call.request.header("X-API-Key")):
        return detail_response(401, UNAUTHORIZED_DETAIL)
    if state.overage_hits(faults, name):
        response = overage_response()
        response.fault = "overage"
        response.app_id = app_id
        return response
    response = endpoint.handler(call)
    if response.app_id is None:
        response.app_id = app_id
    return response


def _guard_body(serve: Callable[[], Response]) -> Response:
    """Turn an oversized or broken request body into a 413 or 400 answer."""
    try:
        return serve()
    except PayloadTooLarge:
        # The server drains a modest remainder to keep the connection, or closes it.
        return detail_response(413, "Request body too large")
    except BadBody:
        response = detail_response(400, "There was an error parsing the body")
        response.close_connection = True
        return response


def _record(state: FakeState, endpoint: str, request: Request, response: Response) -> None:
    state.recorder.record(
        endpoint=endpoint, method=request.method, path=request.target, response=response
    )
