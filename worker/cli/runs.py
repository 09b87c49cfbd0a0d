"""``hatz-worker run``, ``status``, ``wait``, ``runs`` and ``cancel``: enqueue and follow runs."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import Any

import click

from worker.api.runs import cancel_run, enqueue_run, get_run, list_runs, wait_for_run
from worker.cli.output import (
    ProgressDrawer,
    clip,
    clock,
    duration,
    print_error,
    print_json,
    safe_url,
    table,
)
from worker.cli.params import json_option, parse_pairs, positive_float, positive_int, run_state
from worker.cli.runtime import EXIT_FAILED, EXIT_OK, EXIT_WAIT_TIMEOUT, PROG, Runtime
from worker.limits.breaker import breaker_state
from worker.store.ledger import PRE_SUBMIT_STATES, Run, RunState

#: Without a change, ``wait`` repeats its progress line this often when not on a terminal, s.
PLAIN_PROGRESS_EVERY = 10.0


# --- run record rendering -------------------------------------------------------------


def steps_text(run: Mapping[str, Any]) -> str:
    """``done/total`` steps, ``?`` while the total is unknown."""
    done = int(run.get("steps_done") or 0)
    total = int(run.get("number_of_steps") or 0)
    return f"{done}/{total if total else '?'}"


def _history_lines(run: Run) -> list[str]:
    history = run.history()
    if not history:
        return []
    first = history[0][1]
    return [f"{state:<10}  {clock(ts)}  (+{duration(ts - first)})" for state, ts in history]


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


def _document_rows(run: Run, now: float) -> list[tuple[str, str]]:
    documents: dict[str, Any] = run.get("documents") or {}
    rows: list[tuple[str, str]] = []
    for i, (step_id, doc) in enumerate(sorted(documents.items())):
        url = safe_url(str(doc.get("url") or "")) if isinstance(doc, dict) else "?"
        expires = doc.get("expires_at") if isinstance(doc, dict) else None
        when = ""
        if expires:
            left = float(expires) - now
            when = f"  (link expires in {duration(left)})" if left > 0 else "  (link expired)"
        rows.append(("documents" if i == 0 else "", f"{step_id}: {url}{when}"))
        archived = doc.get("archive") if isinstance(doc, dict) else None
        if isinstance(archived, dict):
            size, digest = archived.get("size"), str(archived.get("sha256") or "")[:16]
            rows.append(
                ("", f"  archived: {archived.get('url')}  ({size} bytes, sha256 {digest}…)")
            )
    if not documents and run.state is RunState.COMPLETED:
        rows.append(("documents", "none"))
    if run.get("archive_state"):
        error = f"  error: {run['archive_error']}" if run.get("archive_error") else ""
        rows.append(("archive", f"{run['archive_state']}{error}"))
    return rows


def _summary_rows(run: Run) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [
        ("run", run.run_id),
        ("state", run.state.value),
        ("app", str(run.get("app_id") or "")),
    ]
    if run.get("is_draft_app"):
        rows.append(("draft", "yes"))
    rows.append(("job_id", str(run.get("job_id") or "(not submitted)")))
    hatz = str(run.get("hatz_status") or "-")
    polls = int(run.get("poll_count") or 0)
    rows.append(("hatz", f"{hatz}  steps {steps_text(run)}  polls {polls}"))
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
    return rows


def status_lines(run: Run, now: float | None = None) -> list[str]:
    """A human view of a run record. Never shows URL query strings (presigned secrets)."""
    now = time.time() if now is None else now
    rows = [*_summary_rows(run), *_document_rows(run, now), ("callback", _callback_line(run))]
    created = run.get("created_at")
    if created:
        end = run.get("updated_at") if run.state.is_terminal else now
        rows.append(("elapsed", duration(float(end or now) - float(created))))
    lines = [f"{k:<10}  {v}" for k, v in rows]
    for i, line in enumerate(_history_lines(run)):
        lines.append(f"{'history' if i == 0 else '':<10}  {line}")
    return lines


def progress_text(run: Run) -> str:
    """The one progress line of ``wait``: id, state, steps, time since enqueued."""
    elapsed = duration(time.time() - float(run.get("created_at") or time.time()))
    return f"{run.run_id[:12]}  {run.state.value:<10}  steps {steps_text(run):<6} {elapsed}"


def wait_and_report(
    rt: Runtime, run_id: str, timeout: float | None, as_json: bool, interval: float = 0.5
) -> int:
    """Wait for a run with live progress on stderr; print its outcome; return the exit code."""
    ctx = rt.context
    drawer = ProgressDrawer(sys.stderr, plain=not as_json, every=PLAIN_PROGRESS_EVERY)
    try:
        run = wait_for_run(
            run_id,
            timeout=timeout,
            interval=min(interval, timeout) if timeout else interval,
            on_update=lambda r: drawer.show([progress_text(r)], key=(r.state, steps_text(r))),
            context=ctx,
        )
    except TimeoutError:
        drawer.finish(keep=False)
        current = get_run(run_id, context=ctx)
        if as_json:
            print_json(current)
        else:
            print_error(
                f"run {run_id} is still {current.state.value} after {timeout:g} s; "
                f"it carries on in the background (`{PROG} wait {run_id}` to keep waiting)"
            )
        return EXIT_WAIT_TIMEOUT
    drawer.finish(keep=False)
    if as_json:
        print_json(run)
    else:
        print("\n".join(status_lines(run)))
    return EXIT_OK if run.state is RunState.COMPLETED else EXIT_FAILED


# --- commands -------------------------------------------------------------------------


@click.command(
    "run",
    short_help="enqueue a workflow run",
    help="Enqueue a run of workflow APP_ID and print its run_id.",
)
@click.argument("app_id", metavar="APP_ID")
@click.option("-i", "--input", "inputs", multiple=True, metavar="KEY=VALUE", help="an input value")
@click.option(
    "-f",
    "--file",
    "files",
    multiple=True,
    metavar="KEY=PATH|URL",
    help="a file_upload input: a path, an https:// URL or s3://, gs://, az:// (uploaded)",
)
@click.option(
    "--upload-here",
    is_flag=True,
    help="upload the files from this process now (the worker then needs no access to them)",
)
@click.option("--draft", is_flag=True, help="run the app's draft version")
@click.option("--callback-url", metavar="URL", help="POST a signed event here when done")
@click.option(
    "--event",
    "events",
    multiple=True,
    metavar="TYPE",
    help="callback event filter, repeatable (e.g. workflow_run.failed, workflow_run.started)",
)
@click.option("--metadata", multiple=True, metavar="KEY=VALUE", help="echoed in callbacks")
@click.option("--idempotency-key", metavar="K", help="same key+params -> the same run")
@click.option("--wait", is_flag=True, help="then wait for the run, like `wait`")
@click.option("--timeout", callback=positive_float, metavar="S", help="with --wait: give up")
@json_option()
@click.pass_obj
def run_command(
    rt: Runtime,
    app_id: str,
    inputs: tuple[str, ...],
    files: tuple[str, ...],
    upload_here: bool,
    draft: bool,
    callback_url: str | None,
    events: tuple[str, ...],
    metadata: tuple[str, ...],
    idempotency_key: str | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> int:
    """``run``: enqueue; print the run_id (then wait, with ``--wait``)."""
    input_values = parse_pairs(inputs, "--input")
    file_paths = parse_pairs(files, "--file")
    metadata_values = parse_pairs(metadata, "--metadata")
    if timeout is not None and not wait:
        raise click.UsageError("--timeout only applies with --wait")
    run_id = enqueue_run(
        app_id,
        input_values,
        files=file_paths,
        callback_url=callback_url,
        metadata=metadata_values or None,
        is_draft_app=draft,
        idempotency_key=idempotency_key,
        events=list(events) or None,
        upload_here=upload_here,
        context=rt.context,
        celery=rt.celery,
    )
    if wait:
        if not as_json:
            print(run_id, file=sys.stderr)
        return wait_and_report(rt, run_id, timeout, as_json)
    if as_json:
        print_json({"run_id": run_id})
    else:
        print(run_id)
        if sys.stdout.isatty():
            print_error(f"queued; follow it with `{PROG} wait {run_id}`")
    return EXIT_OK


@click.command(
    "status",
    short_help="show one run",
    help="Show a run's state, progress, documents, callback and history.",
)
@click.argument("run_id", metavar="RUN_ID")
@json_option("print the full record as JSON")
@click.pass_obj
def status_command(rt: Runtime, run_id: str, as_json: bool) -> int:
    """``status``: one run's record."""
    run = get_run(run_id, context=rt.context)
    breaker = breaker_state(rt.context)
    if as_json:
        print_json({**run, "breaker": breaker})
        return EXIT_OK
    print("\n".join(status_lines(run)))
    if breaker["state"] == "open" and run.state in PRE_SUBMIT_STATES:
        print(
            "note: the org-wide credit-overage breaker is OPEN: submits are paused "
            f"(next probe in {breaker.get('retry_in', 0):.0f} s); nothing is dropped"
        )
    return EXIT_OK


@click.command(
    "wait",
    short_help="wait for a run to finish",
    help="Wait for a run. Exit 0 COMPLETED, 1 any other end state, 3 --timeout.",
)
@click.argument("run_id", metavar="RUN_ID")
@click.option("--timeout", callback=positive_float, metavar="S", help="give up after S seconds")
@json_option("print the final record as JSON")
@click.pass_obj
def wait_command(rt: Runtime, run_id: str, timeout: float | None, as_json: bool) -> int:
    """``wait``: block until the run is terminal (or ``--timeout``)."""
    get_run(run_id, context=rt.context)  # unknown id: error before waiting
    return wait_and_report(rt, run_id, timeout, as_json)


@click.command("runs", short_help="list recent runs", help="List recent runs.")
@click.option("--state", callback=run_state, metavar="S", help="only runs in this state")
@click.option("--limit", default="20", callback=positive_int, metavar="N", help="(default 20)")
@json_option()
@click.pass_obj
def runs_command(rt: Runtime, state: RunState | None, limit: int, as_json: bool) -> int:
    """``runs``: a table of recent runs."""
    runs = list_runs(state=state, limit=limit, context=rt.context)
    if as_json:
        print_json(runs)
        return EXIT_OK
    if not runs:
        print("no runs" + (f" in state {state.value}" if state else ""))
        return EXIT_OK
    now = time.time()
    rows = [
        [
            run.run_id,
            run.state.value,
            clip(str(run.get("app_id") or ""), 36),
            steps_text(run),
            duration(now - float(run.get("created_at") or now)) + " ago",
            clip(str(run.get("error") or ""), 50),
        ]
        for run in runs
    ]
    print("\n".join(table(["RUN_ID", "STATE", "APP", "STEPS", "CREATED", "ERROR"], rows)))
    return EXIT_OK


@click.command(
    "cancel",
    short_help="stop following a run",
    help=(
        "Stop polling a run and mark it CANCELED. The Hatz API has no cancel: "
        "a job already submitted keeps running (and spending credits) remotely."
    ),
)
@click.argument("run_id", metavar="RUN_ID")
@click.pass_obj
def cancel_command(rt: Runtime, run_id: str) -> int:
    """``cancel``: stop polling; explain that the remote job is not stopped."""
    before = get_run(run_id, context=rt.context)
    if not cancel_run(run_id, context=rt.context, celery=rt.celery):
        now = get_run(run_id, context=rt.context)
        print_error(f"run {run_id} already ended ({now.state.value}); nothing to cancel")
        return EXIT_FAILED
    run = get_run(run_id, context=rt.context)
    print(f"run {run_id} canceled: hatz-worker stopped following it (no more polls).")
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


COMMANDS = (run_command, status_command, wait_command, runs_command, cancel_command)
