"""Typed results of the Hatz API, as read from ``shared/hatz-api``.

Every model keeps unknown fields (``extra="allow"``): the API may add fields
and that must never break a run.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["pending", "running", "complete", "failed"]
TERMINAL_JOB_STATUSES: frozenset[str] = frozenset({"complete", "failed"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class UploadedFile(_Model):
    """Answer of ``POST /files/upload``."""

    file_uuid: str


class SubmittedJob(_Model):
    """Answer of ``POST /workflows/run``."""

    job_id: str
    status: str = ""


class StepOutput(_Model):
    """One entry of a job's ``step_outputs``."""

    step_id: str
    step_type: str = ""
    status: str = ""
    output_type: str = ""
    output_data: Any = None
    duration: float | None = None
    start_time: int | None = None
    end_time: int | None = None


class Job(_Model):
    """Answer of ``GET /workflows/{job_id}``."""

    job_id: str
    status: JobStatus
    app_id: str = ""
    number_of_steps: int | None = None
    step_outputs: list[StepOutput] = Field(default_factory=list)
    created_at: str | None = None
    updated_at: str | None = None
    start_time: int | None = None
    end_time: int | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the job is ``complete`` or ``failed``."""
        return self.status in TERMINAL_JOB_STATUSES

    @property
    def steps_done(self) -> int:
        """Number of steps whose status is ``complete``."""
        return sum(1 for s in self.step_outputs if s.status == "complete")


class PresignedURL(_Model):
    """Answer of ``POST /workflows/presigned-url``."""

    url: str
    expires_in: int


class UserInput(_Model):
    """One of an app's ``user_inputs``."""

    variable_name: str
    variable_type: str = "short_answer"
    required: bool = False
    display_name: str = ""
    description: str = ""
    position: int = 0

    @property
    def is_file(self) -> bool:
        """True for ``file_upload`` inputs, whose value is a file_uuid."""
        return self.variable_type == "file_upload"


class App(_Model):
    """An App Builder app or a workflow, from ``/app/list`` or ``/app/{id}``."""

    id: str = ""
    name: str = ""
    description: str = ""
    user_inputs: list[UserInput] = Field(default_factory=list)
    steps: list[dict[str, Any]] | None = None

    @property
    def is_workflow(self) -> bool:
        """Workflows carry ``steps``; plain apps carry ``prompt_sections``."""
        return self.steps is not None


class QueryResult(_Model):
    """Answer of ``POST /app/{id}/query``; the spec does not fix its shape."""
