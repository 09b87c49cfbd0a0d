"""The HTTP API over a real uvicorn process (``hatz-worker serve``) and a private Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.http_stack import ApiServer, running_api
from worker.local.stack import LocalRedis

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    """One API process for this module (a low rate limit so 429 is reachable)."""
    with (
        LocalRedis() as redis,
        running_api(
            {
                "redis_url": redis.url,
                "base_url": "http://127.0.0.1:9/v1",
                "client_rate_limit": 0.2,
                "client_rate_burst": 20,
            }
        ) as server,
    ):
        yield server


def test_healthz_answers_without_a_token(api: ApiServer) -> None:
    answer = api.request("GET", "/healthz")

    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


def test_a_valid_token_names_its_client(api: ApiServer) -> None:
    token = api.token("me-client", admin=True)

    answer = api.request("GET", "/v1/me", token=token)

    assert answer.status_code == 200
    assert answer.json() == {"name": "me-client", "admin": True}


def test_no_token_is_401_with_a_bearer_challenge(api: ApiServer) -> None:
    answer = api.request("GET", "/v1/me")

    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer ")
    assert answer.headers["Content-Type"] == PROBLEM
    assert answer.json()["status"] == 401


@pytest.mark.parametrize("header", ["Bearer hzw_not-a-real-token", "Basic dXNlcjpwYXNz", "Bearer"])
def test_a_wrong_token_is_401(api: ApiServer, header: str) -> None:
    answer = api.request("GET", "/v1/me", headers={"Authorization": header})

    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer ")


def test_a_revoked_token_is_401(api: ApiServer) -> None:
    token = api.token("revoked-client")
    assert api.request("GET", "/v1/me", token=token).status_code == 200
    store = api.clients()
    store.revoke("revoked-client")
    store.redis.close()

    answer = api.request("GET", "/v1/me", token=token)

    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]


def test_a_client_over_its_rate_gets_429_with_retry_after(api: ApiServer) -> None:
    token = api.token("busy-client")
    other = api.token("quiet-client")

    codes = [api.request("GET", "/v1/me", token=token).status_code for _ in range(21)]

    assert codes[:20] == [200] * 20
    assert codes[20] == 429
    limited = api.request("GET", "/v1/me", token=token)
    assert limited.headers["Content-Type"] == PROBLEM
    assert int(limited.headers["Retry-After"]) >= 1
    assert api.request("GET", "/v1/me", token=other).status_code == 200


def test_an_unknown_path_is_a_404_problem(api: ApiServer) -> None:
    answer = api.request("GET", "/v1/nothing-here")

    assert answer.status_code == 404
    assert answer.headers["Content-Type"] == PROBLEM
    assert answer.json()["title"] == "Not Found"


def test_the_openapi_document_declares_bearer_auth(api: ApiServer) -> None:
    schema = api.request("GET", "/openapi.json").json()

    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "Problem" in schema["components"]["schemas"]
    assert "/healthz" in schema["paths"]
    assert api.request("GET", "/docs").status_code == 200


def test_redis_down_is_a_503_problem_not_a_500() -> None:
    with (
        LocalRedis() as redis,
        running_api({"redis_url": redis.url, "base_url": "http://127.0.0.1:9/v1"}) as server,
    ):
        token = server.token("c")
        redis.stop()

        health = server.request("GET", "/healthz")
        me = server.request("GET", "/v1/me", token=token)

        for answer in (health, me):
            assert answer.status_code == 503
            assert answer.headers["Content-Type"] == PROBLEM
            assert int(answer.headers["Retry-After"]) > 0
        assert "Traceback" not in server.log_text()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/runs"),
        ("GET", "/v1/runs"),
        ("GET", "/v1/runs/x"),
        ("POST", "/v1/runs/x/cancel"),
    ],
)
def test_every_runs_endpoint_asks_for_a_token_before_reading_the_request(
    api: ApiServer, method: str, path: str
) -> None:
    answer = api.request(
        method, path, data=b"{not json", headers={"Content-Type": "application/json"}
    )

    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer ")
