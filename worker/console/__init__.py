"""The web console for operators, served by ``hatz-worker serve`` beside the HTTP API.

Server-rendered pages (Jinja2 templates in ``templates/``) with one small
script (``static/console.js``) that refreshes a page's live parts; every file
ships in this package, nothing comes from a CDN, and every page carries a
strict Content-Security-Policy. Admin tokens only: the login page swaps one
for a session cookie (:mod:`worker.console.sessions`).

Install it into the API app with ``create_app(context, extensions=[install])``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from worker.console import actions, pages
from worker.console.web import (
    PREFIX,
    SECURITY_HEADERS,
    CsrfError,
    LoginRequired,
    csrf_handler,
    login_required_handler,
)


def install(app: FastAPI) -> None:
    """Add the console's pages, its static files and its security headers to ``app``."""
    app.include_router(actions.router)
    app.include_router(pages.router)
    app.mount(
        f"{PREFIX}/static",
        StaticFiles(packages=[("worker.console", "static")]),
        name="console-static",
    )
    app.add_exception_handler(LoginRequired, login_required_handler)
    app.add_exception_handler(CsrfError, csrf_handler)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/runs", status_code=303)

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        if request.url.path == "/" or request.url.path.startswith(PREFIX):
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
        return response
