"""``hatz-worker callbacks ...``: dead-lettered callbacks, replay, and a test event.

Registered through :data:`worker.cli.main.EXTRA_COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import sys
import time

from worker.cli.main import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    CLIParser,
    Runtime,
    Subparsers,
    UsageError,
    _clip,
    _duration,
    _print_json,
    _table,
    command_group,
)
from worker.errors import CallbackReplayError, UnsafeCallbackURLError
from worker.store.outbox import Next
from worker.taskqueue.app import publish
from worker.webhooks.delivery import failed_callbacks, replay_callback, send_test


@command_group
def _add_callback_commands(sub: Subparsers) -> None:
    p = sub.add_parser(
        "callbacks",
        help="dead-lettered callbacks, replay, test events",
        description="Inspect and replay dead-lettered callbacks; send a signed test event.",
    )
    csub = p.add_subparsers(dest="callbacks_command", metavar="COMMAND", parser_class=CLIParser)
    csub.required = True

    q = csub.add_parser(
        "failed",
        help="list dead-lettered callbacks",
        description="List callbacks that exhausted their retries or were refused.",
    )
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(handler=cmd_failed)

    q = csub.add_parser(
        "replay",
        help="re-send dead-lettered callbacks",
        description=(
            "Re-send a dead-lettered callback with the same webhook-id and a fresh "
            "timestamp and signature. It leaves the failed list once delivered."
        ),
    )
    q.add_argument("run_id", metavar="RUN_ID", nargs="?", help="the run whose callback to replay")
    q.add_argument("--all", action="store_true", help="replay every dead-lettered callback")
    q.set_defaults(handler=cmd_replay)

    q = csub.add_parser(
        "send-test",
        help="send a signed test event to a URL",
        description="POST one signed webhook.test event to URL (SSRF guard applies; no retries).",
    )
    q.add_argument("url", metavar="URL")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(handler=cmd_send_test)


def cmd_failed(args: argparse.Namespace, rt: Runtime) -> int:
    """``callbacks failed``: the dead-letter list with each last error."""
    failed = failed_callbacks(rt.context)
    if args.json:
        _print_json([f.as_dict() for f in failed])
        return EXIT_OK
    if not failed:
        print("no failed callbacks")
        return EXIT_OK
    now = time.time()
    rows = [
        [
            f.run_id,
            f.event or "-",
            _duration(now - f.failed_at) + " ago",
            _clip(f.url, 40),
            _clip(f.error, 50),
        ]
        for f in failed
    ]
    print("\n".join(_table(["RUN_ID", "EVENT", "FAILED", "URL", "LAST ERROR"], rows)))
    return EXIT_OK


def cmd_replay(args: argparse.Namespace, rt: Runtime) -> int:
    """``callbacks replay RUN_ID|--all``: restart the chains and publish their deliveries."""
    if bool(args.run_id) == bool(args.all):
        raise UsageError("give either RUN_ID or --all")
    ctx = rt.context
    run_ids = [args.run_id] if args.run_id else [f.run_id for f in failed_callbacks(ctx)]
    if not run_ids:
        print("no failed callbacks")
        return EXIT_OK
    steps: list[Next] = []
    problems = 0
    for run_id in run_ids:
        try:
            steps += replay_callback(ctx, run_id)
        except CallbackReplayError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            problems += 1
            continue
        print(f"run {run_id}: callback replay queued")
    publish(steps, rt.celery)
    return EXIT_FAILED if problems else EXIT_OK


def cmd_send_test(args: argparse.Namespace, rt: Runtime) -> int:
    """``callbacks send-test URL``: one signed test event; exit 0 on 2xx."""
    try:
        result = send_test(rt.context, args.url)
    except UnsafeCallbackURLError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    outcome = result.outcome
    if args.json:
        _print_json(
            {
                "webhook_id": result.webhook_id,
                "ok": outcome.ok,
                "status": outcome.status,
                "error": outcome.error or None,
                "latency_ms": outcome.latency_ms,
                "body": outcome.body,
            }
        )
    elif outcome.ok:
        print(
            f"delivered: HTTP {outcome.status} in {outcome.latency_ms:g} ms ({result.webhook_id})"
        )
    else:
        print(f"{PROG}: not delivered: {outcome.summary()}", file=sys.stderr)
        if outcome.body:
            print(f"answer: {_clip(outcome.body, 200)}", file=sys.stderr)
    return EXIT_OK if outcome.ok else EXIT_FAILED
