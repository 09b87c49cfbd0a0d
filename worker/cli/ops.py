"""``hatz-worker`` commands for operators: ``doctor``, ``health``, ``metrics-server``.

Registered through :data:`worker.cli.main.EXTRA_COMMAND_MODULES`. The logic lives in
:mod:`worker.ops.doctor`, :mod:`worker.ops.health` and :mod:`worker.ops.metrics`.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from types import FrameType

from config import ConfigError
from worker.cli.main import EXIT_FAILED, EXIT_OK, Runtime, Subparsers, command_group
from worker.context import redis_from_settings
from worker.ops import health
from worker.ops.doctor import Check, Level, check_settings, exit_code, run_doctor
from worker.store.keys import Keys

_MARK = {Level.OK: "ok  ", Level.WARN: "WARN", Level.FAIL: "FAIL"}


@command_group
def _add_ops_commands(sub: Subparsers) -> None:
    p = sub.add_parser(
        "doctor",
        help="check settings, Redis, timing and Hatz API access",
        description="Check the deployment; exit 1 if any check fails (warnings do not).",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_doctor)

    p = sub.add_parser(
        "health",
        help="liveness probe of a worker or beat (exit 0 alive, 1 not)",
        description=(
            "Exit 0 if the process's heartbeat in Redis is fresh, else 1. "
            "For compose healthchecks and Kubernetes exec probes."
        ),
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--worker", action="store_true", help="a worker on this host")
    which.add_argument("--beat", action="store_true", help="the beat process")
    p.add_argument(
        "--name", metavar="NODE", help="worker node name (default celery@<this hostname>)"
    )
    p.add_argument(
        "--max-age",
        type=float,
        metavar="S",
        help="oldest acceptable heartbeat, s (default 3 x HATZ_HEARTBEAT_INTERVAL)",
    )
    p.set_defaults(handler=cmd_health)

    p = sub.add_parser(
        "metrics-server",
        help="serve Prometheus metrics for the whole deployment",
        description="Serve /metrics (read from Redis at scrape time) until stopped.",
    )
    p.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=9808, help="port (default 9808)")
    p.set_defaults(handler=cmd_metrics_server)


def report_lines(checks: list[Check]) -> list[str]:
    """The doctor's report, one line per check, and a verdict."""
    width = max(len(c.name) for c in checks)
    lines = [f"{_MARK[c.level]}  {c.name:<{width}}  {c.message}" for c in checks]
    fails = sum(c.level is Level.FAIL for c in checks)
    warns = sum(c.level is Level.WARN for c in checks)
    verdict = "all good" if not fails and not warns else f"{fails} failed, {warns} warning(s)"
    return [*lines, "", verdict]


def cmd_doctor(args: argparse.Namespace, rt: Runtime) -> int:
    """``doctor``: run every check, print the report."""
    try:
        checks = run_doctor(rt.settings)
    except ConfigError:
        _, failed = check_settings()
        checks = [failed]
    if args.json:
        print(
            json.dumps([{"check": c.name, "level": c.level, "message": c.message} for c in checks])
        )
    else:
        print("\n".join(report_lines(checks)))
    return exit_code(checks)


def cmd_health(args: argparse.Namespace, rt: Runtime) -> int:
    """``health``: 0 when the heartbeat is fresh."""
    settings = rt.settings
    name = health.BEAT if args.beat else health.worker_name(args.name or health.default_nodename())
    max_age = args.max_age or settings.heartbeat_interval * health.MAX_AGE_INTERVALS
    client = redis_from_settings(settings)
    try:
        ok, message = health.probe(client, Keys(settings.key_prefix), name, max_age)
    finally:
        client.close()
    print(message)
    return EXIT_OK if ok else EXIT_FAILED


def cmd_metrics_server(args: argparse.Namespace, rt: Runtime) -> int:
    """``metrics-server``: serve until SIGTERM/SIGINT."""
    from worker.ops.metrics import start_metrics_server

    settings = rt.settings
    client = redis_from_settings(settings)
    server, _thread = start_metrics_server(
        client,
        Keys(settings.key_prefix),
        host=args.host,
        port=args.port,
        sweep_grace=settings.sweep_grace,
    )
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    print(f"serving Prometheus metrics on http://{args.host}:{args.port}/metrics", flush=True)
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        client.close()
    return EXIT_OK
