"""What every console page shares: templates, the session check, CSRF, security headers."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from worker.console.sessions import COOKIE, Session, SessionStore
from worker.console.timeline import fmt_time
from worker.http_api.services import Services, get_services

PREFIX = "/console"

#: Every console page's Content-Security-Policy: only this origin's own files, no inline code.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

templates = Environment(
    loader=PackageLoader("worker.console", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["when"] = fmt_time


class LoginRequired(Exception):
    """Raised when a console request has no live session."""


def render(
    request: Request,
    name: str,
    session: Session | None = None,
    *,
    status_code: int = 200,
    **values: Any,
) -> HTMLResponse:
    """A template rendered with the session (for the CSRF field and who is logged in)."""
    page = templates.get_template(name).render(
        request=request, session=session, prefix=PREFIX, **values
    )
    return HTMLResponse(page, status_code=status_code)


def sessions(services: Services) -> SessionStore:
    """The session store over the app's Redis."""
    return SessionStore(services.context.redis, services.context.keys)


def current_session(
    request: Request, services: Annotated[Services, Depends(get_services)]
) -> Session:
    """The logged-in operator (a dependency); :class:`LoginRequired` when there is none."""
    session = sessions(services).get(request.cookies.get(COOKIE))
    if session is None:
        raise LoginRequired
    return session


ConsoleSession = Annotated[Session, Depends(current_session)]


def login_required_handler(request: Request, exc: Exception) -> Response:
    """To the login page; a live fragment's request gets 401 (its script goes there)."""
    if request.headers.get("x-console-live"):
        return JSONResponse({"login": f"{PREFIX}/login"}, status_code=401)
    return RedirectResponse(f"{PREFIX}/login", status_code=303)


def same_origin(request: Request) -> bool:
    """Whether a POST comes from a console page (``Origin``, else ``Referer``, is this host).

    A belt to the CSRF token's braces: the cookie is ``SameSite=Strict`` too.
    """
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return False
    host = request.headers.get("host", "")
    return urlsplit(source).netloc == host


def check_post(request: Request, session: Session, csrf: str | None) -> None:
    """Refuse (403) a POST without this session's CSRF token or from another origin."""
    if not (same_origin(request) and session.csrf_ok(csrf)):
        raise CsrfError


class CsrfError(Exception):
    """Raised when a console POST fails the CSRF checks."""


def csrf_handler(request: Request, exc: Exception) -> Response:
    """403 page for a refused POST."""
    return render(
        request,
        "error.html",
        None,
        status_code=403,
        message="This form is stale or came from another site (CSRF check failed). "
        "Reload the page and try again.",
    )


def redirect(path: str) -> RedirectResponse:
    """303 See Other to a console path (after a POST)."""
    return RedirectResponse(PREFIX + path, status_code=303)
