"""Hatz client behaviour with an injected transport: error classes, retries, redaction."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from worker.errors import (
    HatzAuthError,
    HatzConnectError,
    HatzCreditOverageError,
    HatzError,
    HatzNotFoundError,
    HatzRateLimitError,
    HatzResponseError,
    HatzServerError,
    HatzTimeoutError,
    HatzTransportError,
    HatzValidationError,
)
from worker.hatz_client import HatzClient

KEY = "sk-very-secret-api-key-42"
OVERAGE = "Workflows have been rate limited for your organization due to a credit overage."


@dataclass
class Sent:
    """One request as the client handed it to its connection pool."""

    method: str
    url: str
    headers: dict[str, str]
    body: Any

    @property
    def path_url(self) -> str:
        parts = urlsplit(self.url)
        return parts.path + (f"?{parts.query}" if parts.query else "")


class Script:
    """A connection pool that answers from a script: status/body/headers or an exception."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = list(answers)
        self.requests: list[Sent] = []

    def urlopen(self, method: str, url: str, **kw: Any) -> urllib3.BaseHTTPResponse:
        assert kw.get("redirect") is False
        assert kw.get("retries") is False  # the client retries, by its own rule
        self.requests.append(Sent(method, url, dict(kw.get("headers") or {}), kw.get("body")))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, body, headers = answer if len(answer) == 3 else (*answer, {})
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return urllib3.HTTPResponse(body=data, status=status, headers=headers, preload_content=True)

    def clear(self) -> None:
        pass


def client_with(answers: list[Any], **kwargs: Any) -> tuple[HatzClient, Script, list[float]]:
    script = Script(answers)
    sleeps: list[float] = []
    client = HatzClient(
        api_key=KEY,
        base_url="http://hatz.test/v1",
        pool=script,
        sleep=sleeps.append,
        retries=kwargs.pop("retries", 2),
        **kwargs,
    )
    return client, script, sleeps


JOB = {"job_id": "j1", "status": "running", "step_outputs": [], "future_field": {"x": 1}}


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, {"detail": "Invalid API key"}, HatzAuthError),
        (403, {"detail": "Forbidden"}, HatzAuthError),
        (404, {"detail": "Job not found"}, HatzNotFoundError),
        (429, {"detail": OVERAGE}, HatzCreditOverageError),
        (429, {"detail": "Rate limit exceeded"}, HatzRateLimitError),
        (400, {"detail": "bad"}, HatzValidationError),
        (
            422,
            {"detail": [{"loc": ["body", "app_id"], "msg": "Field required"}]},
            HatzValidationError,
        ),
        (500, {"detail": "boom"}, HatzServerError),
        (502, b"<html><body>Bad gateway</body></html>", HatzServerError),
    ],
)
def test_each_error_status_becomes_its_typed_error(
    status: int, body: Any, expected: type[HatzError]
) -> None:
    client, _, _ = client_with([(status, body)], retries=0)

    with pytest.raises(expected) as info:
        client.run_workflow("app", {})

    assert isinstance(info.value, HatzError)
    assert info.value.status_code == status  # type: ignore[attr-defined]


def test_credit_overage_keeps_the_api_detail_text() -> None:
    client, _, _ = client_with([(429, {"detail": OVERAGE})])

    with pytest.raises(HatzCreditOverageError) as info:
        client.run_workflow("app", {})

    assert info.value.detail == OVERAGE


def test_fastapi_validation_detail_is_flattened() -> None:
    client, _, _ = client_with(
        [(422, {"detail": [{"loc": ["body", "app_id"], "msg": "Field required"}]})]
    )

    with pytest.raises(HatzValidationError, match=r"app_id: Field required"):
        client.run_workflow("app", {})


def test_get_retries_5xx_with_backoff_then_succeeds() -> None:
    client, script, sleeps = client_with(
        [(502, b"bad gateway"), (503, {"detail": "x"}), (200, JOB)]
    )

    job = client.get_job("j1")

    assert job.status == "running"
    assert len(script.requests) == 3
    assert len(sleeps) == 2
    assert sleeps[1] > 0


def test_get_honours_retry_after() -> None:
    client, _, sleeps = client_with(
        [(429, {"detail": "Rate limit exceeded"}, {"Retry-After": "0.25"}), (200, JOB)],
        retry_max_delay=5,
    )

    client.get_job("j1")

    assert sleeps == [0.25]


def test_retry_after_longer_than_the_cap_is_raised_for_the_caller_to_schedule() -> None:
    client, script, sleeps = client_with(
        [(503, {"detail": "later"}, {"Retry-After": "120"})], retry_max_delay=5
    )

    with pytest.raises(HatzServerError) as info:
        client.get_job("j1")

    assert info.value.retry_after == 120
    assert sleeps == []
    assert len(script.requests) == 1


def test_get_gives_up_after_the_configured_retries() -> None:
    client, script, _ = client_with([(500, {"detail": "x"})] * 5, retries=2)

    with pytest.raises(HatzServerError):
        client.get_job("j1")

    assert len(script.requests) == 3


def test_submit_is_not_retried_when_the_request_may_have_reached_the_server() -> None:
    for failure in (
        (500, {"detail": "x"}),
        ReadTimeoutError(None, "/", "slow"),  # type: ignore[arg-type]
        ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")),
    ):
        client, script, _ = client_with([failure, (200, {"job_id": "j"})])

        with pytest.raises(HatzError):
            client.run_workflow("app", {})

        assert len(script.requests) == 1


def test_submit_is_retried_when_the_connection_never_opened() -> None:
    refused = NewConnectionError(None, "refused")  # type: ignore[arg-type]
    client, script, _ = client_with(
        [refused, (200, {"status": "Workflow Job Invoked", "job_id": "j"})]
    )

    assert client.run_workflow("app", {}).job_id == "j"
    assert len(script.requests) == 2


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectTimeoutError("x"), HatzConnectError),
        (NewConnectionError(None, "refused"), HatzConnectError),  # type: ignore[arg-type]
        (ReadTimeoutError(None, "/", "x"), HatzTimeoutError),  # type: ignore[arg-type]
        (ProtocolError("Connection aborted.", ConnectionResetError()), HatzTransportError),
        (ConnectionResetError(104, "reset"), HatzTransportError),
    ],
)
def test_transport_failures_become_typed_errors(exc: Exception, expected: type[HatzError]) -> None:
    client, _, _ = client_with([exc], retries=0)

    with pytest.raises(expected):
        client.get_job("j1")


def test_unknown_fields_are_kept_not_fatal() -> None:
    client, _, _ = client_with([(200, JOB)])

    job = client.get_job("j1")

    assert job.model_extra == {"future_field": {"x": 1}}


@pytest.mark.parametrize("body", [b"<html>oops</html>", b'{"job_id": "j1", "stat', b"[]"])
def test_malformed_2xx_body_is_a_response_error(body: bytes) -> None:
    client, _, _ = client_with([(200, body)])

    with pytest.raises(HatzResponseError):
        client.get_job("j1")


def test_upload_answer_without_file_uuid_is_a_clear_error(tmp_path: Any) -> None:
    f = tmp_path / "a.txt"
    f.write_text("hello")
    client, _, _ = client_with([(200, {"id": "something-else"})])

    with pytest.raises(HatzResponseError, match="file_uuid"):
        client.upload_file(f, scope_id="app")


def test_upload_streams_a_multipart_body_with_content_length(tmp_path: Any) -> None:
    f = tmp_path / "a.csv"
    f.write_bytes(b"x" * 300_000)
    client, script, _ = client_with([(200, {"file_uuid": "f-1"})])

    assert client.upload_file(f, scope_id="app-1").file_uuid == "f-1"

    request = script.requests[0]
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert int(request.headers["Content-Length"]) > 300_000
    assert not isinstance(request.body, bytes)  # streamed, not read into memory
    body = b"".join(request.body)
    assert b'name="scope_type"\r\n\r\nworkflow' in body
    assert b'name="scope_id"\r\n\r\napp-1' in body


def test_path_parameters_are_quoted() -> None:
    client, script, _ = client_with([(200, JOB)])

    client.get_job("../app/list?x=1")

    assert script.requests[0].path_url == "/v1/workflows/..%2Fapp%2Flist%3Fx%3D1"


def test_api_key_is_sent_but_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client, script, _ = client_with(
        [(401, {"detail": "Invalid API key"})] + [(500, {"detail": "x"})] * 3
    )

    with pytest.raises(HatzAuthError) as auth:
        client.get_job("j")
    with pytest.raises(HatzServerError) as server:
        client.get_job("j")

    assert script.requests[0].headers["X-API-Key"] == KEY
    shown: list[str] = [
        repr(client),
        str(auth.value),
        repr(auth.value),
        str(server.value),
        caplog.text,
    ]
    assert all(KEY not in text for text in shown)


def test_list_apps_rejects_a_limit_outside_the_api_range_before_sending() -> None:
    client, script, _ = client_with([])

    for limit in (0, 1001):
        with pytest.raises(ValueError, match="limit"):
            client.list_apps(limit=limit)

    assert script.requests == []


def test_timeouts_are_always_set() -> None:
    client, _, _ = client_with([])

    assert client.timeout == (5.0, 30.0)


def test_proxy_settings_are_read_from_the_environment_once_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    proxied = HatzClient(api_key="k" * 20, base_url="https://ai.hatz.ai/v1")
    bypassed = HatzClient(api_key="k" * 20, base_url="https://internal.example/v1")
    monkeypatch.setenv("HTTPS_PROXY", "http://changed.example:1")

    assert isinstance(proxied._pool, urllib3.ProxyManager)
    assert str(proxied._pool.proxy) == "http://proxy.example:3128"
    assert not isinstance(bypassed._pool, urllib3.ProxyManager)
