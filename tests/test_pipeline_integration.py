"""The run pipeline end to end: a private redis-server, a real `celery worker`
subprocess and the fake Hatz server over real HTTP. Counts come from the fake's
call log and the callback receiver, not from our own ledger."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import standardwebhooks
from celery import Celery

from tests.stack import Stack, assert_spaced, running_stack
from worker import task_names
from worker.fake_hatz import FakeInput, FakeStep, FaultConfig
from worker.local.stack import wait_until
from worker.store.ledger import RunState
from worker.store.outbox import Next
from worker.taskqueue.app import publish

pytestmark = pytest.mark.integration

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
POLL = 0.3
WORKER_SETTINGS: dict[str, Any] = {
    "poll_initial_delay": POLL,
    "poll_interval": POLL,
    "poll_max_interval": 1.0,
    "poll_backoff": 1.0,
    "poll_jitter": 0.1,
    "overage_pause": 0.5,
    "not_found_limit": 3,
    "http_read_timeout": 2.0,
    "http_retries": 1,
    "http_retry_base_delay": 0.05,
    "http_retry_max_delay": 0.2,
    "app_cache_ttl": 0,
    "webhook_secret": SECRET,
    "callback_allow_private": True,
    "callback_retry_delays": "0,0.2,0.5",
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack(values=WORKER_SETTINGS) as s:
        yield s


def test_file_upload_run_completes_with_documents_and_one_signed_callback(
    stack: Stack, tmp_path: Path
) -> None:
    # Given a workflow with a file input and a document step
    app = stack.app(
        user_inputs=[
            FakeInput("report", variable_type="file_upload", required=True),
            FakeInput("style"),
        ],
        steps=[FakeStep(output_type="dump"), FakeStep(output_type="document")],
    )
    report = tmp_path / "report.csv"
    report.write_text("region,sales\nnorth,10\n")

    # When a run is enqueued with a local file and a callback
    run_id = stack.enqueue(
        app.id,
        {"style": "short"},
        files={"report": str(report)},
        callback_url=stack.receiver.url,
        metadata={"order": 7},
    )
    run = stack.wait(run_id)

    # Then it completed, its document downloads, and exactly one verified callback arrived
    assert run.state is RunState.COMPLETED, run.get("error")
    assert len(run["documents"]) == 1
    document = next(iter(run["documents"].values()))
    assert requests.get(document["url"], timeout=5).status_code == 200
    assert len([c for c in stack.calls("upload") if c["status"] == 200]) >= 1
    assert len([c for c in stack.calls("run", app.id) if c["status"] == 200]) == 1
    wait_until(lambda: stack.deliveries_for(run_id), timeout=10, message="callback")
    (delivery,) = stack.deliveries_for(run_id)
    payload = standardwebhooks.Webhook(SECRET).verify(delivery["body"], delivery["headers"])
    assert payload["type"] == "workflow_run.completed"
    assert payload["data"]["metadata"] == {"order": 7}
    submitted_inputs = stack.calls("run", app.id)[0]["inputs"]
    assert submitted_inputs["report"] != str(report)  # replaced by a file_uuid


def test_failed_job_fails_the_run_with_the_step_error(stack: Stack) -> None:
    app = stack.app(steps=[FakeStep(), FakeStep()], fail=True)

    run = stack.wait(stack.enqueue(app.id, callback_url=stack.receiver.url))

    assert run.state is RunState.FAILED
    assert "failed" in run["error"]
    wait_until(lambda: stack.deliveries_for(run.run_id), timeout=10, message="callback")
    body = json.loads(stack.deliveries_for(run.run_id)[0]["body"])
    assert body["type"] == "workflow_run.failed"


def test_job_that_outlives_the_run_timeout_times_out(stack: Stack) -> None:
    app = stack.app(duration=60)

    run = stack.wait(stack.enqueue(app.id, timeout=1.0))

    assert run.state is RunState.TIMED_OUT


def test_job_not_found_repeatedly_fails_the_run_with_that_reason(stack: Stack) -> None:
    app = stack.app(duration=60)
    run_id = stack.enqueue(app.id)
    job_id = wait_until(
        lambda: stack.context.ledger.require(run_id).get("job_id") or None,
        timeout=10,
        message="job id",
    )

    stack.fake.lose_job(str(job_id))
    run = stack.wait(run_id)

    assert run.state is RunState.FAILED
    assert run["error"] == "Job not found"
    assert (
        len([c for c in stack.calls("status") if c.get("job_id") == job_id and c["status"] == 404])
        == 3
    )


def test_credit_overage_pauses_submits_and_resumes_without_losing_the_run(stack: Stack) -> None:
    app = stack.app()
    stack.fake.set_overage(True)
    try:
        run_id = stack.enqueue(app.id)
        wait_until(
            lambda: len([c for c in stack.calls("run", app.id) if c["status"] == 429]) >= 2,
            timeout=15,
            message="two refused submits",
        )
        assert "credit overage" in stack.context.ledger.require(run_id)["last_error"]
    finally:
        stack.fake.set_overage(False)

    run = stack.wait(run_id)

    assert run.state is RunState.COMPLETED
    assert len([c for c in stack.calls("run", app.id) if c["status"] == 200]) == 1


def test_transient_5xx_while_polling_do_not_fail_the_run(stack: Stack) -> None:
    app = stack.app(duration=1.5, faults=FaultConfig(error_rate=0.5, endpoints={"status"}))

    run = stack.wait(stack.enqueue(app.id))

    assert run.state is RunState.COMPLETED
    statuses = [c["status"] for c in stack.calls("status", app.id)]
    assert any(s >= 500 for s in statuses), statuses


def test_bad_inputs_are_rejected_without_any_submit(stack: Stack) -> None:
    app = stack.app(user_inputs=[FakeInput("topic", required=True)])

    run = stack.wait(stack.enqueue(app.id, {"colour": "blue"}, callback_url=stack.receiver.url))

    assert run.state is RunState.REJECTED
    assert "missing required input 'topic'" in run["error"]
    assert "unknown input 'colour'" in run["error"]
    assert stack.calls("run", app.id) == []


def test_unknown_app_is_rejected_without_any_submit(stack: Stack) -> None:
    missing = str(uuid.uuid4())

    run = stack.wait(stack.enqueue(missing, {"x": 1}))

    assert run.state is RunState.REJECTED
    assert run["error"] == "unknown app_id"
    assert stack.calls("run", missing) == []


def test_duplicate_task_delivery_still_submits_once_and_calls_back_once(stack: Stack) -> None:
    app = stack.app(duration=1.0)
    run_id = stack.enqueue(app.id, callback_url=stack.receiver.url)

    # The same submit message delivered three more times, and polls duplicated too.
    publish([Next(task_names.SUBMIT, (run_id, 0))] * 3, stack.celery)
    wait_until(
        lambda: stack.context.ledger.require(run_id).state is RunState.RUNNING,
        timeout=10,
        message="running",
    )
    token = stack.context.ledger.require(run_id).token
    publish([Next(task_names.POLL, (run_id, token))] * 3, stack.celery)
    run = stack.wait(run_id)

    assert run.state is RunState.COMPLETED
    assert len([c for c in stack.calls("run", app.id) if c["status"] == 200]) == 1
    wait_until(lambda: stack.deliveries_for(run_id), timeout=10, message="callback")
    assert len(stack.deliveries_for(run_id)) == 1


def test_polls_are_spaced_by_the_configured_countdown(stack: Stack) -> None:
    app = stack.app(duration=3.0)

    run = stack.wait(stack.enqueue(app.id))

    gaps = stack.poll_gaps(app.id)
    assert run.state is RunState.COMPLETED
    assert len(gaps) >= 5
    assert_spaced(gaps, POLL)  # countdown = POLL ± 10 % jitter


def test_another_app_can_enqueue_by_task_name_with_send_task(stack: Stack) -> None:
    # Given an unrelated Celery app that knows only the broker URL and the task name
    app = stack.app(user_inputs=[FakeInput("topic", required=True)])
    other = Celery("someone-else", broker=stack.redis.url, backend=stack.redis.url)

    # When it sends hatz.run_workflow by name
    result = other.send_task(
        "hatz.run_workflow",
        kwargs={"app_id": app.id, "inputs": {"topic": "tides"}, "idempotency_key": "order-1"},
        queue="hatz.submit",
    )
    run_id = result.get(timeout=20)
    again = other.send_task(
        "hatz.run_workflow",
        kwargs={"app_id": app.id, "inputs": {"topic": "tides"}, "idempotency_key": "order-1"},
        queue="hatz.submit",
    ).get(timeout=20)

    # Then it gets a run id back, the run completes, and the retried request paid once
    assert stack.wait(run_id).state is RunState.COMPLETED
    assert again == run_id
    assert len([c for c in stack.calls("run", app.id) if c["status"] == 200]) == 1
    other.close()


def test_send_task_naming_a_file_outside_the_roots_gives_a_rejected_run_and_no_upload(
    stack: Stack,
) -> None:
    # Given an unrelated Celery app naming a file the worker can read but must not upload
    app = stack.app(user_inputs=[FakeInput("report", variable_type="file_upload")])
    other = Celery("someone-else", broker=stack.redis.url, backend=stack.redis.url)
    uploads_before = len(stack.calls("upload"))

    result = other.send_task(
        "hatz.run_workflow",
        kwargs={"app_id": app.id, "inputs": {}, "files": {"report": "/proc/self/environ"}},
        queue="hatz.submit",
    )
    run = stack.wait(result.get(timeout=20))

    # Then the run is REJECTED, says why, and nothing reached the API
    assert run.state is RunState.REJECTED
    assert "/proc/self/environ" in run["error"]
    assert len(stack.calls("upload")) == uploads_before
    assert stack.calls("run", app.id) == []
    other.close()
