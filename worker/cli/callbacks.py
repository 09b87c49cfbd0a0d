"""``hatz-worker callbacks``: dead-lettered callbacks, their replay, and a signed test event."""

from __future__ import annotations

import sys
import time

import click

from worker.cli.output import clip, duration, print_error, print_json, table
from worker.cli.params import CommandGroup, json_option
from worker.cli.runtime import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Runtime
from worker.errors import CallbackReplayError, UnsafeCallbackURLError
from worker.store.outbox import Next
from worker.taskqueue.app import publish
from worker.webhooks.delivery import failed_callbacks, replay_callback, send_test


@click.group(
    "callbacks",
    cls=CommandGroup,
    short_help="dead-lettered callbacks, replay, test events",
)
def callbacks_group() -> None:
    """Inspect and replay dead-lettered callbacks; send a signed test event."""


@callbacks_group.command(
    "failed",
    short_help="list dead-lettered callbacks",
    help="List callbacks that exhausted their retries or were refused.",
)
@json_option()
@click.pass_obj
def failed_command(rt: Runtime, as_json: bool) -> int:
    """``callbacks failed``: the dead-letter list with each last error."""
    failed = failed_callbacks(rt.context)
    if as_json:
        print_json([f.as_dict() for f in failed])
        return EXIT_OK
    if not failed:
        print("no failed callbacks")
        return EXIT_OK
    now = time.time()
    rows = [
        [
            f.run_id,
            f.event or "-",
            duration(now - f.failed_at) + " ago",
            clip(f.url, 40),
            clip(f.error, 50),
        ]
        for f in failed
    ]
    print("\n".join(table(["RUN_ID", "EVENT", "FAILED", "URL", "LAST ERROR"], rows)))
    return EXIT_OK


@callbacks_group.command(
    "replay",
    short_help="re-send dead-lettered callbacks",
    help=(
        "Re-send the dead-lettered callback of run RUN_ID (or of every run, with --all) "
        "with the same webhook-id and a fresh timestamp and signature. It leaves the "
        "failed list once delivered."
    ),
)
@click.argument("run_id", metavar="[RUN_ID]", required=False)
@click.option("--all", "replay_all", is_flag=True, help="replay every dead-lettered callback")
@click.pass_obj
def replay_command(rt: Runtime, run_id: str | None, replay_all: bool) -> int:
    """``callbacks replay RUN_ID|--all``: restart the chains and publish their deliveries."""
    if bool(run_id) == replay_all:
        raise click.UsageError("give either RUN_ID or --all")
    ctx = rt.context
    run_ids = [run_id] if run_id else [f.run_id for f in failed_callbacks(ctx)]
    if not run_ids:
        print("no failed callbacks")
        return EXIT_OK
    steps: list[Next] = []
    problems = 0
    for one in run_ids:
        try:
            steps += replay_callback(ctx, one)
        except CallbackReplayError as exc:
            print_error(str(exc))
            problems += 1
            continue
        print(f"run {one}: callback replay queued")
    publish(steps, rt.celery)
    return EXIT_FAILED if problems else EXIT_OK


@callbacks_group.command(
    "send-test",
    short_help="send a signed test event to a URL",
    help="POST one signed webhook.test event to URL (SSRF guard applies; no retries).",
)
@click.argument("url", metavar="URL")
@json_option()
@click.pass_obj
def send_test_command(rt: Runtime, url: str, as_json: bool) -> int:
    """``callbacks send-test URL``: one signed test event; exit 0 on 2xx."""
    try:
        result = send_test(rt.context, url)
    except UnsafeCallbackURLError as exc:
        print_error(f"error: {exc}")
        return EXIT_USAGE
    outcome = result.outcome
    if as_json:
        print_json(
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
        print_error(f"not delivered: {outcome.summary()}")
        if outcome.body:
            print(f"answer: {clip(outcome.body, 200)}", file=sys.stderr)
    return EXIT_OK if outcome.ok else EXIT_FAILED


COMMANDS = (callbacks_group,)
