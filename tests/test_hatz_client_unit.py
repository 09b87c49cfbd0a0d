"""Hatz client behaviour with an injected transport: error classes, retries, redaction."""

from __future__ import annotations

import http.client
import json
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

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
from worker.hatz.client import HatzClient
from worker.hatz.transport import (
    Body,
    ConnectFailed,
    ConnectionLost,
    ConnectTimedOut,
    HttpPool,
    ReadTimedOut,
    Response,
    TransportError,
)

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

    def urlopen(
        self,
        method: str,
        url: str,
        *,
        body: Body = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        self.requests.append(Sent(method, url, dict(headers or {}), body))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, content, answer_headers = answer if len(answer) == 3 else (*answer, {})
        data = content if isinstance(content, bytes) else json.dumps(content).encode()
        return Response.build(status, data, answer_headers)

    def clear(self) -> None:
        pass


def failure(cls: type[TransportError], cause: BaseException | None = None) -> TransportError:
    """A transport failure as the pool raises it: the underlying exception as its cause."""
    exc = cls(f"{cls.__name__} (test)")
    exc.__cause__ = cause
    return exc


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
    for answer in (
        (500, {"detail": "x"}),
        failure(ReadTimedOut, TimeoutError("timed out")),
        failure(ConnectionLost, ConnectionResetError(104, "reset")),
        failure(ConnectionLost, BrokenPipeError(32, "broken pipe")),
        failure(ConnectionLost),
    ):
        client, script, _ = client_with([answer, (200, {"job_id": "j"})])

        with pytest.raises(HatzError):
            client.run_workflow("app", {})

        assert len(script.requests) == 1


@pytest.mark.parametrize(
    "never_sent",
    [
        failure(ConnectFailed, ConnectionRefusedError(111, "refused")),
        failure(ConnectTimedOut, TimeoutError("timed out")),
    ],
)
def test_submit_is_retried_when_the_connection_never_opened(never_sent: TransportError) -> None:
    client, script, _ = client_with(
        [never_sent, (200, {"status": "Workflow Job Invoked", "job_id": "j"})]
    )

    assert client.run_workflow("app", {}).job_id == "j"
    assert len(script.requests) == 2


@pytest.mark.parametrize(
    ("exc", "expected", "message"),
    [
        (
            failure(ConnectTimedOut, TimeoutError("timed out")),
            HatzConnectError,
            "connect timeout (GET /workflows/j1)",
        ),
        (
            failure(ConnectFailed, ConnectionRefusedError(111, "refused")),
            HatzConnectError,
            "cannot connect (GET /workflows/j1)",
        ),
        (
            failure(ConnectFailed, ssl.SSLCertVerificationError("certificate verify failed")),
            HatzConnectError,
            "cannot connect (GET /workflows/j1)",
        ),
        (
            failure(ReadTimedOut, TimeoutError("timed out")),
            HatzTimeoutError,
            "read timeout (GET /workflows/j1)",
        ),
        (
            failure(ConnectionLost, ConnectionResetError(104, "reset")),
            HatzTransportError,
            "connection lost: ConnectionResetError (GET /workflows/j1)",
        ),
        (
            failure(ConnectionLost, http.client.RemoteDisconnected("closed")),
            HatzTransportError,
            "connection lost: RemoteDisconnected (GET /workflows/j1)",
        ),
        (
            failure(ConnectionLost),
            HatzTransportError,
            "connection lost: ConnectionLost (GET /workflows/j1)",
        ),
        (
            ConnectionResetError(104, "reset"),
            HatzTransportError,
            "connection lost: ConnectionResetError (GET /workflows/j1)",
        ),
    ],
)
def test_transport_failures_become_typed_errors(
    exc: Exception, expected: type[HatzError], message: str
) -> None:
    client, _, _ = client_with([exc], retries=0)

    with pytest.raises(HatzError) as info:
        client.get_job("j1")

    assert type(info.value) is expected
    assert str(info.value) == message
    assert info.value.__cause__ is None  # the pool's own text never leaks into the error


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


def test_proxy_and_ca_bundle_are_read_from_the_environment_once_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/corporate.pem")
    proxied = HatzClient(api_key="k" * 20, base_url="https://ai.hatz.ai/v1")
    bypassed = HatzClient(api_key="k" * 20, base_url="https://internal.example/v1")
    monkeypatch.setenv("HTTPS_PROXY", "http://changed.example:1")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/elsewhere.pem")
    later = HatzClient(api_key="k" * 20, base_url="https://ai.hatz.ai/v1")

    assert isinstance(proxied._pool, HttpPool)
    assert isinstance(bypassed._pool, HttpPool)
    assert isinstance(later._pool, HttpPool)
    assert proxied._pool.proxy == "http://proxy.example:3128"
    assert proxied._pool.ca_bundle == "/etc/ssl/corporate.pem"
    assert bypassed._pool.proxy is None
    assert later._pool.proxy == "http://changed.example:1"  # only new clients see a change
    assert later._pool.ca_bundle == "/elsewhere.pem"
    # (tests/test_http_pool.py sends through a real proxy and checks a real CA bundle)


def test_the_default_pool_has_the_clients_timeouts_and_no_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)

    client = HatzClient(api_key="k" * 20, connect_timeout=3.0, read_timeout=7.0)

    assert isinstance(client._pool, HttpPool)
    assert (client._pool.connect_timeout, client._pool.read_timeout) == (3.0, 7.0)
    assert client._pool.proxy is None
    assert client._pool.ca_bundle is None  # certifi's bundle
