"""The default catalogue: a few apps that exercise every feature of the API.

Their ids are fixed so demos, docs and tests can name them.
"""

from __future__ import annotations

from typing import Protocol

from .models import FakeApp, FakeInput, FakeStep

#: "Report Summarizer": a file input and a document step (the id from the Hatz docs).
REPORT_SUMMARIZER_ID = "5ae6e9dd-0296-4409-8fe4-1fc646bb22f7"
#: "Topic Brief": text inputs, three text steps.
TOPIC_BRIEF_ID = "0b7d5a3e-2f41-4c8e-9d61-7a2e5c9b3f10"
#: "Always Fails": fails at its second step.
ALWAYS_FAILS_ID = "e3f0c2a1-9b8d-4e7f-a6c5-3d2b1a0f9e84"
#: "coding": the App Builder app of the Hatz docs.
CODING_APP_ID = "9a4c7e21-5d3b-4f86-b0e2-6c1d8a7f4b53"


class AcceptsApps(Protocol):
    """Anything with ``add_app``, such as :class:`~worker.fake_hatz.FakeHatz`."""

    def add_app(self, app: FakeApp) -> FakeApp:
        """Serve ``app``."""


def default_apps(*, duration: float = 1.0, pending_seconds: float = 0.2) -> list[FakeApp]:
    """Build the default apps; workflows take ``pending_seconds`` + ``duration`` to finish."""
    return [
        FakeApp(
            id=REPORT_SUMMARIZER_ID,
            name="Report Summarizer",
            user_inputs=[
                FakeInput("report_file", variable_type="file_upload", required=True),
                FakeInput("summary_style", description="e.g. executive, detailed"),
            ],
            steps=[
                FakeStep(
                    display_name="Summarize",
                    prompt="Summarize {{inputs.report_file}} in a {{inputs.summary_style}} style.",
                    output="Summary of {{inputs.report_file}} ({{inputs.summary_style}} style).",
                ),
                FakeStep(
                    output_type="document",
                    display_name="Summary document",
                    filename="report-summary.pdf",
                ),
            ],
            duration=duration,
            pending_seconds=pending_seconds,
        ),
        FakeApp(
            id=TOPIC_BRIEF_ID,
            name="Topic Brief",
            user_inputs=[
                FakeInput("topic", required=True),
                FakeInput("audience", description="who the brief is for"),
            ],
            steps=[
                FakeStep(display_name="Research", output="Key facts about {{inputs.topic}}."),
                FakeStep(
                    display_name="Outline",
                    output="Outline of {{inputs.topic}} for {{inputs.audience}}.",
                ),
                FakeStep(
                    display_name="Brief",
                    output="Brief: {{inputs.topic}}, written for {{inputs.audience}}.",
                ),
            ],
            duration=duration,
            pending_seconds=pending_seconds,
        ),
        FakeApp(
            id=ALWAYS_FAILS_ID,
            name="Always Fails",
            user_inputs=[FakeInput("topic")],
            steps=[
                FakeStep(display_name="Start"),
                FakeStep(display_name="Break"),
                FakeStep(display_name="Never reached"),
            ],
            fail_at_step=2,
            duration=duration,
            pending_seconds=pending_seconds,
        ),
        FakeApp(
            id=CODING_APP_ID,
            name="coding",
            kind="app",
            description="This app helps you learn basic coding skills",
            default_model="gemini-1.5-pro",
            user_inputs=[FakeInput("language")],
            prompt="write me hello world in the programming language of {{inputs.language}}",
        ),
    ]


def seed_default_apps(
    fake: AcceptsApps, *, duration: float = 1.0, pending_seconds: float = 0.2
) -> list[FakeApp]:
    """Add :func:`default_apps` to ``fake`` and return them."""
    return [
        fake.add_app(app)
        for app in default_apps(duration=duration, pending_seconds=pending_seconds)
    ]
