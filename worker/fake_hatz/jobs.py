"""Workflow jobs: a timeline fixed at submission, rendered for any instant.

A job's progress is a pure function of the clock: nothing runs in the
background, so thousands of jobs cost nothing between polls, and what a poll
sees depends only on when it happens, never on how often the job is polled.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from .models import FakeApp, FakeStep

JobStatus = str  # "pending" | "running" | "complete" | "failed"

_TEMPLATE = re.compile(r"\{\{\s*inputs\.([A-Za-z0-9_\-]+)\s*\}\}")
_SLUG = re.compile(r"[^a-z0-9]+")


def fill_template(template: str, labels: dict[str, str]) -> str:
    """Replace each ``{{inputs.name}}`` (Hatz prompt syntax) by that input's label."""
    return _TEMPLATE.sub(lambda m: labels.get(m.group(1), ""), template)


def input_label(value: Any) -> str:
    """How an input value reads in generated text: strings as-is, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def iso(ts: float) -> str:
    """Format epoch seconds as the API does: ``2025-01-15T10:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def epoch_ms(ts: float) -> int:
    """Epoch seconds to the API's integer epoch milliseconds."""
    return int(ts * 1000)


@dataclass(frozen=True)
class StepPlan:
    """When one step of one job runs, and whether it fails."""

    step: FakeStep
    position: int
    start: float
    end: float
    fails: bool

    def status_at(self, now: float) -> JobStatus | None:
        """The step's status at ``now``; None before it starts."""
        if now < self.start:
            return None
        if now < self.end:
            return "running"
        return "failed" if self.fails else "complete"


@dataclass(frozen=True)
class Job:
    """One submitted workflow run. Immutable: its whole future is known at creation."""

    job_id: str
    app_id: str
    app_name: str
    number_of_steps: int
    user_inputs: dict[str, Any]
    #: Input values as they read in outputs (files as "name (N bytes)").
    input_labels: dict[str, str]
    created_at: float
    run_start: float
    #: The steps that will run: all of them, or up to and including the failing one.
    plans: tuple[StepPlan, ...]
    failed: bool

    @property
    def finished_at(self) -> float:
        """When the job reaches ``complete`` or ``failed``."""
        return self.plans[-1].end if self.plans else self.run_start

    def status_at(self, now: float) -> JobStatus:
        """The job's status at ``now``."""
        if now < self.run_start:
            return "pending"
        if now < self.finished_at:
            return "running"
        return "failed" if self.failed else "complete"

    def plan_for(self, step_id: str) -> StepPlan | None:
        """The plan of the step with id ``step_id``, if this job runs it."""
        return next((p for p in self.plans if p.step.id == step_id), None)

    def document_filename(self, plan: StepPlan) -> str:
        """File name of a document step's output."""
        if plan.step.filename:
            return plan.step.filename
        slug = _SLUG.sub("-", self.app_name.lower()).strip("-") or "workflow"
        return f"{slug}-step-{plan.position + 1}.pdf"

    def output_text(self, plan: StepPlan) -> str:
        """The ``output_data`` of a finished step: deterministic, built from the inputs."""
        step = plan.step
        if plan.fails:
            return (
                f"Error: step {plan.position + 1} ({step.display_name}) failed: "
                "simulated failure injected by the fake Hatz server"
            )
        if step.is_document:
            return f"Document generated: {self.document_filename(plan)}"
        if step.output:
            return fill_template(step.output, self.input_labels)
        described = ", ".join(f"{k}={v}" for k, v in self.input_labels.items()) or "no inputs"
        return (
            f"{step.display_name} (step {plan.position + 1} of {self.number_of_steps}) "
            f"output for {described}"
        )

    def render(self, now: float, *, tenant_id: str, user_id: str) -> dict[str, Any]:
        """The job as ``GET /v1/workflows/{job_id}`` returns it at ``now``.

        ``step_outputs`` lists the steps finished or in progress. A step in
        progress has ``status`` ``running`` and null ``end_time``, ``duration``
        and ``output_data`` (the documentation only shows finished steps).
        """
        status = self.status_at(now)
        steps: list[dict[str, Any]] = []
        updated = self.created_at
        if status != "pending":
            for plan in self.plans:
                step_status = plan.status_at(now)
                if step_status is None:
                    break
                steps.append(self._render_step(plan, step_status))
                updated = plan.start if step_status == "running" else plan.end
        finished = status in ("complete", "failed")
        return {
            "job_id": self.job_id,
            "app_id": self.app_id,
            "tenant_id": tenant_id,
            "user_id": user_id,
            "created_at": iso(self.created_at),
            "updated_at": iso(updated),
            "start_time": epoch_ms(self.created_at),
            "end_time": epoch_ms(self.finished_at) if finished else None,
            "number_of_steps": self.number_of_steps,
            "status": status,
            "user_inputs": self.user_inputs,
            "app_data": {},
            "step_outputs": steps,
        }

    def _render_step(self, plan: StepPlan, status: JobStatus) -> dict[str, Any]:
        done = status != "running"
        start_ms, end_ms = epoch_ms(plan.start), epoch_ms(plan.end)
        return {
            "step_id": plan.step.id,
            "job_id": self.job_id,
            "step_type": plan.step.step_type,
            "status": status,
            "output_type": plan.step.output_type,
            "created_at": iso(plan.start),
            "updated_at": iso(plan.end if done else plan.start),
            "start_time": start_ms,
            "end_time": end_ms if done else None,
            "duration": end_ms - start_ms if done else None,
            "output_data": self.output_text(plan) if done else None,
            "payload": {},
        }


def plan_job(
    app: FakeApp,
    *,
    job_id: str,
    inputs: dict[str, Any],
    input_labels: dict[str, str],
    created_at: float,
    duration: float | None = None,
) -> Job:
    """Fix the timeline of a new run of workflow ``app`` submitted at ``created_at``
    (running ``duration`` seconds, the app's ``duration`` when None)."""
    run_start = created_at + app.pending_seconds
    per_step = (app.duration if duration is None else duration) / len(app.steps)
    failing = app.failing_step
    plans: list[StepPlan] = []
    for position, step in enumerate(app.steps):
        start = run_start + position * per_step
        fails = position == failing
        plans.append(StepPlan(step, position, start, start + per_step, fails))
        if fails:
            break
    return Job(
        job_id=job_id,
        app_id=app.id,
        app_name=app.name,
        number_of_steps=len(app.steps),
        user_inputs=inputs,
        input_labels=input_labels,
        created_at=created_at,
        run_start=run_start,
        plans=tuple(plans),
        failed=failing is not None,
    )
