"""``hatz-worker`` commands for batches, schedules and the credit-overage breaker.

Registered through :data:`worker.cli.main.EXTRA_COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

from worker.batches.create import create_batch
from worker.batches.records import list_batches
from worker.batches.request import BatchRequest
from worker.batches.results import write_results
from worker.batches.schedules import fire, load_schedules, schedule_state
from worker.batches.status import BatchStatus, batch_status
from worker.cli.main import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_WAIT_TIMEOUT,
    PROG,
    Runtime,
    Subparsers,
    UsageError,
    _duration,
    _err,
    _positive_float,
    _positive_int,
    _print_json,
    _table,
    command_group,
    parse_pairs,
)
from worker.errors import InvalidBatchError, ScheduleError
from worker.limits import breaker
from worker.taskqueue.app import publish

_BAR_WIDTH = 30


def progress_line(status: BatchStatus, now: float | None = None) -> str:
    """``[#####-----] 120/200  queued 70  running 10  completed 115  failed 5  ETA 12.0s``."""
    c = status.counts
    total = max(1, c["total"])
    done = status.done()
    filled = int(_BAR_WIDTH * done / total)
    eta = status.eta(now)
    eta_text = "done" if status.finished else ("?" if eta is None else _duration(eta))
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


def _follow(rt: Runtime, batch_id: str, timeout: float | None, stream: TextIO) -> BatchStatus:
    """Redraw the progress line until the batch finished (TimeoutError at ``timeout``)."""
    tty = stream.isatty()
    deadline = None if timeout is None else time.monotonic() + timeout
    last = ""
    while True:
        status = batch_status(rt.context, batch_id)
        line = progress_line(status)
        if tty:
            stream.write("\r\x1b[2K" + line)
            stream.flush()
        elif line != last:
            stream.write(line + "\n")
            stream.flush()
        last = line
        if status.finished:
            if tty:
                stream.write("\n")
            return status
        if deadline is not None and time.monotonic() >= deadline:
            if tty:
                stream.write("\n")
            raise TimeoutError(batch_id)
        time.sleep(0.5)


def _bad(problems: list[str]) -> int:
    for problem in problems:
        _err(problem)
    return EXIT_USAGE


# --- batch ------------------------------------------------------------------------------


@command_group
def _add_batch_commands(sub: Subparsers) -> None:
    batch = sub.add_parser("batch", help="run one workflow over many inputs (CSV, JSONL, folder)")
    bsub = batch.add_subparsers(dest="batch_command", metavar="ACTION", required=True)

    p = bsub.add_parser(
        "run",
        help="validate every row, then start the batch",
        description=(
            "Start a batch of runs of APP_ID, one per row of SOURCE (.csv, .jsonl or a folder). "
            "Every row is validated first; prints the batch_id."
        ),
    )
    p.add_argument("source", metavar="SOURCE", nargs="?", help="CSV/JSONL file or folder")
    p.add_argument("--app", required=True, metavar="APP_ID")
    p.add_argument("-i", "--input", action="append", metavar="K=V", help="fixed input, every row")
    p.add_argument("--file-input", metavar="VAR", help="the column/input that holds a local file")
    p.add_argument("--callback-url", metavar="URL", help="one signed batch.completed event")
    p.add_argument("--run-callback-url", metavar="URL", help="every run's own callback")
    p.add_argument("--max-in-flight", type=_positive_int, metavar="N", help="runs at once")
    p.add_argument("--batch-key", metavar="K", help="resume: rows completed under K are reused")
    p.add_argument("--on-bad-rows", choices=["skip", "abort"], default="abort")
    p.add_argument("--wait", action="store_true", help="follow the batch until it finishes")
    p.add_argument("--timeout", type=_positive_float, metavar="S", help="with --wait: give up")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_batch_run)

    p = bsub.add_parser("status", help="a batch's progress", description="Show a batch.")
    p.add_argument("batch_id", metavar="BATCH_ID")
    p.add_argument("--follow", action="store_true", help="live progress bar until it finishes")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_batch_status)

    p = bsub.add_parser(
        "results",
        help="write one line per row",
        description="Write each row's status, outputs and document URLs to a .csv or .jsonl.",
    )
    p.add_argument("batch_id", metavar="BATCH_ID")
    p.add_argument("--out", required=True, metavar="FILE", help="results.csv or results.jsonl")
    p.add_argument("--download", metavar="DIR", help="also fetch every document into DIR")
    p.set_defaults(handler=cmd_batch_results)

    p = bsub.add_parser("list", help="recent batches", description="List recent batches.")
    p.add_argument("--limit", type=_positive_int, default=20, metavar="N")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_batch_list)


def cmd_batch_run(args: argparse.Namespace, rt: Runtime) -> int:
    """``batch run``: validate, create, publish; print the batch id (then follow it)."""
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout only applies with --wait")
    try:
        batch_id, steps = create_batch(
            rt.context,
            BatchRequest(
                args.app,
                args.source,
                inputs=parse_pairs(args.input, "--input"),
                file_input=args.file_input,
                callback_url=args.callback_url,
                run_callback_url=args.run_callback_url,
                max_in_flight=args.max_in_flight,
                batch_key=args.batch_key,
                on_bad_rows=args.on_bad_rows,
            ),
        )
    except InvalidBatchError as exc:
        return _bad([*exc.problems, "nothing was enqueued"])
    publish(steps, rt.celery)
    status = batch_status(rt.context, batch_id)
    if status.record.get("skipped") and not args.json:
        for bad in status.record.get("bad_rows") or []:
            _err(f"skipped row {bad['row']}: {'; '.join(bad['problems'])}")
    if not args.wait:
        if args.json:
            _print_json({"batch_id": batch_id, "total": status.counts["total"]})
        else:
            print(batch_id)
        return EXIT_OK
    if not args.json:
        print(batch_id, file=sys.stderr)
    try:
        final = _follow(rt, batch_id, args.timeout, sys.stderr)
    except TimeoutError:
        _err(f"batch {batch_id} still running after {args.timeout:g} s; it carries on")
        return EXIT_WAIT_TIMEOUT
    if args.json:
        _print_json(final.as_dict())
    else:
        print("\n".join(status_text(final)))
    return EXIT_OK if final.counts["failed"] == 0 else EXIT_FAILED


def cmd_batch_status(args: argparse.Namespace, rt: Runtime) -> int:
    """``batch status``: counts, ETA and a progress bar (live with ``--follow``)."""
    status = batch_status(rt.context, args.batch_id)
    if args.follow and not status.finished:
        status = _follow(rt, args.batch_id, None, sys.stderr)
    if args.json:
        _print_json(status.as_dict())
    else:
        print("\n".join(status_text(status)))
    return EXIT_OK


def cmd_batch_results(args: argparse.Namespace, rt: Runtime) -> int:
    """``batch results``: one line per row to ``--out``."""
    try:
        count = write_results(rt.context, args.batch_id, args.out, download=args.download)
    except InvalidBatchError as exc:
        return _bad(exc.problems)
    print(f"{count} row(s) written to {args.out}")
    return EXIT_OK


def cmd_batch_list(args: argparse.Namespace, rt: Runtime) -> int:
    """``batch list``: recent batches."""
    batches = list_batches(rt.context, limit=args.limit)
    if args.json:
        _print_json(batches)
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
    print("\n".join(_table(["BATCH_ID", "STATE", "ROWS", "SCHEDULE", "CREATED (UTC)"], rows)))
    return EXIT_OK


# --- schedules ----------------------------------------------------------------------------


@command_group
def _add_schedule_commands(sub: Subparsers) -> None:
    sched = sub.add_parser("schedules", help="batches started by celery beat")
    ssub = sched.add_subparsers(dest="schedules_command", metavar="ACTION", required=True)
    p = ssub.add_parser("list", help="declared schedules and their last firing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_schedules_list)
    p = ssub.add_parser("validate", help="check HATZ_SCHEDULES_FILE / HATZ_SCHEDULES")
    p.set_defaults(handler=cmd_schedules_validate)
    p = ssub.add_parser("run-now", help="fire a schedule now (the overlap policy applies)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=cmd_schedules_run_now)


def cmd_schedules_list(args: argparse.Namespace, rt: Runtime) -> int:
    """``schedules list``."""
    schedules = load_schedules(rt.settings)
    states = {s.name: schedule_state(rt.context, s.name) for s in schedules}
    if args.json:
        _print_json([{**vars(s), "state": states[s.name]} for s in schedules])
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
        ]
        for s in schedules
    ]
    headers = ["NAME", "ENABLED", "WHEN", "APP", "OVERLAP", "LAST", "LAST BATCH"]
    print("\n".join(_table(headers, rows)))
    return EXIT_OK


def cmd_schedules_validate(args: argparse.Namespace, rt: Runtime) -> int:
    """``schedules validate``: exit 0 when every declaration is valid."""
    try:
        schedules = load_schedules(rt.settings)
    except ScheduleError as exc:
        return _bad(str(exc).split("; "))
    print(f"{len(schedules)} schedule(s) valid")
    return EXIT_OK


def cmd_schedules_run_now(args: argparse.Namespace, rt: Runtime) -> int:
    """``schedules run-now NAME``: start its batch now; print the batch id."""
    try:
        result = fire(rt.context, args.name, reason="manual")
    except ScheduleError as exc:
        return _bad([str(exc)])
    publish(result.steps, rt.celery)
    if result.outcome != "fired":
        _err(f"schedule {args.name}: {result.outcome}{': ' + result.error if result.error else ''}")
        return EXIT_FAILED
    print(result.batch_id)
    return EXIT_OK


# --- breaker ------------------------------------------------------------------------------


@command_group
def _add_breaker_commands(sub: Subparsers) -> None:
    p = sub.add_parser(
        "breaker",
        help="the org-wide credit-overage breaker",
        description="Show the credit-overage breaker; --reset closes it by hand.",
    )
    p.add_argument("--reset", action="store_true", help="close it (credits were added)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_breaker)


def cmd_breaker(args: argparse.Namespace, rt: Runtime) -> int:
    """``breaker``: state, backoff, last overage."""
    if args.reset and breaker.reset(rt.context):
        _err("breaker closed by hand")
    state = breaker.breaker_state(rt.context)
    if args.json:
        _print_json(state)
        return EXIT_OK
    if state["state"] != breaker.OPEN:
        print("credit-overage breaker: closed (submits flow)")
        return EXIT_OK
    print(
        f"credit-overage breaker: OPEN, next probe in {_duration(state['retry_in'])} "
        f"({int(state.get('failures') or 0)} overage(s) in a row); submits pause, polls go on"
    )
    if state.get("last_error"):
        print(f"last: {state['last_error']}")
    print(f"`{PROG} breaker --reset` closes it by hand")
    return EXIT_OK
