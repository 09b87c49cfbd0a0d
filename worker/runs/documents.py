"""A finished job's documents: presigned download URLs, collected and renewed."""

from __future__ import annotations

import logging
from typing import Any

from worker.context import Context
from worker.errors import HatzError, HatzNotFoundError, HatzValidationError
from worker.hatz.types import Job
from worker.store.ledger import TERMINAL_STATES, Run

log = logging.getLogger(__name__)


def is_document(ctx: Context, output_type: str) -> bool:
    """Whether a step's ``output_type`` may carry a document (``HATZ_DOCUMENT_OUTPUT_TYPES``)."""
    kinds = ctx.settings.document_output_types
    if "*" in kinds:
        return output_type not in ("", "dump", "text")
    return output_type in kinds


def collect_documents(ctx: Context, job: Job) -> dict[str, dict[str, Any]]:
    """Presigned URLs of every document step; a 4xx means "no document", not a failure."""
    documents: dict[str, dict[str, Any]] = {}
    expires_in = ctx.settings.presign_expires_in
    for step in job.step_outputs:
        if step.status != "complete" or not is_document(ctx, step.output_type):
            continue
        requested = ctx.clock()
        try:
            url = ctx.client.presigned_url(job.job_id, step.step_id, expires_in=expires_in)
        except (HatzValidationError, HatzNotFoundError):
            continue
        documents[step.step_id] = {"url": url.url, "expires_at": requested + url.expires_in}
    return documents


def refresh_documents(ctx: Context, run: Run, *, margin: float = 300.0) -> Run:
    """Renew presigned URLs that expire within ``margin`` seconds (e.g. before a late
    callback retry), so receivers never get a dead link. Failures keep the old URL."""
    documents: dict[str, dict[str, Any]] = dict(run.get("documents") or {})
    job_id = run.get("job_id")
    now = ctx.clock()
    stale = [k for k, d in documents.items() if float(d.get("expires_at") or 0) < now + margin]
    if not job_id or not stale:
        return run
    for step_id in stale:
        try:
            url = ctx.client.presigned_url(
                str(job_id), step_id, expires_in=ctx.settings.presign_expires_in
            )
        except HatzError as exc:
            log.warning("run %s: cannot renew the URL of step %s: %s", run.run_id, step_id, exc)
            continue
        # Other keys (the archived copy) stay as they are.
        documents[step_id] = {
            **documents[step_id],
            "url": url.url,
            "expires_at": now + url.expires_in,
        }
    ctx.ledger.cas(run.run_id, states=TERMINAL_STATES, fields={"documents": documents})
    return Run({**run, "documents": documents})
