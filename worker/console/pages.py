"""The console's pages (GET): runs, a run, batches, dead letters, the system.

Pages named ``..._live`` are fragments a page's script fetches every couple of
seconds to update its live parts in place (counts, tables, a run's timeline).
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from worker.api import operations
from worker.api.batches import batch_results, get_batch
from worker.api.runs import get_run
from worker.console import charts, queries
from worker.console.timeline import pretty, run_details, timeline
from worker.console.web import PREFIX, ConsoleSession, render
from worker.errors import BatchNotFoundError, RunNotFoundError
from worker.http_api.services import Services, get_services

router = APIRouter(prefix=PREFIX, include_in_schema=False)
ServicesDep = Annotated[Services, Depends(get_services)]
PAGE_SIZE = 50


@router.get("/")
def home(session: ConsoleSession) -> RedirectResponse:
    """The runs page."""
    return RedirectResponse(f"{PREFIX}/runs", status_code=303)


def _time(value: str) -> float | None:
    """A ``datetime-local`` field (UTC unless it names its offset) as a timestamp; None when
    empty or unreadable."""
    try:
        when = datetime.fromisoformat(value) if value else None
    except ValueError:
        return None
    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


class RunQuery:
    """The runs page's query string: filters, search, cursor."""

    def __init__(
        self,
        state: Annotated[str, Query(max_length=20)] = "",
        app_id: Annotated[str, Query(max_length=200)] = "",
        client: Annotated[str, Query(max_length=100)] = "",
        since: Annotated[str, Query(max_length=40)] = "",
        until: Annotated[str, Query(max_length=40)] = "",
        q: Annotated[str, Query(max_length=200)] = "",
        cursor: Annotated[str, Query(max_length=200)] = "",
    ) -> None:
        self.state = state if state in queries.states() else ""
        self.app_id, self.client, self.since, self.until = app_id, client, since, until
        self.q, self.cursor = q.strip(), cursor

    def filters(self) -> queries.RunFilter:
        """As the query module's filter."""
        return queries.RunFilter(
            self.state, self.app_id, self.client, _time(self.since), _time(self.until)
        )

    def params(self) -> dict[str, str]:
        """The filters as query parameters (for links to other pages of the same view)."""
        values = {
            "state": self.state,
            "app_id": self.app_id,
            "client": self.client,
            "since": self.since,
            "until": self.until,
        }
        return {k: v for k, v in values.items() if v}


def _runs_values(services: Services, query: RunQuery) -> dict[str, Any]:
    ctx = services.context
    charts.take_sample(ctx)
    page = queries.runs_page(ctx, query.filters(), limit=PAGE_SIZE, cursor=query.cursor or None)
    return {
        "counts": operations.state_counts(context=ctx),
        "page": page,
        "query": query,
        "states": queries.states(),
    }


@router.get("/runs", response_class=HTMLResponse)
def runs_page(
    request: Request,
    session: ConsoleSession,
    services: ServicesDep,
    query: Annotated[RunQuery, Depends()],
) -> Response:
    """Counts by state, the filters, one page of the runs table; a search jumps to a run."""
    if query.q:
        found = queries.find_run(services.context, query.q)
        if found:
            return RedirectResponse(f"{PREFIX}/runs/{found}", status_code=303)
    values = _runs_values(services, query)
    return render(request, "runs.html", session, not_found=query.q, **values)


@router.get("/runs/_live", response_class=HTMLResponse)
def runs_live(
    request: Request,
    session: ConsoleSession,
    services: ServicesDep,
    query: Annotated[RunQuery, Depends()],
) -> Response:
    """The runs page's live part: counts and the table."""
    return render(request, "_runs_live.html", session, **_runs_values(services, query))


def _run_values(services: Services, run_id: str) -> dict[str, Any]:
    run = get_run(run_id, context=services.context)
    return {
        "run": run,
        "events": timeline(run),
        "details": run_details(run),
        "inputs": pretty(run.get("inputs") or {}),
        "metadata": pretty(run.get("metadata") or {}),
        "outputs": pretty(run.get("step_outputs") or []),
    }


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(
    request: Request, run_id: str, session: ConsoleSession, services: ServicesDep, done: str = ""
) -> Response:
    """A run: its timeline, inputs and metadata, a cancel button while it is not over."""
    try:
        values = _run_values(services, run_id)
    except RunNotFoundError:
        return render(
            request, "error.html", session, status_code=404, message=f"No run {run_id!r}."
        )
    return render(request, "run.html", session, done=done[:200], **values)


@router.get("/runs/{run_id}/_live", response_class=HTMLResponse)
def run_live(
    request: Request, run_id: str, session: ConsoleSession, services: ServicesDep
) -> Response:
    """A run page's live part: state, details and timeline."""
    try:
        values = _run_values(services, run_id)
    except RunNotFoundError:
        return HTMLResponse("", status_code=404)
    return render(request, "_run_live.html", session, **values)


@router.get("/batches", response_class=HTMLResponse)
def batches_page(request: Request, session: ConsoleSession, services: ServicesDep) -> Response:
    """The newest batches with their progress."""
    batches = operations.recent_batches(context=services.context)
    return render(request, "batches.html", session, batches=batches)


@router.get("/batches/{batch_id}", response_class=HTMLResponse)
def batch_page(
    request: Request, batch_id: str, session: ConsoleSession, services: ServicesDep
) -> Response:
    """A batch: progress and every row's outcome."""
    try:
        status = get_batch(batch_id, context=services.context)
        rows = operations.batch_rows(batch_id, context=services.context)
    except BatchNotFoundError:
        return render(
            request, "error.html", session, status_code=404, message=f"No batch {batch_id!r}."
        )
    return render(request, "batch.html", session, batch=status, rows=rows)


@router.get("/batches/{batch_id}/results.{fmt}")
def batch_download(
    batch_id: str, fmt: Literal["csv", "jsonl"], session: ConsoleSession, services: ServicesDep
) -> Response:
    """The batch's results file (as ``hatz-worker batches results`` writes it)."""
    with tempfile.TemporaryDirectory(prefix="hatz-console-") as folder:
        target = Path(folder) / f"results.{fmt}"
        try:
            batch_results(batch_id, target, context=services.context)
        except BatchNotFoundError:
            return Response("no such batch\n", status_code=404, media_type="text/plain")
        body = target.read_bytes()
    media = "text/csv" if fmt == "csv" else "application/x-ndjson"
    name = f"batch-{batch_id}.{fmt}".replace('"', "").replace(os.sep, "")
    return Response(
        body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


@router.get("/dead-letters", response_class=HTMLResponse)
def dead_letters_page(
    request: Request,
    session: ConsoleSession,
    services: ServicesDep,
    done: Annotated[str, Query(max_length=2000)] = "",
    replayed: Annotated[str, Query(max_length=4000)] = "",
) -> Response:
    """Callbacks given up on, their last answer, replay buttons, the last replay's outcome."""
    letters = operations.dead_letters(context=services.context)
    outcomes = _outcomes(services, replayed)
    return render(
        request,
        "dead_letters.html",
        session,
        letters=letters,
        done=done[:500],
        outcomes=outcomes,
        replayed=replayed,
    )


@router.get("/dead-letters/_replays", response_class=HTMLResponse)
def replays_live(
    request: Request,
    session: ConsoleSession,
    services: ServicesDep,
    replayed: Annotated[str, Query(max_length=4000)] = "",
) -> Response:
    """The outcome of the replays just queued (refreshed until each is settled)."""
    outcomes = _outcomes(services, replayed)
    return render(request, "_replays_live.html", session, outcomes=outcomes)


def _outcomes(services: Services, replayed: str) -> list[operations.CallbackOutcome]:
    """``run:ID,batch:ID,...`` as the callbacks' current outcomes (20 at most)."""
    found = []
    for item in replayed.split(",")[:20]:
        kind, _, letter_id = item.partition(":")
        if kind == "run" and letter_id:
            found.append(operations.callback_outcome("run", letter_id, context=services.context))
        elif kind == "batch" and letter_id:
            found.append(operations.callback_outcome("batch", letter_id, context=services.context))
    return found


@router.get("/system", response_class=HTMLResponse)
def system_page(request: Request, session: ConsoleSession, services: ServicesDep) -> Response:
    """The breaker, the API budget, heartbeats, queue depths and the charts."""
    return render(request, "system.html", session, **_system_values(services))


@router.get("/system/_live", response_class=HTMLResponse)
def system_live(request: Request, session: ConsoleSession, services: ServicesDep) -> Response:
    """The system page's live part."""
    return render(request, "_system_live.html", session, **_system_values(services))


def _system_values(services: Services) -> dict[str, Any]:
    ctx = services.context
    charts.take_sample(ctx)
    return {
        "breaker": operations.breaker(context=ctx),
        "budget": operations.api_budget(context=ctx),
        "heartbeats": operations.heartbeats(context=ctx),
        "queues": operations.queue_depths(context=ctx),
        "charts": [
            charts.svg(c, every=ctx.settings.console_sample_interval)
            for c in charts.charts(charts.read_samples(ctx))
        ],
    }
