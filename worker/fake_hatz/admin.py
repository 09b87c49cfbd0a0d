"""The ``/_fake/`` admin API: configure and inspect a fake running in another process.

No API key is needed and admin requests are not counted in the stats or the
call log: they are the test harness talking, not the client under test.

=========================  ==========================================================
``GET  /_fake/health``     ``{"status": "ok", "url", "apps", "jobs"}``
``GET  /_fake/stats``      same as :meth:`FakeHatz.stats`
``GET  /_fake/calls``      ``{"calls": [...]}``; ``?endpoint=run`` filters
``POST /_fake/reset``      ``{"scope": "stats"}`` (default) or ``{"scope": "all"}``
``GET  /_fake/config``     ``{"faults": {...}, "apps": {app_id: {...}}}``
``POST /_fake/config``     :class:`FaultConfig` fields, plus ``"app_id"`` for one app
``POST /_fake/apps``       :class:`FakeApp` fields; answers the app as ``/v1/app/{id}``
``POST /_fake/overage``    ``{"on": true}`` / ``{"on": false}``
``GET  /_fake/jobs/{id}``  the job as ``/v1/workflows/{id}`` shows it (not a poll)
``POST /_fake/jobs/{id}/lose``  the job answers 404 from now on
=========================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Callable

from .faults import FaultConfig
from .messages import Request, Response, detail_response, json_response
from .models import FakeApp
from .routing import Route, Router
from .state import FakeState
from .validation import read_json, unprocessable

AdminHandler = Callable[[FakeState, Request], Response]


def _health(state: FakeState, request: Request) -> Response:
    return json_response(
        200,
        {
            "status": "ok",
            "url": f"{state.root_url}/v1",
            "apps": len(state.list_apps()),
            "jobs": state.job_count(),
        },
    )


def _stats(state: FakeState, request: Request) -> Response:
    return json_response(200, state.stats())


def _calls(state: FakeState, request: Request) -> Response:
    return json_response(200, {"calls": state.recorder.calls(request.query_value("endpoint"))})


def _reset(state: FakeState, request: Request) -> Response:
    body = read_json(request, optional=True)
    if body.errors:
        return unprocessable(body.errors)
    scope = body.value.get("scope", "stats")
    if scope == "stats":
        state.recorder.reset()
    elif scope == "all":
        state.reset()
    else:
        return detail_response(400, 'scope must be "stats" or "all"')
    return json_response(200, {"reset": scope})


def _get_config(state: FakeState, request: Request) -> Response:
    apps = {app.id: app.faults.to_dict() for app in state.list_apps() if app.faults is not None}
    return json_response(200, {"faults": state.faults.to_dict(), "apps": apps})


def _set_config(state: FakeState, request: Request) -> Response:
    body = read_json(request, optional=True)
    if body.errors:
        return unprocessable(body.errors)
    data = dict(body.value)
    app_id = data.pop("app_id", None)
    if app_id is not None and state.get_app(app_id) is None:
        return detail_response(404, "App not found")
    try:
        faults = FaultConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        return detail_response(400, str(exc))
    state.set_faults(faults, app_id)
    return json_response(200, {"faults": faults.to_dict(), "app_id": app_id})


def _add_app(state: FakeState, request: Request) -> Response:
    body = read_json(request)
    if body.errors:
        return unprocessable(body.errors)
    try:
        app = FakeApp.from_dict(body.value)
    except (ValueError, TypeError) as exc:
        return detail_response(400, str(exc))
    state.add_app(app)
    return json_response(200, app.to_item())


def _overage(state: FakeState, request: Request) -> Response:
    body = read_json(request)
    if body.errors:
        return unprocessable(body.errors)
    on = body.value.get("on")
    if not isinstance(on, bool):
        return detail_response(400, 'body must be {"on": true} or {"on": false}')
    state.set_overage(on)
    return json_response(200, {"overage": on})


def _job(state: FakeState, request: Request) -> Response:
    job_id = request.params["job_id"]
    job = state.get_job(job_id)
    if job is None:
        return detail_response(404, "Job not found")
    rendered = job.render(state.clock(), tenant_id=state.tenant_id, user_id=state.user_id)
    rendered["lost"] = state.is_lost(job_id)
    return json_response(200, rendered)


def _lose(state: FakeState, request: Request) -> Response:
    job_id = request.params["job_id"]
    if not state.lose_job(job_id):
        return detail_response(404, "Job not found")
    return json_response(200, {"job_id": job_id, "lost": True})


ADMIN_PREFIX = "/_fake/"

ADMIN_ROUTER: Router[AdminHandler] = Router(
    [
        Route("GET", "/_fake/health", "health", _health),
        Route("GET", "/_fake/stats", "stats", _stats),
        Route("GET", "/_fake/calls", "calls", _calls),
        Route("POST", "/_fake/reset", "reset", _reset),
        Route("GET", "/_fake/config", "config", _get_config),
        Route("POST", "/_fake/config", "config", _set_config),
        Route("POST", "/_fake/apps", "apps", _add_app),
        Route("POST", "/_fake/overage", "overage", _overage),
        Route("GET", "/_fake/jobs/{job_id}", "job", _job),
        Route("POST", "/_fake/jobs/{job_id}/lose", "lose", _lose),
    ]
)


def handle_admin(state: FakeState, request: Request) -> Response:
    """Serve one ``/_fake/`` request."""
    match = ADMIN_ROUTER.match(request.method, request.path)
    if match.route is None:
        return match.error()
    request.params = match.params
    return match.route.target(state, request)
