"""The console's actions (POST): log in, log out, cancel a run, replay dead letters.

Every action but logging in needs the session's CSRF token in the form and an
``Origin`` (or ``Referer``) of this host; the session cookie is
``SameSite=Strict`` as well.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from worker.api import operations
from worker.api.runs import cancel_run
from worker.console.sessions import COOKIE, SESSION_TTL
from worker.console.web import (
    PREFIX,
    ConsoleSession,
    check_post,
    redirect,
    render,
    same_origin,
    sessions,
)
from worker.errors import BatchNotFoundError, CallbackReplayError, RunNotFoundError
from worker.http_api.auth import authenticate
from worker.http_api.problems import ProblemError
from worker.http_api.services import Services, get_services

router = APIRouter(prefix=PREFIX, include_in_schema=False)
ServicesDep = Annotated[Services, Depends(get_services)]
CsrfField = Annotated[str, Form(max_length=100)]
#: Replays whose outcome the dead-letters page follows after a "replay all".
MAX_WATCHED = 20


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    """The login form: an admin token in a password field."""
    return render(request, "login.html")


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request, services: ServicesDep, token: Annotated[str, Form(max_length=300)] = ""
) -> Response:
    """Swap an admin token for a session cookie; refuse any other token."""
    if not same_origin(request):
        return render(request, "login.html", status_code=403, error="Log in from this page.")
    try:
        client = authenticate(services, token.strip())
    except ProblemError as exc:
        return render(request, "login.html", status_code=exc.status, error=exc.detail)
    if not client.admin:
        message = f"Client {client.name!r} is not an admin: the console needs an admin token."
        return render(request, "login.html", status_code=403, error=message)
    session_id = sessions(services).create(client.name, token.strip())
    response = redirect("/runs")
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=SESSION_TTL,
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/logout")
def logout(
    request: Request, session: ConsoleSession, services: ServicesDep, csrf: CsrfField = ""
) -> Response:
    """End the session and clear its cookie."""
    check_post(request, session, csrf)
    sessions(services).delete(request.cookies.get(COOKIE))
    response = redirect("/login")
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.post("/runs/{run_id}/cancel")
def cancel(
    request: Request,
    run_id: str,
    session: ConsoleSession,
    services: ServicesDep,
    csrf: CsrfField = "",
) -> Response:
    """Stop following a run (CANCELED); the page says what happened."""
    check_post(request, session, csrf)
    try:
        canceled = cancel_run(run_id, context=services.context, celery=services.celery)
    except RunNotFoundError:
        return render(
            request, "error.html", session, status_code=404, message=f"No run {run_id!r}."
        )
    done = "canceled" if canceled else "not canceled: the run had already finished"
    return redirect(f"/runs/{quote(run_id)}?done={quote(done)}")


@router.post("/dead-letters/replay")
def replay(
    request: Request,
    session: ConsoleSession,
    services: ServicesDep,
    csrf: CsrfField = "",
    kind: Annotated[Literal["run", "batch", "all"], Form()] = "all",
    letter_id: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Replay one dead letter (``kind`` and ``letter_id``) or all of them (``kind=all``)."""
    check_post(request, session, csrf)
    ctx, celery = services.context, services.celery
    replayed: list[str] = []
    if kind == "all":
        letters = {d.id: d.kind for d in operations.dead_letters(context=ctx)}
        outcome = operations.replay_all(context=ctx, celery=celery)
        replayed = [f"{letters.get(i, 'run')}:{i}" for i, v in outcome.items() if v == "queued"]
        done = f"{len(replayed)} of {len(outcome)} replay(s) queued"
        problems = [v for v in outcome.values() if v != "queued"]
        if problems:
            done += "; " + "; ".join(problems[:3])
    else:
        try:
            operations.replay_dead_letter(kind, letter_id, context=ctx, celery=celery)
            done = f"{kind} {letter_id}: replay queued"
            replayed = [f"{kind}:{letter_id}"]
        except (CallbackReplayError, RunNotFoundError, BatchNotFoundError) as exc:
            done = str(exc)
    watch = ",".join(replayed[:MAX_WATCHED])
    return redirect(f"/dead-letters?done={quote(done)}&replayed={quote(watch)}")
