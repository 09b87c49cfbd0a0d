"""The Hatz client against the fake Hatz server over real HTTP: every endpoint, every
error class, retries with Retry-After, timeouts and secret redaction."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from worker.errors import (
    HatzAuthError,
    HatzConnectError,
    HatzCreditOverageError,
    HatzNotFoundError,
    HatzRateLimitError,
    HatzServerError,
    HatzTimeoutError,
    HatzTransportError,
    HatzValidationError,
)
from worker.fake_hatz import (
    CODING_APP_ID,
    REPORT_SUMMARIZER_ID,
    TOPIC_BRIEF_ID,
    FakeApp,
    FakeHatz,
    FakeStep,
    FaultConfig,
    ManualClock,
    seed_default_apps,
)
from worker.hatz.client import HatzClient
from worker.local.stack import free_port

KEY = "hatz-test-key-7f3a9c"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1_800_000_000.0)


@pytest.fixture
def fake(clock: ManualClock) -> Iterator[FakeHatz]:
    with FakeHatz(api_key=KEY, clock=clock) as server:
        seed_default_apps(server)
        yield server


@pytest.fixture
def client(fake: FakeHatz) -> Iterator[HatzClient]:
    with HatzClient(
        api_key=KEY,
        base_url=fake.url,
        read_timeout=1.0,
        retries=2,
        retry_base_delay=0.01,
        retry_max_delay=1.5,
    ) as c:
        yield c


def test_upload_run_poll_and_presign_a_document_workflow(
    fake: FakeHatz, client: HatzClient, clock: ManualClock, tmp_path: Path
) -> None:
    report = tmp_path / "report.csv"
    report.write_text("a,b\n1,2\n")

    uploaded = client.upload_file(report, scope_type="workflow", scope_id=REPORT_SUMMARIZER_ID)
    job = client.run_workflow(
        REPORT_SUMMARIZER_ID, {"report_file": uploaded.file_uuid, "summary_style": "brief"}
    )
    first = client.get_job(job.job_id)
    clock.advance(60)
    done = client.get_job(job.job_id)
    (document_step,) = [s for s in done.step_outputs if s.output_type != "dump"]
    url = client.presigned_url(job.job_id, document_step.step_id, expires_in=120)

    assert fake.upload_info(uploaded.file_uuid) is not None
    assert first.status in ("pending", "running")
    assert done.status == "complete"
    assert done.steps_done == done.number_of_steps == 2
    assert url.expires_in == 120
    assert requests.get(url.url, timeout=5).content.startswith(b"%PDF")


def test_presign_of_a_text_step_is_a_validation_error(
    client: HatzClient, clock: ManualClock
) -> None:
    job = client.run_workflow(TOPIC_BRIEF_ID, {"topic": "tides"})
    clock.advance(60)
    text_step = client.get_job(job.job_id).step_outputs[0]

    with pytest.raises(HatzValidationError):
        client.presigned_url(job.job_id, text_step.step_id)


def test_failed_job_reports_failed_status(
    fake: FakeHatz, client: HatzClient, clock: ManualClock
) -> None:
    fake.add_app(FakeApp(id="wf-fail", steps=[FakeStep(), FakeStep()], fail=True))

    job = client.run_workflow("wf-fail", {})
    clock.advance(60)

    assert client.get_job(job.job_id).status == "failed"


def test_app_builder_endpoints(client: HatzClient) -> None:
    everything = list(client.iter_apps(page_size=2))
    coding = client.get_app(CODING_APP_ID)
    filtered = client.list_apps(name="CODI")
    answer = client.query_app(CODING_APP_ID, {"language": "python"})

    assert len(everything) == 4
    assert len({a.id for a in everything}) == 4
    assert [a.name for a in filtered] == ["coding"]
    assert [u.variable_name for u in coding.user_inputs] == ["language"]
    assert not coding.is_workflow
    assert answer.model_extra


def test_wrong_api_key_is_an_auth_error_that_never_shows_the_key(
    fake: FakeHatz, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-key-should-not-leak"

    with HatzClient(api_key=wrong, base_url=fake.url) as c, pytest.raises(HatzAuthError) as info:
        c.get_app(CODING_APP_ID)

    assert info.value.status_code == 401
    assert wrong not in str(info.value) + repr(info.value) + repr(c) + caplog.text
    assert KEY not in caplog.text


def test_unknown_job_and_app_are_not_found(client: HatzClient) -> None:
    with pytest.raises(HatzNotFoundError) as job:
        client.get_job("00000000-0000-0000-0000-000000000000")
    with pytest.raises(HatzNotFoundError):
        client.get_app("no-such-app")

    assert job.value.detail == "Job not found"


def test_missing_required_input_is_a_validation_error(client: HatzClient) -> None:
    with pytest.raises(HatzValidationError):
        client.run_workflow(TOPIC_BRIEF_ID, {})


def test_credit_overage_is_distinct_from_a_rate_limit(fake: FakeHatz, client: HatzClient) -> None:
    fake.set_overage(True)
    with pytest.raises(HatzCreditOverageError) as overage:
        client.run_workflow(TOPIC_BRIEF_ID, {"topic": "x"})
    fake.set_overage(False)
    fake.configure(FaultConfig(rate_limit_rate=1.0, endpoints={"run"}))
    with pytest.raises(HatzRateLimitError) as limited:
        client.run_workflow(TOPIC_BRIEF_ID, {"topic": "x"})

    assert "credit overage" in overage.value.detail
    assert not isinstance(limited.value, HatzCreditOverageError)
    assert limited.value.retry_after == 1.0


def test_gets_retry_5xx_and_honour_retry_after(fake: FakeHatz) -> None:
    waits: list[float] = []
    client = HatzClient(
        api_key=KEY, base_url=fake.url, retries=2, retry_max_delay=1.5, sleep=waits.append
    )
    job = client.run_workflow(TOPIC_BRIEF_ID, {"topic": "x"})
    fake.configure(FaultConfig(rate_limit_rate=1.0, endpoints={"status"}))
    with pytest.raises(HatzRateLimitError):
        client.get_job(job.job_id)
    honoured = list(waits)
    fake.configure(FaultConfig(error_rate=1.0, endpoints={"status"}))
    with pytest.raises(HatzServerError):
        client.get_job(job.job_id)

    # 1 try + 2 retries each; the 429s' Retry-After: 1 was waited out exactly
    assert honoured == [1.0, 1.0]
    assert len([c for c in fake.calls(endpoint="status") if c["status"] == 429]) == 3
    assert len([c for c in fake.calls(endpoint="status") if c["status"] >= 500]) == 3
    client.close()


def test_submit_5xx_is_not_retried_by_the_client(fake: FakeHatz, client: HatzClient) -> None:
    fake.configure(FaultConfig(error_rate=1.0, endpoints={"run"}))

    with pytest.raises(HatzServerError):
        client.run_workflow(TOPIC_BRIEF_ID, {"topic": "x"})

    assert len(fake.calls(endpoint="run")) == 1
    assert fake.stats()["jobs_created"] == 0


def test_a_hanging_server_is_a_timeout(fake: FakeHatz) -> None:
    fake.configure(FaultConfig(timeout_rate=1.0, hang_seconds=3.0, endpoints={"app_get"}))

    with (
        HatzClient(api_key=KEY, base_url=fake.url, read_timeout=0.3, retries=0) as client,
        pytest.raises(HatzTransportError) as info,
    ):
        client.get_app(CODING_APP_ID)

    assert isinstance(info.value, HatzTimeoutError)


def test_a_closed_port_is_a_connect_error_safe_to_retry() -> None:
    with (
        HatzClient(api_key=KEY, base_url=f"http://127.0.0.1:{free_port()}/v1", retries=0) as c,
        pytest.raises(HatzConnectError),
    ):
        c.run_workflow(TOPIC_BRIEF_ID, {"topic": "x"})
