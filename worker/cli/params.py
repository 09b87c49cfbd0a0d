"""Click building blocks shared by the ``hatz-worker`` commands: the command group, the
checks of numbers and run states, ``KEY=VALUE`` pairs and the ``--json`` flag.

A bad value is a :class:`click.UsageError`: :func:`worker.cli.main.main` prints it
as one line on stderr and exits 2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from worker.store.ledger import RunState

F = TypeVar("F", bound=Callable[..., Any])
N = TypeVar("N", int, float)


class CommandGroup(click.Group):
    """A group that lists its commands in the order they were added (not sorted), and
    that reports a missing command as a one-line usage error instead of its help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("no_args_is_help", False)
        super().__init__(*args, **kwargs)

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Command names in the order of :meth:`add_command`."""
        return list(self.commands)


# Checks are option callbacks rather than click.ParamType subclasses: they keep
# our messages and work alike on every click 8 release (ParamType became generic).


def _number(ctx: click.Context, param: click.Parameter, value: str, kind: type[N], noun: str) -> N:
    try:
        return kind(value)
    except ValueError:
        raise click.BadParameter(f"not {noun}: {value!r}", ctx, param) from None


def positive_float(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """An option's number > 0 (seconds); None when not given."""
    if value is None:
        return None
    number = _number(ctx, param, value, float, "a number")
    if number <= 0:
        raise click.BadParameter(f"must be > 0, got {value!r}", ctx, param)
    return number


def positive_int(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """An option's integer >= 1 (a count); None when not given."""
    if value is None:
        return None
    number = _number(ctx, param, value, int, "an integer")
    if number < 1:
        raise click.BadParameter(f"must be >= 1, got {value!r}", ctx, param)
    return number


def run_state(ctx: click.Context, param: click.Parameter, value: str | None) -> RunState | None:
    """An option's run state, any case (``failed`` -> :attr:`RunState.FAILED`)."""
    if value is None:
        return None
    try:
        return RunState(value.upper())
    except ValueError:
        known = ", ".join(s.value for s in RunState)
        raise click.BadParameter(f"unknown state {value!r} (one of {known})", ctx, param) from None


def parse_pairs(values: Iterable[str] | None, option: str) -> dict[str, str]:
    """``["K=V", ...]`` -> ``{"K": "V"}``; raises :class:`click.UsageError` on a bad pair."""
    result: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.UsageError(f"{option} expects KEY=VALUE, got {item!r}")
        if key in result:
            raise click.UsageError(f"{option} {key!r} given twice")
        result[key] = value
    return result


def json_option(text: str = "machine-readable output") -> Callable[[F], F]:
    """The ``--json`` flag, passed to the command as ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help=text)
