"""``hatz-worker callbacks``: dead-lettered callbacks, their replay, and a signed test event."""

from __future__ import annotations

import sys
import time

import click

from worker.cli.output import clip, duration, print_error, print_json, table
from worker.cli.params import CommandGroup, json_option
from worker.cli.runtime import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Runtime
from worker.errors import (
    BatchNotFoundError,
    CallbackReplayError,
    RunNotFoundError,
    UnsafeCallbackURLError,
)
from worker.store.outbox import Next
from worker.taskqueue.app import publish
from worker.webhooks.batch_delivery import (
    BATCH_EVENT,
    failed_batch_callbacks,
    replay_batch_callback,
)
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
    """``callbacks failed``: the dead-letter list (runs', then batches') with each last error."""
    failed = failed_callbacks(rt.context)
    failed_batches = failed_batch_callbacks(rt.context)
    if as_json:
        print_json([f.as_dict() for f in failed] + [b.as_dict() for b in failed_batches])
        return EXIT_OK
    if not failed and not failed_batches:
        print("no failed callbacks")
        return EXIT_OK
    now = time.time()
    if failed:
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
    if failed_batches:
        if failed:
            print()
        rows = [
            [
                b.batch_id,
                BATCH_EVENT,
                duration(now - b.failed_at) + " ago",
                clip(b.url, 40),
                clip(b.error, 50),
            ]
            for b in failed_batches
        ]
        print("\n".join(table(["BATCH_ID", "EVENT", "FAILED", "URL", "LAST ERROR"], rows)))
    return EXIT_OK


@callbacks_group.command(
    "replay",
    short_help="re-send dead-lettered callbacks",
    help=(
        "Re-send the dead-lettered callback of run RUN_ID, or of a batch given its id "
        "(or of every one, with --all) with the same webhook-id and a fresh timestamp "
        "and signature. It leaves the failed list once delivered."
    ),
)
@click.argument("run_id", metavar="[RUN_ID]", required=False)
@click.option("--all", "replay_all", is_flag=True, help="replay every dead-lettered callback")
@click.pass_obj
def replay_command(rt: Runtime, run_id: str | None, replay_all: bool) -> int:
    """``callbacks replay RUN_ID|BATCH_ID|--all``: restart chains, publish their deliveries."""
    if bool(run_id) == replay_all:
        raise click.UsageError("give either RUN_ID or --all (a batch id works as RUN_ID too)")
    ctx = rt.context
    if run_id:
        targets = [run_id]
    else:
        targets = [f.run_id for f in failed_callbacks(ctx)]
        targets += [b.batch_id for b in failed_batch_callbacks(ctx)]
    if not targets:
        print("no failed callbacks")
        return EXIT_OK
    steps: list[Next] = []
    problems = 0
    for one in targets:
        try:
            steps += _replay_one(rt, one)
        except (CallbackReplayError, RunNotFoundError) as exc:
            print_error(str(exc))
            problems += 1
    publish(steps, rt.celery)
    return EXIT_FAILED if problems else EXIT_OK


def _replay_one(rt: Runtime, target: str) -> list[Next]:
    """Replay a run's callback, or else the batch's of that id; say which was queued."""
    ctx = rt.context
    if ctx.ledger.get(target) is not None:
        steps = replay_callback(ctx, target)
        print(f"run {target}: callback replay queued")
        return steps
    try:
        steps = replay_batch_callback(ctx, target)
    except BatchNotFoundError:
        raise RunNotFoundError(f"no run or batch {target!r} (unknown or expired)") from None
    print(f"batch {target}: callback replay queued")
    return steps


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
