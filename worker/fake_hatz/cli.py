"""Run the fake Hatz server in the foreground: ``python -m worker.fake_hatz --port 8765``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from types import FrameType

from .fake import DEFAULT_MAX_UPLOAD_BYTES, FakeHatz
from .faults import ENDPOINTS, FaultConfig
from .seed import seed_default_apps


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of :func:`serve`."""
    parser = argparse.ArgumentParser(
        prog="fake-hatz",
        description="Serve a fake Hatz AI API (workflows and App Builder) for tests and demos.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    add("--port", type=int, default=8765, help="TCP port; 0 picks a free one (default: 8765)")
    add("--api-key", default="test-key", help="the accepted X-API-Key (default: test-key)")
    add("--seed", type=int, default=0, help="seed of the fault injection (default: 0)")
    add("--no-default-apps", action="store_true", help="start with no apps")
    add("--duration", type=float, default=1.0, help="default workflows' running time, s")
    add("--pending-seconds", type=float, default=0.2, help="default workflows' pending time, s")
    add("--latency", type=float, default=0.0, help="seconds added to every response")
    add("--error-rate", type=float, default=0.0, help="fraction of 500/502/503 answers")
    add("--timeout-rate", type=float, default=0.0, help="fraction of requests never answered")
    add("--hang-seconds", type=float, default=5.0, help="how long unanswered requests hang")
    add("--rate-limit-rate", type=float, default=0.0, help="fraction of plain 429 answers")
    add("--overage", action="store_true", help="credit overage on: submits get 429")
    add("--overage-rate", type=float, default=0.0, help="fraction of submits with overage 429")
    add(
        "--fault-after-create-rate",
        type=float,
        default=0.0,
        help="submits that 502 after creating the job",
    )
    add("--lose-jobs", type=float, default=0.0, help="fraction of jobs that vanish (404)")
    add(
        "--fault-endpoints",
        default="",
        help="comma-separated endpoints faults apply to (default: all of "
        + ",".join(sorted(ENDPOINTS))
        + ")",
    )
    add("--call-log-size", type=int, default=10_000, help="calls kept in the call log")
    add("--max-upload-bytes", type=int, default=DEFAULT_MAX_UPLOAD_BYTES, help="upload size cap")
    return parser


def serve(argv: list[str] | None = None) -> int:
    """Start the fake, print its URL, and serve until SIGINT or SIGTERM; return 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    endpoints = [e.strip() for e in args.fault_endpoints.split(",") if e.strip()]
    try:
        faults = FaultConfig(
            latency=args.latency,
            error_rate=args.error_rate,
            timeout_rate=args.timeout_rate,
            hang_seconds=args.hang_seconds,
            rate_limit_rate=args.rate_limit_rate,
            overage=args.overage,
            overage_rate=args.overage_rate,
            fault_after_create_rate=args.fault_after_create_rate,
            lose_jobs=args.lose_jobs,
            endpoints=endpoints or None,
        )
        fake = FakeHatz(
            api_key=args.api_key,
            host=args.host,
            port=args.port,
            seed=args.seed,
            faults=faults,
            call_log_size=args.call_log_size,
            max_upload_bytes=args.max_upload_bytes,
        )
        if not args.no_default_apps:
            seed_default_apps(fake, duration=args.duration, pending_seconds=args.pending_seconds)
    except ValueError as exc:
        parser.error(str(exc))
    stop_requested = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        # Only set a flag: a signal handler must not take locks the main thread may hold.
        nonlocal stop_requested
        stop_requested = True

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, request_stop)
    try:
        try:
            fake.start()
        except OSError as exc:  # the port is taken, or the address is not ours
            print(
                f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 1
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(
                f"warning: listening on {args.host}, not loopback only; "
                "the fake has no real security",
                file=sys.stderr,
            )
        print(f"Fake Hatz API listening on {fake.url}", flush=True)
        print(f"API key: {args.api_key}   admin: {fake.root_url}/_fake/health", flush=True)
        while not stop_requested:
            time.sleep(0.1)
    finally:
        fake.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print("Fake Hatz API stopped", flush=True)
    return 0
