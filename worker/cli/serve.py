"""``hatz-worker serve`` and ``tokens``: the HTTP API process and its client tokens."""

from __future__ import annotations

import logging
import signal
import socket
import time
from types import FrameType

import click

from worker.cli import serve_processes
from worker.cli.output import duration, print_error, print_json, table
from worker.cli.params import CommandGroup, json_option
from worker.cli.runtime import EXIT_FAILED, EXIT_OK, Runtime
from worker.clients import ClientStore
from worker.clients.tokens import check_name
from worker.context import Context
from worker.http_api.app import Extension
from worker.ops.logs import configure_logging

log = logging.getLogger(__name__)


def app_extensions() -> list[Extension]:
    """What ``serve`` installs into the API app beyond its routers: the web console."""
    from worker.console import install

    return [install]


@click.command(
    "serve",
    short_help="serve the HTTP API",
    help=(
        "Serve the HTTP API (uvicorn) until stopped. Clients need a token: `tokens create`. "
        "A Python process runs one request's code at a time: give each core a process "
        "(--workers), as with any Python web server."
    ),
)
@click.option(
    "--host", default="127.0.0.1", metavar="HOST", help="bind address (default 127.0.0.1)"
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, metavar="PORT",
              envvar="PORT", help="port (default $PORT, else 8000)")  # fmt: skip
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    metavar="N",
    envvar="WEB_CONCURRENCY",
    help="processes on the port, one per core (default $WEB_CONCURRENCY, else 1)",
)
@click.option("--reuse-port", is_flag=True, hidden=True,
              help="join the port's SO_REUSEPORT group (a serve --workers process)")  # fmt: skip
@click.pass_obj
def serve_command(rt: Runtime, host: str, port: int, workers: int, reuse_port: bool) -> int:
    """``serve``: run uvicorn until SIGTERM/SIGINT, here or in ``workers`` processes."""
    # The worker's log format (HATZ_LOG_JSON) and redaction for uvicorn's lines too.
    configure_logging(rt.settings)
    if workers > 1:
        return _serve_processes(host, port, workers)
    import uvicorn

    from worker.http_api.app import create_app

    sockets = None
    if reuse_port:
        try:
            sockets = [serve_processes.listener(host, port, reuse_port=True)]
        except OSError as exc:
            return _cannot_listen(host, port, exc)
    # Metrics unbuffered: uploads call Hatz from request threads, outside any task.
    context = Context.from_settings(rt.settings, buffered_metrics=False)
    app = create_app(context, celery=rt.celery, extensions=app_extensions())
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=rt.settings.log_level.lower(),
        server_header=False,
        timeout_graceful_shutdown=30,
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it under the handler it
    # found; with this one that ends the process with exit 0, as a warm worker shutdown does.
    previous = signal.signal(signal.SIGTERM, _after_graceful_shutdown)
    try:
        uvicorn.Server(config).run(sockets=sockets)
    finally:
        signal.signal(signal.SIGTERM, previous)
        context.client.close()
        context.redis.close()
    return EXIT_OK


def _serve_processes(host: str, port: int, workers: int) -> int:
    """``workers`` supervised ``serve`` processes on ``host:port`` (see :mod:`serve_processes`)."""
    if port == 0:
        print_error("error: --workers needs a fixed --port (each process binds the same one)")
        return EXIT_FAILED
    if not hasattr(socket, "SO_REUSEPORT"):
        print_error("error: --workers needs SO_REUSEPORT (Linux, macOS, BSD); run one process")
        return EXIT_FAILED
    try:
        serve_processes.check_port_free(host, port)
    except OSError as exc:
        return _cannot_listen(host, port, exc)
    log.info("serving on http://%s:%s with %s processes", host, port, workers)
    command = serve_processes.child_command(host, port)
    return serve_processes.Supervisor(command, workers).run()


def _cannot_listen(host: str, port: int, exc: OSError) -> int:
    print_error(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}")
    return EXIT_FAILED


def _after_graceful_shutdown(signum: int, frame: FrameType | None) -> None:
    """SIGTERM once uvicorn has already shut down: nothing is left to stop."""


@click.group("tokens", cls=CommandGroup, short_help="HTTP API client tokens")
def tokens_group() -> None:
    """Create, list and revoke the bearer tokens HTTP API clients authenticate with."""


def _name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _store(rt: Runtime) -> ClientStore:
    ctx = rt.context
    return ClientStore(ctx.redis, ctx.keys)


@tokens_group.command(
    "create",
    short_help="make a client and print its token (once)",
    help="Make client NAME and print its bearer token. Only its hash is stored: keep it now.",
)
@click.argument("name", metavar="NAME", callback=_name)
@click.option("--admin", is_flag=True, help="the client sees and cancels every client's runs")
@json_option('print {"name": ..., "token": ...}')
@click.pass_obj
def create_command(rt: Runtime, name: str, admin: bool, as_json: bool) -> int:
    """``tokens create``: the token is printed here and never again."""
    token = _store(rt).create(name, admin=admin)
    if as_json:
        print_json({"name": name, "token": token, "admin": admin})
    else:
        print(token)
        print_error(f"client {name!r} created; the token above is shown only once")
    return EXIT_OK


@tokens_group.command("list", short_help="the clients (never their tokens)", help="List clients.")
@json_option()
@click.pass_obj
def list_command(rt: Runtime, as_json: bool) -> int:
    """``tokens list``: name, admin, age."""
    clients = _store(rt).list()
    if as_json:
        print_json(
            [{"name": c.name, "admin": c.admin, "created_at": c.created_at} for c in clients]
        )
        return EXIT_OK
    if not clients:
        print("no clients; make one with `hatz-worker tokens create NAME`")
        return EXIT_OK
    now = time.time()
    rows = [
        [c.name, "yes" if c.admin else "no", duration(now - c.created_at) + " ago"] for c in clients
    ]
    print("\n".join(table(["NAME", "ADMIN", "CREATED"], rows)))
    return EXIT_OK


@tokens_group.command(
    "revoke",
    short_help="delete a client and its token",
    help="Delete client NAME: its token answers 401 from now on.",
)
@click.argument("name", metavar="NAME")
@click.pass_obj
def revoke_command(rt: Runtime, name: str) -> int:
    """``tokens revoke``: exit 1 when there is no such client."""
    if not _store(rt).revoke(name):
        print_error(f"error: no client named {name!r}")
        return EXIT_FAILED
    print(f"client {name!r} revoked")
    return EXIT_OK


COMMANDS = (serve_command, tokens_group)
