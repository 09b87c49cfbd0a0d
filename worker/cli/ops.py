"""``hatz-worker doctor``, ``health`` and ``metrics-server``: commands for operators.

The logic lives in :mod:`worker.ops.doctor`, :mod:`worker.ops.health` and
:mod:`worker.ops.metrics`; these commands print it and turn it into exit codes.
"""

from __future__ import annotations

import json
import signal
import threading
from types import FrameType

import click

from config import ConfigError
from worker.cli.output import print_error
from worker.cli.params import json_option
from worker.cli.runtime import EXIT_FAILED, EXIT_OK, Runtime
from worker.context import redis_from_settings
from worker.ops import health
from worker.ops.doctor import Check, Level, check_settings, exit_code, run_doctor
from worker.store.keys import Keys

_MARK = {Level.OK: "ok  ", Level.WARN: "WARN", Level.FAIL: "FAIL"}


def report_lines(checks: list[Check]) -> list[str]:
    """The doctor's report, one line per check, and a verdict."""
    width = max(len(c.name) for c in checks)
    lines = [f"{_MARK[c.level]}  {c.name:<{width}}  {c.message}" for c in checks]
    fails = sum(c.level is Level.FAIL for c in checks)
    warns = sum(c.level is Level.WARN for c in checks)
    verdict = "all good" if not fails and not warns else f"{fails} failed, {warns} warning(s)"
    return [*lines, "", verdict]


@click.command(
    "doctor",
    short_help="check settings, Redis, timing and Hatz API access",
    help="Check the deployment; exit 1 if any check fails (warnings do not).",
)
@json_option()
@click.pass_obj
def doctor_command(rt: Runtime, as_json: bool) -> int:
    """``doctor``: run every check, print the report."""
    try:
        checks = run_doctor(rt.settings)
    except ConfigError:
        _, failed = check_settings()
        checks = [failed]
    if as_json:
        print(
            json.dumps([{"check": c.name, "level": c.level, "message": c.message} for c in checks])
        )
    else:
        print("\n".join(report_lines(checks)))
    return exit_code(checks)


@click.command(
    "health",
    short_help="liveness probe of a worker or beat (exit 0 alive, 1 not)",
    help=(
        "Exit 0 if the process's heartbeat in Redis is fresh, else 1. "
        "For compose healthchecks and Kubernetes exec probes."
    ),
    options_metavar="(--worker | --beat) [OPTIONS]",
)
@click.option("--worker", is_flag=True, help="a worker on this host")
@click.option("--beat", is_flag=True, help="the beat process")
@click.option("--name", metavar="NODE", help="worker node name (default celery@<this hostname>)")
@click.option(
    "--max-age",
    type=float,
    metavar="S",
    help="oldest acceptable heartbeat, s (default 3 x HATZ_HEARTBEAT_INTERVAL)",
)
@click.pass_obj
def health_command(
    rt: Runtime, worker: bool, beat: bool, name: str | None, max_age: float | None
) -> int:
    """``health --worker|--beat``: 0 when the heartbeat is fresh."""
    if worker == beat:
        raise click.UsageError(
            "--beat is not allowed with --worker"
            if beat
            else "one of --worker or --beat is required",
            click.get_current_context(),
        )
    settings = rt.settings
    process = health.BEAT if beat else health.worker_name(name or health.default_nodename())
    max_age = max_age or settings.heartbeat_interval * health.MAX_AGE_INTERVALS
    client = redis_from_settings(settings)
    try:
        ok, message = health.probe(client, Keys(settings.key_prefix), process, max_age)
    finally:
        client.close()
    print(message)
    return EXIT_OK if ok else EXIT_FAILED


@click.command(
    "metrics-server",
    short_help="serve Prometheus metrics for the whole deployment",
    help="Serve /metrics (read from Redis at scrape time) until stopped.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    metavar="HOST",
    help="bind address (default 127.0.0.1; 0.0.0.0 to expose it: it has no authentication)",
)
@click.option("--port", type=int, default=9808, metavar="PORT", help="port (default 9808)")
@click.pass_obj
def metrics_server_command(rt: Runtime, host: str, port: int) -> int:
    """``metrics-server``: serve until SIGTERM/SIGINT."""
    from worker.ops.metrics import start_metrics_server

    settings = rt.settings
    client = redis_from_settings(settings)
    try:
        server, _thread = start_metrics_server(
            client,
            Keys(settings.key_prefix),
            host=host,
            port=port,
            sweep_grace=settings.sweep_grace,
        )
    except OSError as exc:  # the port is taken, or the address is not ours
        client.close()
        print_error(f"error: cannot serve metrics on {host}:{port}: {exc.strerror or exc}")
        return EXIT_FAILED
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    print(f"serving Prometheus metrics on http://{host}:{port}/metrics", flush=True)
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        client.close()
    return EXIT_OK


COMMANDS = (doctor_command, health_command, metrics_server_command)
