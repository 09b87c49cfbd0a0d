"""The ``hatz-worker`` command line: enqueue and follow runs, inspect apps, run the demo.

Every subcommand is registered by one ``@command_group`` function that adds its
parser(s) and points ``handler`` at a small function ``(args, runtime) -> int``.
To add a command, write such a function here or in a module listed in
:data:`EXTRA_COMMAND_MODULES` (it registers itself on import).

Exit codes: 0 success; 1 the operation failed (Hatz API error, run ended
badly, already terminal); 2 bad usage or configuration (nothing enqueued);
3 ``wait --timeout`` expired; 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NoReturn, TextIO, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import redis
from celery import Celery

from config import ConfigError, Settings, load_settings
from worker.api.runs import cancel_run, enqueue_run, get_run, list_runs, wait_for_run
from worker.context import Context
from worker.errors import (
    HatzAuthError,
    HatzError,
    HatzTransportError,
    IdempotencyConflictError,
    InvalidRunError,
)
from worker.hatz.client import HatzClient
from worker.hatz.types import App
from worker.limits.breaker import breaker_state
from worker.store.ledger import PRE_SUBMIT_STATES, Run, RunState

PROG = "hatz-worker"
#: Modules imported when the parser is built, so they can register more command groups.
EXTRA_COMMAND_MODULES: tuple[str, ...] = (
    "worker.cli.callbacks",
    "worker.cli.batches",
    "worker.cli.ops",
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WAIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130


# --- errors and parser --------------------------------------------------------------


class UsageError(Exception):
    """A bad command line: reported as one line on stderr, exit 2."""


class CLIParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`UsageError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        """Raise instead of printing the usage and calling ``sys.exit(2)``."""
        raise UsageError(f"{message} (see `{self.prog} --help`)")


Subparsers: TypeAlias = "argparse._SubParsersAction[CLIParser]"
CommandGroup = Callable[[Subparsers], None]
Handler = Callable[[argparse.Namespace, "Runtime"], int]

COMMAND_GROUPS: list[CommandGroup] = []


def command_group(add_parsers: CommandGroup) -> CommandGroup:
    """Register a function that adds one or more subcommands (``set_defaults(handler=...)``)."""
    COMMAND_GROUPS.append(add_parsers)
    return add_parsers


def build_parser() -> CLIParser:
    """The full argument parser, with every registered command group."""
    for module in EXTRA_COMMAND_MODULES:
        importlib.import_module(module)
    parser = CLIParser(
        prog=PROG,
        description="Run Hatz AI workflows in the background, on Celery and Redis.",
        epilog="Settings come from HATZ_* environment variables or a .env file.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CLIParser)
    sub.required = True
    for add_parsers in COMMAND_GROUPS:
        add_parsers(sub)
    return parser


# --- runtime: settings, context, Celery app, built on first use -----------------------


class Runtime:
    """What handlers need, built lazily (so ``--help`` and ``demo`` never read settings).

    Tests inject ``settings``, ``context`` and/or ``celery``; otherwise settings
    come from the environment via :func:`config.load_settings`.
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        context: Context | None = None,
        celery: Celery | None = None,
    ) -> None:
        self._settings = settings or (context.settings if context is not None else None)
        self._context = context
        self._celery = celery
        self._client: HatzClient | None = context.client if context is not None else None
        self._owned: list[Callable[[], object]] = []

    @property
    def settings(self) -> Settings:
        """The settings; raises :class:`ConfigError` when the environment is invalid."""
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def context(self) -> Context:
        """The ledger/Redis/client bundle."""
        if self._context is None:
            self._context = Context.from_settings(self.settings, client=self._client)
            self._client = self._context.client
            self._owned += [self._context.client.close, self._context.redis.close]
        return self._context

    @property
    def client(self) -> HatzClient:
        """A Hatz API client (no Redis needed)."""
        if self._client is None:
            self._client = HatzClient.from_settings(self.settings)
            self._owned.append(self._client.close)
        return self._client

    @property
    def celery(self) -> Celery:
        """The Celery app runs are published with."""
        if self._celery is None:
            from worker.taskqueue.app import create_app

            self._celery = create_app(self.settings)
            self._owned.append(self._celery.close)
        return self._celery

    def close(self) -> None:
        """Close whatever this runtime opened (never injected objects)."""
        for close in reversed(self._owned):
            with contextlib.suppress(Exception):  # best effort at exit
                close()
        self._owned.clear()


# --- small helpers ------------------------------------------------------------------


def _err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def parse_pairs(values: Iterable[str] | None, option: str) -> dict[str, str]:
    """``["K=V", ...]`` -> ``{"K": "V"}``; raises :class:`UsageError` on a malformed pair."""
    result: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"{option} expects KEY=VALUE, got {item!r}")
        if key in result:
            raise UsageError(f"{option} {key!r} given twice")
        result[key] = value
    return result


def safe_url(url: str) -> str:
    """A URL without credentials, query string or fragment (presigned queries are secrets)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def _run_state(text: str) -> RunState:
    try:
        return RunState(text.upper())
    except ValueError:
        known = ", ".join(s.value for s in RunState)
        raise argparse.ArgumentTypeError(f"unknown state {text!r} (one of {known})") from None


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _steps(run: Mapping[str, Any]) -> str:
    done = int(run.get("steps_done") or 0)
    total = int(run.get("number_of_steps") or 0)
    return f"{done}/{total if total else '?'}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


# --- run record rendering -------------------------------------------------------------


def _history_lines(run: Run) -> list[str]:
    history = run.history()
    if not history:
        return []
    first = history[0][1]
    return [f"{state:<10}  {_clock(ts)}  (+{_duration(ts - first)})" for state, ts in history]


def _callback_line(run: Run) -> str:
    url = str(run.get("callback_url") or "")
    if not url:
        return "none"
    state = str(run.get("callback_state") or "not yet due")
    attempts = run.get("callback_attempts") or []
    text = f"{state} -> {safe_url(url)}"
    if attempts:
        last = attempts[-1]
        outcome = last.get("status") or last.get("error") or "?"
        text += f"  ({len(attempts)} attempt(s), last: {outcome})"
    if run.get("callback_error"):
        text += f"  error: {run['callback_error']}"
    return text


def status_lines(run: Run, now: float | None = None) -> list[str]:
    """A human view of a run record. Never shows URL query strings (presigned secrets)."""
    now = time.time() if now is None else now
    rows: list[tuple[str, str]] = [
        ("run", run.run_id),
        ("state", run.state.value),
        ("app", str(run.get("app_id") or "")),
    ]
    if run.get("is_draft_app"):
        rows.append(("draft", "yes"))
    rows.append(("job_id", str(run.get("job_id") or "(not submitted)")))
    hatz = str(run.get("hatz_status") or "-")
    rows.append(("hatz", f"{hatz}  steps {_steps(run)}  polls {int(run.get('poll_count') or 0)}"))
    inputs = sorted((run.get("inputs") or {}).keys())
    files = sorted((run.get("files") or {}).keys())
    if inputs or files:
        names = ", ".join(inputs + [f"{f} (file)" for f in files if f not in inputs])
        rows.append(("inputs", names))
    if run.get("metadata"):
        rows.append(("metadata", json.dumps(run["metadata"], sort_keys=True)))
    if run.get("error"):
        rows.append(("error", str(run["error"])))
    elif run.get("last_error") and not run.state.is_terminal:
        rows.append(("last error", str(run["last_error"])))
    documents: dict[str, Any] = run.get("documents") or {}
    for i, (step_id, doc) in enumerate(sorted(documents.items())):
        url = safe_url(str(doc.get("url") or "")) if isinstance(doc, dict) else "?"
        expires = doc.get("expires_at") if isinstance(doc, dict) else None
        when = ""
        if expires:
            left = float(expires) - now
            when = f"  (link expires in {_duration(left)})" if left > 0 else "  (link expired)"
        rows.append(("documents" if i == 0 else "", f"{step_id}: {url}{when}"))
    if not documents and run.state is RunState.COMPLETED:
        rows.append(("documents", "none"))
    rows.append(("callback", _callback_line(run)))
    created = run.get("created_at")
    if created:
        end = run.get("updated_at") if run.state.is_terminal else now
        rows.append(("elapsed", _duration(float(end or now) - float(created))))
    lines = [f"{k:<10}  {v}" for k, v in rows]
    history = _history_lines(run)
    for i, line in enumerate(history):
        lines.append(f"{'history' if i == 0 else '':<10}  {line}")
    return lines


# --- progress display for `wait` --------------------------------------------------------


class Progress:
    """Progress on ``stream``: one updating line on a TTY, plain periodic lines otherwise."""

    def __init__(
        self,
        stream: TextIO,
        *,
        started: float | None = None,
        every: float = 10.0,
        quiet: bool = False,
    ) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.quiet = quiet and not self.tty
        self.started = time.time() if started is None else started
        self.every = every
        self._last_key: tuple[str, str] | None = None
        self._last_print = 0.0
        self._drawn = False

    def update(self, run: Run) -> None:
        """Show the run's current state (called on every check)."""
        if self.quiet:
            return
        created = float(run.get("created_at") or self.started)
        elapsed = _duration(time.time() - created)
        key = (run.state.value, _steps(run))
        text = f"{run.run_id[:12]}  {run.state.value:<10}  steps {_steps(run):<6} {elapsed}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
            self._drawn = True
            return
        now = time.monotonic()
        if key != self._last_key or now - self._last_print >= self.every:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last_key = key
            self._last_print = now

    def close(self) -> None:
        """Erase the live line, if any."""
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._drawn = False


def wait_and_report(
    rt: Runtime, run_id: str, timeout: float | None, as_json: bool, interval: float = 0.5
) -> int:
    """Wait for a run with live progress; print its outcome; return the exit code."""
    ctx = rt.context
    progress = Progress(sys.stderr, quiet=as_json)
    try:
        run = wait_for_run(
            run_id,
            timeout=timeout,
            interval=min(interval, timeout) if timeout else interval,
            on_update=progress.update,
            context=ctx,
        )
    except TimeoutError:
        progress.close()
        current = get_run(run_id, context=ctx)
        if as_json:
            _print_json(current)
        else:
            _err(
                f"run {run_id} is still {current.state.value} after {timeout:g} s; "
                f"it carries on in the background (`{PROG} wait {run_id}` to keep waiting)"
            )
        return EXIT_WAIT_TIMEOUT
    progress.close()
    if as_json:
        _print_json(run)
    else:
        print("\n".join(status_lines(run)))
    return EXIT_OK if run.state is RunState.COMPLETED else EXIT_FAILED


# --- commands: runs -------------------------------------------------------------------


@command_group
def _add_run_commands(sub: Subparsers) -> None:
    p = sub.add_parser(
        "run",
        help="enqueue a workflow run",
        description="Enqueue a run of workflow APP_ID and print its run_id.",
    )
    p.add_argument("app_id", metavar="APP_ID")
    p.add_argument("-i", "--input", action="append", metavar="KEY=VALUE", help="an input value")
    p.add_argument(
        "-f", "--file", action="append", metavar="KEY=PATH", help="a file_upload input (uploaded)"
    )
    p.add_argument("--draft", action="store_true", help="run the app's draft version")
    p.add_argument("--callback-url", metavar="URL", help="POST a signed event here when done")
    p.add_argument(
        "--event",
        action="append",
        metavar="TYPE",
        help="callback event filter, repeatable (e.g. workflow_run.failed, workflow_run.started)",
    )
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="echoed in callbacks")
    p.add_argument("--idempotency-key", metavar="K", help="same key+params -> the same run")
    p.add_argument("--wait", action="store_true", help="then wait for the run, like `wait`")
    p.add_argument("--timeout", type=_positive_float, metavar="S", help="with --wait: give up")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser(
        "status",
        help="show one run",
        description="Show a run's state, progress, documents, callback and history.",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--json", action="store_true", help="print the full record as JSON")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser(
        "wait",
        help="wait for a run to finish",
        description="Wait for a run. Exit 0 COMPLETED, 1 any other end state, 3 --timeout.",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--timeout", type=_positive_float, metavar="S", help="give up after S seconds")
    p.add_argument("--json", action="store_true", help="print the final record as JSON")
    p.set_defaults(handler=cmd_wait)

    p = sub.add_parser("runs", help="list recent runs", description="List recent runs.")
    p.add_argument("--state", type=_run_state, metavar="S", help="only runs in this state")
    p.add_argument("--limit", type=_positive_int, default=20, metavar="N", help="(default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_runs)

    p = sub.add_parser(
        "cancel",
        help="stop following a run",
        description=(
            "Stop polling a run and mark it CANCELED. The Hatz API has no cancel: "
            "a job already submitted keeps running (and spending credits) remotely."
        ),
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.set_defaults(handler=cmd_cancel)


def cmd_run(args: argparse.Namespace, rt: Runtime) -> int:
    """``run``: enqueue; print the run_id (then wait, with ``--wait``)."""
    inputs = parse_pairs(args.input, "--input")
    files = parse_pairs(args.file, "--file")
    metadata = parse_pairs(args.metadata, "--metadata")
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout only applies with --wait")
    run_id = enqueue_run(
        args.app_id,
        inputs,
        files=files,
        callback_url=args.callback_url,
        metadata=metadata or None,
        is_draft_app=args.draft,
        idempotency_key=args.idempotency_key,
        events=args.event,
        context=rt.context,
        celery=rt.celery,
    )
    if args.wait:
        if not args.json:
            print(run_id, file=sys.stderr)
        return wait_and_report(rt, run_id, args.timeout, args.json)
    if args.json:
        _print_json({"run_id": run_id})
    else:
        print(run_id)
        if sys.stdout.isatty():
            _err(f"queued; follow it with `{PROG} wait {run_id}`")
    return EXIT_OK


def cmd_status(args: argparse.Namespace, rt: Runtime) -> int:
    """``status``: one run's record."""
    run = get_run(args.run_id, context=rt.context)
    breaker = breaker_state(rt.context)
    if args.json:
        _print_json({**run, "breaker": breaker})
        return EXIT_OK
    print("\n".join(status_lines(run)))
    if breaker["state"] == "open" and run.state in PRE_SUBMIT_STATES:
        print(
            "note: the org-wide credit-overage breaker is OPEN: submits are paused "
            f"(next probe in {breaker.get('retry_in', 0):.0f} s); nothing is dropped"
        )
    return EXIT_OK


def cmd_wait(args: argparse.Namespace, rt: Runtime) -> int:
    """``wait``: block until the run is terminal (or ``--timeout``)."""
    get_run(args.run_id, context=rt.context)  # unknown id: error before waiting
    return wait_and_report(rt, args.run_id, args.timeout, args.json)


def cmd_runs(args: argparse.Namespace, rt: Runtime) -> int:
    """``runs``: a table of recent runs."""
    runs = list_runs(state=args.state, limit=args.limit, context=rt.context)
    if args.json:
        _print_json(runs)
        return EXIT_OK
    if not runs:
        print("no runs" + (f" in state {args.state.value}" if args.state else ""))
        return EXIT_OK
    now = time.time()
    rows = [
        [
            run.run_id,
            run.state.value,
            _clip(str(run.get("app_id") or ""), 36),
            _steps(run),
            _duration(now - float(run.get("created_at") or now)) + " ago",
            _clip(str(run.get("error") or ""), 50),
        ]
        for run in runs
    ]
    print("\n".join(_table(["RUN_ID", "STATE", "APP", "STEPS", "CREATED", "ERROR"], rows)))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, rt: Runtime) -> int:
    """``cancel``: stop polling; explain that the remote job is not stopped."""
    before = get_run(args.run_id, context=rt.context)
    if not cancel_run(args.run_id, context=rt.context, celery=rt.celery):
        now = get_run(args.run_id, context=rt.context)
        _err(f"run {args.run_id} already ended ({now.state.value}); nothing to cancel")
        return EXIT_FAILED
    run = get_run(args.run_id, context=rt.context)
    print(f"run {args.run_id} canceled: hatz-worker stopped following it (no more polls).")
    job_id = run.get("job_id")
    if job_id:
        print(
            f"The Hatz job {job_id} was already submitted and keeps running remotely "
            "(the Hatz API has no cancel); its result will not be collected."
        )
    elif before.state is RunState.SUBMITTING or before.get("submit_inflight"):
        print(
            "A submit may have been in flight: if it reached Hatz, that job keeps running "
            "remotely (the Hatz API has no cancel)."
        )
    elif before.state in PRE_SUBMIT_STATES:
        print("It had not been submitted to Hatz, so no job was started.")
    return EXIT_OK


# --- commands: apps -------------------------------------------------------------------


@command_group
def _add_app_commands(sub: Subparsers) -> None:
    p = sub.add_parser("apps", help="list apps and workflows", description="List apps.")
    p.add_argument("--name", metavar="X", help="only apps whose name matches X")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_apps)

    p = sub.add_parser("app", help="show one app and its inputs", description="Show one app.")
    p.add_argument("app_id", metavar="APP_ID")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_app)

    p = sub.add_parser(
        "query",
        help="query an App Builder app (synchronous)",
        description="POST /app/{id}/query with stream=false and print the answer.",
    )
    p.add_argument("app_id", metavar="APP_ID")
    p.add_argument("-i", "--input", action="append", metavar="KEY=VALUE", help="an input value")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_query)


def _kind(app: App) -> str:
    return "workflow" if app.is_workflow else "app"


def cmd_apps(args: argparse.Namespace, rt: Runtime) -> int:
    """``apps``: every app and workflow (paged through ``/app/list``)."""
    apps = list(rt.client.iter_apps(name=args.name))
    if args.json:
        _print_json([a.model_dump(mode="json") for a in apps])
        return EXIT_OK
    if not apps:
        print("no apps" + (f" matching {args.name!r}" if args.name else ""))
        return EXIT_OK
    rows = [
        [
            a.id,
            _kind(a),
            _clip(a.name, 40),
            _clip(", ".join(ui.variable_name for ui in a.user_inputs) or "-", 50),
        ]
        for a in apps
    ]
    print("\n".join(_table(["ID", "KIND", "NAME", "INPUTS"], rows)))
    return EXIT_OK


def cmd_app(args: argparse.Namespace, rt: Runtime) -> int:
    """``app``: one app and its ``user_inputs``."""
    app = rt.client.get_app(args.app_id)
    if args.json:
        _print_json(app.model_dump(mode="json"))
        return EXIT_OK
    print(f"{'id':<12}  {app.id}")
    print(f"{'name':<12}  {app.name}")
    print(f"{'kind':<12}  {_kind(app)}")
    if app.description:
        print(f"{'description':<12}  {_clip(app.description, 100)}")
    if app.steps is not None:
        print(f"{'steps':<12}  {len(app.steps)}")
    if not app.user_inputs:
        print(f"{'inputs':<12}  none")
        return EXIT_OK
    print("inputs:")
    rows = [
        [
            ui.variable_name,
            ui.variable_type,
            "yes" if ui.required else "no",
            _clip(ui.display_name or "", 40),
        ]
        for ui in sorted(app.user_inputs, key=lambda u: u.position)
    ]
    table = _table(["NAME", "TYPE", "REQUIRED", "DISPLAY NAME"], rows)
    print("\n".join("  " + line for line in table))
    return EXIT_OK


_ANSWER_FIELDS = ("response", "output", "answer", "content", "text", "message", "result")


def cmd_query(args: argparse.Namespace, rt: Runtime) -> int:
    """``query``: an App Builder query; prints the answer (the whole JSON with ``--json``)."""
    inputs = parse_pairs(args.input, "--input")
    result = rt.client.query_app(args.app_id, inputs).model_dump(mode="json")
    if args.json:
        _print_json(result)
        return EXIT_OK
    for name in _ANSWER_FIELDS:
        if isinstance(result.get(name), str):
            print(result[name])
            return EXIT_OK
    _print_json(result)
    return EXIT_OK


# --- commands: tools ------------------------------------------------------------------


@command_group
def _add_tool_commands(sub: Subparsers) -> None:
    p = sub.add_parser(
        "fake-hatz",
        help="serve the fake Hatz API (for local development)",
        description="Serve the fake Hatz API; options are passed to the fake server.",
        usage=f"{PROG} fake-hatz [--host 127.0.0.1] [--port P] [--api-key K] ...",
        add_help=False,
    )
    p.set_defaults(handler=cmd_fake_hatz, accepts_extra_args=True)

    p = sub.add_parser(
        "demo",
        help="run a self-contained end-to-end demo (no setup needed)",
        description="Start Redis, the fake Hatz API and a worker; run a few workflows.",
    )
    p.set_defaults(handler=cmd_demo)


def cmd_fake_hatz(args: argparse.Namespace, rt: Runtime) -> int:
    """``fake-hatz``: delegate to the fake server's ``serve(argv)``."""
    from worker.fake_hatz import serve

    try:
        return serve(list(args.extra_args))
    except SystemExit as exc:  # its own --help or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def cmd_demo(args: argparse.Namespace, rt: Runtime) -> int:
    """``demo``: :func:`worker.cli.demo.run_demo`."""
    from worker.cli.demo import run_demo

    return run_demo()


# --- entry point ----------------------------------------------------------------------


def _redis_location(rt: Runtime) -> str:
    try:
        url = rt.settings.redis_url
    except ConfigError:
        return "Redis"
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"Redis at {urlunsplit((parts.scheme, host, parts.path, '', ''))} (HATZ_REDIS_URL)"


@contextmanager
def _errors_reported(rt: Runtime, result: list[int]) -> Iterator[None]:
    try:
        yield
    except UsageError as exc:
        _err(f"error: {exc}")
        result.append(EXIT_USAGE)
    except ConfigError as exc:
        _err(str(exc))
        result.append(EXIT_USAGE)
    except (InvalidRunError, IdempotencyConflictError) as exc:
        _err(f"error: {exc}; nothing was enqueued")
        result.append(EXIT_USAGE)
    except HatzError as exc:
        hint = ""
        if isinstance(exc, HatzAuthError) and not rt.settings.api_key.get_secret_value():
            hint = " (HATZ_API_KEY is not set)"
        elif isinstance(exc, HatzTransportError):
            hint = f" (HATZ_BASE_URL is {safe_url(str(rt.settings.base_url))})"
        _err(f"error: {exc}{hint}")
        result.append(EXIT_FAILED)
    except redis.RedisError as exc:
        _err(f"error: cannot use {_redis_location(rt)}: {exc}")
        result.append(EXIT_FAILED)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        _err("interrupted")
        result.append(EXIT_INTERRUPTED)


def main(
    argv: Sequence[str] | None = None,
    *,
    settings: Settings | None = None,
    context: Context | None = None,
    celery: Celery | None = None,
) -> int:
    """Run the CLI; return the exit code. Tests inject ``settings``/``context``/``celery``."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    rt = Runtime(settings=settings, context=context, celery=celery)
    result: list[int] = []
    with _errors_reported(rt, result):
        parser = build_parser()
        try:
            args, extra = parser.parse_known_args(args_list)
        except SystemExit as exc:  # --help
            return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
        if extra and not getattr(args, "accepts_extra_args", False):
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
        args.extra_args = extra
        handler: Handler = args.handler
        try:
            result.append(handler(args, rt))
        finally:
            rt.close()
    return result[0] if result else EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
