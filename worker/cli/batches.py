"""``hatz-worker batch``, ``schedules`` and ``breaker``: batches of runs, the batches beat
starts on a schedule, and the org-wide credit-overage breaker that paces them."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import Any

import click

from worker.batches.create import create_batch
from worker.batches.records import list_batches
from worker.batches.request import BatchRequest
from worker.batches.results import write_results
from worker.batches.schedules import fire, load_schedules, schedule_state
from worker.batches.status import BatchStatus, batch_status
from worker.cli.output import ProgressDrawer, clip, duration, print_error, print_json, table
from worker.cli.params import (
    CommandGroup,
    json_option,
    parse_pairs,
    positive_float,
    positive_int,
)
from worker.cli.runtime import EXIT_FAILED, EXIT_OK, EXIT_USAGE, EXIT_WAIT_TIMEOUT, PROG, Runtime
from worker.errors import InvalidBatchError, ScheduleError
from worker.limits import breaker
from worker.taskqueue.app import publish

_BAR_WIDTH = 30
#: How often a followed batch is read again, s.
FOLLOW_INTERVAL = 0.5


def progress_line(status: BatchStatus, now: float | None = None) -> str:
    """``[#####-----] 120/200  queued 70  running 10  completed 115  failed 5  ETA 12.0s``."""
    c = status.counts
    total = max(1, c["total"])
    done = status.done()
    filled = int(_BAR_WIDTH * done / total)
    eta = status.eta(now)
    eta_text = "done" if status.finished else ("?" if eta is None else duration(eta))
    return (
        f"[{'#' * filled}{'-' * (_BAR_WIDTH - filled)}] {done}/{c['total']}  "
        f"queued {c['queued']}  running {c['running']}  completed {c['completed']}  "
        f"failed {c['failed']}  ETA {eta_text}"
    )


def status_text(status: BatchStatus) -> list[str]:
    """A human view of a batch (no URLs)."""
    r = status.record
    lines = [
        f"{'batch':<10}  {status.batch_id}",
        f"{'state':<10}  {r.get('state')}",
        f"{'app':<10}  {r.get('app_id')}",
        f"{'source':<10}  {r.get('source') or '(fixed inputs)'}",
        f"{'limit':<10}  {r.get('max_in_flight')} in flight (now {status.in_flight})",
        f"{'progress':<10}  {progress_line(status)}",
    ]
    if r.get("schedule"):
        lines.append(f"{'schedule':<10}  {r['schedule']}")
    if r.get("batch_key"):
        lines.append(f"{'batch key':<10}  {r['batch_key']} ({r.get('reused') or 0} row(s) reused)")
    if r.get("skipped"):
        rows = ", ".join(str(b["row"]) for b in r.get("bad_rows") or [])
        lines.append(f"{'skipped':<10}  {r['skipped']} bad row(s): {rows}")
    if r.get("callback_url"):
        lines.append(f"{'callback':<10}  {r.get('callback_state') or 'not yet due'}")
    return lines


def follow(rt: Runtime, batch_id: str, timeout: float | None) -> BatchStatus:
    """Redraw the progress bar on stderr until the batch finished (TimeoutError at ``timeout``)."""
    drawer = ProgressDrawer(sys.stderr)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            status = batch_status(rt.context, batch_id)
            drawer.show([progress_line(status)])
            if status.finished:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(batch_id)
            time.sleep(FOLLOW_INTERVAL)
    finally:
        drawer.finish()


def _bad(problems: list[str]) -> int:
    for problem in problems:
        print_error(problem)
    return EXIT_USAGE


# --- batch ------------------------------------------------------------------------------


@click.group(
    "batch",
    cls=CommandGroup,
    short_help="run one workflow over many inputs (CSV, JSONL, folder)",
    subcommand_metavar="ACTION [ARGS]...",
)
def batch_group() -> None:
    """Run one workflow over many inputs (CSV, JSONL, folder)."""


@batch_group.command(
    "run",
    short_help="validate every row, then start the batch",
    help=(
        "Start a batch of runs of APP_ID, one per row of SOURCE (.csv, .jsonl or a folder). "
        "Every row is validated first; prints the batch_id."
    ),
)
@click.argument("source", metavar="[SOURCE]", required=False)
@click.option("--app", required=True, metavar="APP_ID")
@click.option(
    "-i", "--input", "inputs", multiple=True, metavar="K=V", help="fixed input, every row"
)
@click.option("--file-input", metavar="VAR", help="the column/input that holds a local file")
@click.option("--callback-url", metavar="URL", help="one signed batch.completed event")
@click.option("--run-callback-url", metavar="URL", help="every run's own callback")
@click.option("--max-in-flight", callback=positive_int, metavar="N", help="runs at once")
@click.option("--batch-key", metavar="K", help="resume: rows completed under K are reused")
@click.option(
    "--on-bad-rows",
    type=click.Choice(["skip", "abort"]),
    default="abort",
    help="skip invalid rows, or start nothing (default abort)",
)
@click.option("--wait", is_flag=True, help="follow the batch until it finishes")
@click.option("--timeout", callback=positive_float, metavar="S", help="with --wait: give up")
@json_option()
@click.pass_obj
def batch_run_command(
    rt: Runtime,
    /,
    source: str | None,
    app: str,
    inputs: tuple[str, ...],
    wait: bool,
    timeout: float | None,
    as_json: bool,
    **fields: Any,
) -> int:
    """``batch run``: validate, create, publish; print the batch id (then follow it).

    ``fields``: the other options, named as :class:`BatchRequest`'s fields.
    """
    if timeout is not None and not wait:
        raise click.UsageError("--timeout only applies with --wait")
    try:
        batch_id, steps = create_batch(
            rt.context,
            BatchRequest(app, source, inputs=parse_pairs(inputs, "--input"), **fields),
        )
    except InvalidBatchError as exc:
        return _bad([*exc.problems, "nothing was enqueued"])
    publish(steps, rt.celery)
    return _report_started(rt, batch_id, wait=wait, timeout=timeout, as_json=as_json)


def _report_started(
    rt: Runtime, batch_id: str, *, wait: bool, timeout: float | None, as_json: bool
) -> int:
    """Print the new batch (skipped rows on stderr), or follow it with ``--wait``."""
    status = batch_status(rt.context, batch_id)
    if status.record.get("skipped") and not as_json:
        for bad in status.record.get("bad_rows") or []:
            print_error(f"skipped row {bad['row']}: {'; '.join(bad['problems'])}")
    if not wait:
        if as_json:
            print_json({"batch_id": batch_id, "total": status.counts["total"]})
        else:
            print(batch_id)
        return EXIT_OK
    if not as_json:
        print(batch_id, file=sys.stderr)
    try:
        final = follow(rt, batch_id, timeout)
    except TimeoutError:
        print_error(f"batch {batch_id} still running after {timeout:g} s; it carries on")
        return EXIT_WAIT_TIMEOUT
    if as_json:
        print_json(final.as_dict())
    else:
        print("\n".join(status_text(final)))
    return EXIT_OK if final.counts["failed"] == 0 else EXIT_FAILED


@batch_group.command("status", short_help="a batch's progress", help="Show a batch.")
@click.argument("batch_id", metavar="BATCH_ID")
@click.option("--follow", "follow_it", is_flag=True, help="live progress bar until it finishes")
@json_option()
@click.pass_obj
def batch_status_command(rt: Runtime, batch_id: str, follow_it: bool, as_json: bool) -> int:
    """``batch status``: counts, ETA and a progress bar (live with ``--follow``)."""
    status = batch_status(rt.context, batch_id)
    if follow_it and not status.finished:
        status = follow(rt, batch_id, None)
    if as_json:
        print_json(status.as_dict())
    else:
        print("\n".join(status_text(status)))
    return EXIT_OK


@batch_group.command(
    "results",
    short_help="write one line per row",
    help="Write each row's status, outputs and document URLs to a .csv or .jsonl.",
)
@click.argument("batch_id", metavar="BATCH_ID")
@click.option("--out", required=True, metavar="FILE", help="results.csv or results.jsonl")
@click.option("--download", metavar="DIR", help="also fetch every document into DIR")
@click.pass_obj
def batch_results_command(rt: Runtime, batch_id: str, out: str, download: str | None) -> int:
    """``batch results``: one line per row to ``--out``."""
    try:
        count = write_results(rt.context, batch_id, out, download=download)
    except InvalidBatchError as exc:
        return _bad(exc.problems)
    print(f"{count} row(s) written to {out}")
    return EXIT_OK


@batch_group.command("list", short_help="recent batches", help="List recent batches.")
@click.option("--limit", default="20", callback=positive_int, metavar="N", help="(default 20)")
@json_option()
@click.pass_obj
def batch_list_command(rt: Runtime, limit: int, as_json: bool) -> int:
    """``batch list``: recent batches."""
    batches = list_batches(rt.context, limit=limit)
    if as_json:
        print_json(batches)
        return EXIT_OK
    if not batches:
        print("no batches")
        return EXIT_OK
    rows = [
        [
            str(b["batch_id"]),
            str(b.get("state")),
            str(b.get("total")),
            str(b.get("schedule") or "-"),
            datetime.fromtimestamp(float(b["created_at"]), UTC).strftime("%Y-%m-%d %H:%M:%S"),
        ]
        for b in batches
    ]
    print("\n".join(table(["BATCH_ID", "STATE", "ROWS", "SCHEDULE", "CREATED (UTC)"], rows)))
    return EXIT_OK


# --- schedules ----------------------------------------------------------------------------


@click.group(
    "schedules",
    cls=CommandGroup,
    short_help="batches started by celery beat",
    subcommand_metavar="ACTION [ARGS]...",
)
def schedules_group() -> None:
    """Batches started by celery beat."""


@schedules_group.command("list", short_help="declared schedules and their last firing")
@json_option()
@click.pass_obj
def schedules_list_command(rt: Runtime, as_json: bool) -> int:
    """Declared schedules and their last firing."""
    schedules = load_schedules(rt.settings)
    states = {s.name: schedule_state(rt.context, s.name) for s in schedules}
    if as_json:
        print_json([{**vars(s), "state": states[s.name]} for s in schedules])
        return EXIT_OK
    if not schedules:
        print("no schedules (set HATZ_SCHEDULES_FILE or HATZ_SCHEDULES)")
        return EXIT_OK
    rows = [
        [
            s.name,
            "yes" if s.enabled else "no",
            s.when(),
            s.app_id,
            s.overlap,
            states[s.name].get("last_outcome", "-"),
            states[s.name].get("last_batch", "-"),
            _last_error(states[s.name]),
        ]
        for s in schedules
    ]
    headers = ["NAME", "ENABLED", "WHEN", "APP", "OVERLAP", "LAST", "LAST BATCH", "LAST ERROR"]
    print("\n".join(table(headers, rows)))
    return EXIT_OK


def _last_error(state: dict[str, str]) -> str:
    """The schedule's last error while its last firing failed (with when), else '-'."""
    if state.get("last_outcome") != "error" or not state.get("last_error"):
        return "-"
    at = float(state.get("last_error_at") or state.get("last_at") or time.time())
    return f"{duration(time.time() - at)} ago: {clip(state['last_error'], 60)}"


@schedules_group.command("validate", short_help="check HATZ_SCHEDULES_FILE / HATZ_SCHEDULES")
@click.pass_obj
def schedules_validate_command(rt: Runtime) -> int:
    """Check HATZ_SCHEDULES_FILE / HATZ_SCHEDULES: exit 0 when every declaration is valid."""
    try:
        schedules = load_schedules(rt.settings)
    except ScheduleError as exc:
        return _bad(str(exc).split("; "))
    print(f"{len(schedules)} schedule(s) valid")
    return EXIT_OK


@schedules_group.command("run-now", short_help="fire a schedule now (the overlap policy applies)")
@click.argument("name", metavar="NAME")
@click.pass_obj
def schedules_run_now_command(rt: Runtime, name: str) -> int:
    """Fire schedule NAME now (the overlap policy applies); print the batch id."""
    try:
        result = fire(rt.context, name, reason="manual")
    except ScheduleError as exc:
        return _bad([str(exc)])
    publish(result.steps, rt.celery)
    if result.outcome != "fired":
        print_error(
            f"schedule {name}: {result.outcome}{': ' + result.error if result.error else ''}"
        )
        return EXIT_FAILED
    print(result.batch_id)
    return EXIT_OK


# --- breaker ------------------------------------------------------------------------------


@click.command(
    "breaker",
    short_help="the org-wide credit-overage breaker",
    help="Show the credit-overage breaker; --reset closes it by hand.",
)
@click.option("--reset", is_flag=True, help="close it (credits were added)")
@json_option()
@click.pass_obj
def breaker_command(rt: Runtime, reset: bool, as_json: bool) -> int:
    """``breaker``: state, backoff, last overage."""
    if reset and breaker.reset(rt.context):
        print_error("breaker closed by hand")
    state = breaker.breaker_state(rt.context)
    if as_json:
        print_json(state)
        return EXIT_OK
    if state["state"] != breaker.OPEN:
        print("credit-overage breaker: closed (submits flow)")
        return EXIT_OK
    print(
        f"credit-overage breaker: OPEN, next probe in {duration(state['retry_in'])} "
        f"({int(state.get('failures') or 0)} overage(s) in a row); submits pause, polls go on"
    )
    if state.get("last_error"):
        print(f"last: {state['last_error']}")
    print(f"`{PROG} breaker --reset` closes it by hand")
    return EXIT_OK


COMMANDS = (batch_group, schedules_group, breaker_command)
