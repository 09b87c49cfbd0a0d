"""The ``hatz-worker`` command line: the root click group, its commands, and :func:`main`.

Each command module holds one group of commands (runs, apps, batches, callbacks,
operations, the demo); this module adds them to the root group and turns
whatever a command raises into one line on stderr and an exit code (see
:mod:`worker.cli.runtime`). Nothing outside ``worker.cli`` imports the CLI.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import click
import redis
from celery import Celery

from config import ConfigError, Settings
from worker.cli import apps, batches, callbacks, demo, ops, runs, serve
from worker.cli.output import print_error, safe_url
from worker.cli.params import CommandGroup
from worker.cli.runtime import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PROG,
    Runtime,
)
from worker.context import Context
from worker.errors import (
    HatzAuthError,
    HatzError,
    HatzTransportError,
    IdempotencyConflictError,
    InvalidRunError,
)


@click.group(
    PROG,
    cls=CommandGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Settings come from HATZ_* environment variables or a .env file.",
)
def cli() -> None:
    """Run Hatz AI workflows in the background, on Celery and Redis."""


for _command in (
    *runs.COMMANDS,
    *apps.COMMANDS,
    *demo.COMMANDS,
    *callbacks.COMMANDS,
    *batches.COMMANDS,
    *ops.COMMANDS,
    *serve.COMMANDS,
):
    cli.add_command(_command)


def parse_command_line(argv: Sequence[str]) -> click.Context:
    """Parse ``argv`` down to its command without running it.

    Raises :class:`click.UsageError` for a command line that :func:`main` would
    refuse with exit 2 (deployment files are checked with this).
    """
    args = list(argv)
    ctx = cli.make_context(PROG, args)
    while isinstance(ctx.command, click.Group):
        # Our groups take no options of their own: the first argument names the command.
        if not args:
            ctx.fail("Missing command.")
        name, command, args = ctx.command.resolve_command(ctx, args)
        assert command is not None  # resolve_command raises for an unknown name
        ctx = command.make_context(name, args, parent=ctx)
    return ctx


def _usage_line(exc: click.UsageError) -> str:
    where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
    return f"error: {exc.format_message()}{where}"


def _redis_location(rt: Runtime) -> str:
    try:
        url = rt.settings.redis_url
    except ConfigError:
        return "Redis"
    return f"Redis at {safe_url(url)} (HATZ_REDIS_URL)"


def _hatz_error_line(rt: Runtime, exc: HatzError) -> str:
    hint = ""
    if isinstance(exc, HatzAuthError) and not rt.settings.api_key.get_secret_value():
        hint = " (HATZ_API_KEY is not set)"
    elif isinstance(exc, HatzTransportError):
        hint = f" (HATZ_BASE_URL is {safe_url(str(rt.settings.base_url))})"
    return f"error: {exc}{hint}"


@contextmanager
def _errors_reported(rt: Runtime, result: list[int]) -> Iterator[None]:
    """Turn an expected failure into one line on stderr and its exit code in ``result``."""
    try:
        yield
    except click.UsageError as exc:
        print_error(_usage_line(exc))
        result.append(EXIT_USAGE)
    except click.ClickException as exc:
        print_error(f"error: {exc.format_message()}")
        result.append(exc.exit_code)
    except ConfigError as exc:
        print_error(str(exc))
        result.append(EXIT_USAGE)
    except (InvalidRunError, IdempotencyConflictError) as exc:
        print_error(f"error: {exc}; nothing was enqueued")
        result.append(EXIT_USAGE)
    except HatzError as exc:
        print_error(_hatz_error_line(rt, exc))
        result.append(EXIT_FAILED)
    except redis.RedisError as exc:
        print_error(f"error: cannot use {_redis_location(rt)}: {exc}")
        result.append(EXIT_FAILED)
    except (click.Abort, KeyboardInterrupt):
        # click has already ended the interrupted line on stderr for an Abort.
        print_error("interrupted")
        result.append(EXIT_INTERRUPTED)


def main(
    argv: Sequence[str] | None = None,
    *,
    settings: Settings | None = None,
    context: Context | None = None,
    celery: Celery | None = None,
) -> int:
    """Run the CLI; return the exit code. Tests inject ``settings``/``context``/``celery``."""
    args = list(sys.argv[1:] if argv is None else argv)
    rt = Runtime(settings=settings, context=context, celery=celery)
    result: list[int] = []
    with _errors_reported(rt, result):
        try:
            # Not standalone: click returns the command's exit code (or --help's 0)
            # and raises its usage errors instead of exiting.
            code = cli.main(args, prog_name=PROG, standalone_mode=False, obj=rt)
        finally:
            rt.close()
        result.append(code if isinstance(code, int) else 0)
    return result[0] if result else EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
