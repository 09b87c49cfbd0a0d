"""The web console for operators, served by ``hatz-worker serve`` beside the HTTP API.

Server-rendered pages (Jinja2 templates in ``templates/``) with one small
script (``static/console.js``) that refreshes a page's live parts; every file
ships in this package, nothing comes from a CDN, and every page carries a
strict Content-Security-Policy. Admin tokens only: the login page swaps one
for a session cookie (:mod:`worker.console.sessions`).

Install it into the API app with ``create_app(context, extensions=[install])``.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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

    app.add_middleware(SecurityHeaders)


class SecurityHeaders:
    """Adds :data:`~worker.console.web.SECURITY_HEADERS` to the console's responses.

    A plain ASGI middleware: every other request (the HTTP API's) passes
    straight through, untouched and unwrapped.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/" or path.startswith(PREFIX)):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
