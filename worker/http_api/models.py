"""The JSON shapes of the runs endpoints: the run request and the run as answered."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from worker.files.refs import protocol
from worker.store.ledger import Run, RunState

SERVER_PATHS_REFUSED = (
    "a path on the server's disk is never accepted over HTTP; send the file as a "
    "multipart/form-data part named after its input, or give an https:// URL"
)
ONLY_HTTPS = (
    "only https:// URLs are accepted over HTTP (an object-store URL would be read with the "
    "server's own credentials: give a presigned https:// URL instead)"
)


class RunRequest(BaseModel):
    """``POST /v1/runs``: the JSON body, or the ``request`` part of a multipart body."""

    model_config = ConfigDict(extra="forbid", strict=True)  # JSON types as the schema says

    app_id: str = Field(min_length=1, max_length=200, description="The workflow's id")
    inputs: dict[str, Any] = Field(
        default_factory=dict, description="variable_name -> value (files go as multipart parts)"
    )
    files: dict[str, str] | None = Field(
        default=None,
        description=(
            "file_upload variable_name -> an https:// URL the worker fetches and uploads "
            "(through the same guard as callbacks: public addresses only unless the server "
            "allows more, no redirects, a size cap). Not a path, not an object-store URL."
        ),
    )
    callback_url: str | None = Field(
        default=None, max_length=2048, description="POST a signed event here"
    )
    metadata: dict[str, Any] | None = Field(default=None, description="Echoed in callbacks")
    events: list[str] | None = Field(default=None, description="Callback event filter")
    timeout: float | None = Field(
        default=None, gt=0, le=30 * 86400, description="Overrides HATZ_RUN_TIMEOUT, s"
    )
    is_draft_app: bool = Field(default=False, description="Run the app's draft version")

    @model_validator(mode="after")
    def _https_files_only(self) -> RunRequest:
        problems = []
        for name, ref in sorted((self.files or {}).items()):
            scheme = protocol(ref)
            if scheme != "https":
                problems.append(
                    f"files: {name!r}: {ONLY_HTTPS if scheme else SERVER_PATHS_REFUSED}"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _strict_json(self) -> RunRequest:
        # NaN and Infinity parse, but are not JSON: Hatz and callback receivers would choke.
        try:
            json.dumps([self.inputs, self.metadata], allow_nan=False)
        except ValueError:
            raise ValueError("inputs and metadata may not hold NaN or Infinity") from None
        return self


class Document(BaseModel):
    """A generated document: a presigned URL and when it expires (epoch seconds)."""

    url: str
    expires_at: float | None = None


class RunOut(BaseModel):
    """A run, as ``hatz-worker status --json`` shows it (without internal bookkeeping)."""

    run_id: str
    state: RunState
    app_id: str
    client: str | None = Field(default=None, description="The client that created it")
    is_draft_app: bool = False
    job_id: str | None = Field(default=None, description="The Hatz job, once submitted")
    hatz_status: str | None = None
    steps_done: int = 0
    number_of_steps: int | None = None
    poll_count: int = 0
    inputs: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    events: list[str] | None = None
    callback_url: str | None = None
    callback_state: str | None = None
    callback_attempts: list[dict[str, Any]] = Field(
        default_factory=list, description="Each delivery: time, status or error, latency"
    )
    callback_error: str | None = None
    idempotency_key: str | None = None
    timeout: float | None = None
    error: str | None = None
    last_error: str | None = None
    step_outputs: Any = None
    documents: dict[str, Document] = Field(default_factory=dict)
    created_at: float
    updated_at: float | None = None
    queued_at: float | None = None
    uploading_at: float | None = None
    submitting_at: float | None = None
    submitted_at: float | None = None
    running_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    timed_out_at: float | None = None
    rejected_at: float | None = None
    canceled_at: float | None = None
    ambiguous_at: float | None = None

    @classmethod
    def of(cls, run: Run) -> RunOut:
        """The answer for a ledger record."""
        fields = {k: v for k, v in run.items() if k in cls.model_fields and v not in (None, "")}
        fields["timeout"] = run.get("run_timeout")
        key = str(run.get("idempotency_key") or "")
        client = str(run.get("client") or "")
        prefix = f"client:{client}:"
        if client and key.startswith(prefix):
            key = key[len(prefix) :]  # the client's own key, not the ledger's scoped one
        fields["idempotency_key"] = key or None
        documents = run.get("documents") or {}
        fields["documents"] = {
            step: doc for step, doc in documents.items() if isinstance(doc, dict) and "url" in doc
        }
        fields["number_of_steps"] = run.get("number_of_steps") or None
        attempts = run.get("callback_attempts")
        fields["callback_attempts"] = (
            [a for a in attempts if isinstance(a, dict)] if isinstance(attempts, list) else []
        )
        return cls.model_validate(fields)


class RunList(BaseModel):
    """``GET /v1/runs``: one page, newest first."""

    runs: list[RunOut]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null on the last page"
    )
