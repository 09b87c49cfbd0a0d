"""A faithful fake of the Hatz AI Workflows API, served over real HTTP on loopback.

Like dramatiq's stub broker, the fake is a product feature: hatz-worker's own
tests, demo and benchmarks run against it, and so can yours. It is written
from the Hatz API documentation alone and shares no code with hatz-worker's
client, so a client that misreads the documentation fails against it.

Quick start::

    from worker.fake_hatz import FakeHatz, FakeApp, FakeStep, FakeInput, FaultConfig

    with FakeHatz(api_key="test-key") as fake:
        fake.add_app(FakeApp(
            id="my-workflow",
            name="My Workflow",
            user_inputs=[FakeInput("topic", required=True)],
            steps=[FakeStep(output_type="dump"), FakeStep(output_type="document")],
            duration=0.5,
        ))
        fake.configure(FaultConfig(error_rate=0.2, endpoints={"status"}))
        ...  # point your client at fake.url with X-API-Key "test-key"
        print(fake.stats()["by_endpoint"])

Served endpoints (all under ``/v1``, ``X-API-Key`` required):
``POST /files/upload``, ``POST /workflows/run``, ``GET /workflows/{job_id}``,
``POST /workflows/presigned-url``, ``GET /app/list``, ``GET /app/{id}``,
``POST /app/{id}/query``; presigned downloads under ``/_fake/files/``, and an
admin API under ``/_fake/`` (see :mod:`worker.fake_hatz.admin`) for a fake
running in another process (``python -m worker.fake_hatz``).
"""

from worker.fake_hatz.cli import serve
from worker.fake_hatz.clock import ManualClock
from worker.fake_hatz.fake import FakeHatz
from worker.fake_hatz.faults import ENDPOINTS, OVERAGE_DETAIL, RATE_LIMIT_DETAIL, FaultConfig
from worker.fake_hatz.models import FakeApp, FakeInput, FakeStep
from worker.fake_hatz.seed import (
    ALWAYS_FAILS_ID,
    CODING_APP_ID,
    REPORT_SUMMARIZER_ID,
    TOPIC_BRIEF_ID,
    default_apps,
    seed_default_apps,
)

__all__ = [
    "ALWAYS_FAILS_ID",
    "CODING_APP_ID",
    "ENDPOINTS",
    "OVERAGE_DETAIL",
    "RATE_LIMIT_DETAIL",
    "REPORT_SUMMARIZER_ID",
    "TOPIC_BRIEF_ID",
    "FakeApp",
    "FakeHatz",
    "FakeInput",
    "FakeStep",
    "FaultConfig",
    "ManualClock",
    "default_apps",
    "seed_default_apps",
    "serve",
]
