"""The HTTP API against its own ``/openapi.json``: schemathesis (its CLI, a bounded run with a
fixed seed) drives a real ``hatz-worker serve`` process backed by Redis and the fake Hatz
server, and must find no 5xx and no answer outside the schema.

Every check runs but ``positive_data_acceptance``: a request can match the schema and still
be refused for what only the server knows (an app Hatz does not have, a callback host that
is not allowed, a cursor it did not make); those are documented ``4xx`` problems.
A longer run by hand: ``SCHEMATHESIS_EXAMPLES=500 pytest tests/test_http_openapi.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_KEY
from tests.http_stack import ApiServer, running_api
from worker.fake_hatz import FakeApp, FakeHatz, FakeInput
from worker.local.stack import LocalRedis

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))
SEED = 18


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    """An API process over a fresh Redis and a fake Hatz with one app."""
    with LocalRedis() as redis, FakeHatz(api_key=API_KEY, port=0) as fake:
        fake.add_app(FakeApp(id="app-1", name="Summarise", user_inputs=[FakeInput("topic")]))
        settings: dict[str, Any] = {
            "redis_url": redis.url,
            "base_url": fake.url,
            "client_rate_limit": 100_000,
            "client_rate_burst": 100_000,
            "upload_max_bytes": 64 * 1024,
            "http_retries": 0,
        }
        with running_api(settings) as server:
            yield server


def _schemathesis(api: ApiServer, token: str, workdir: Path, *extra: str) -> tuple[int, str]:
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{api.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "2",
        "--request-timeout",
        "20",
        "--warnings",
        "off",
        "--no-color",
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = "*"  # loopback only: never an environment proxy
    done = subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=110, check=False
    )
    return done.returncode, done.stdout + done.stderr


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(
    api: ApiServer, tmp_path: Path
) -> None:
    token = api.token("fuzzer")

    code, output = _schemathesis(api, token, tmp_path)

    assert code == 0, output[-15000:]
    assert "Tested: 11" in output, output[-3000:]  # every operation of the schema
    assert "Internal Server Error" not in api.log_text()


def test_the_schema_documents_every_endpoint_with_its_problems(api: ApiServer) -> None:
    schema = api.request("GET", "/openapi.json").json()
    paths = schema["paths"]

    assert {
        "/healthz",
        "/v1/runs",
        "/v1/runs/{run_id}",
        "/v1/runs/{run_id}/cancel",
        "/v1/batches",
        "/v1/batches/{batch_id}",
        "/v1/batches/{batch_id}/results",
        "/v1/apps",
        "/v1/apps/{app_id}",
    } <= set(paths)
    for path, operations in paths.items():
        for method, operation in operations.items():
            answers = operation["responses"]
            errors = {code: a for code, a in answers.items() if code[0] in "45"}
            assert errors, f"{method} {path} documents no error answer"
            for code, answer in errors.items():
                assert set(answer["content"]) == {"application/problem+json"}, (path, code)
            assert "503" in answers, f"{method} {path}"  # Redis unreachable
            if path.startswith("/v1/"):
                assert "401" in answers, f"{method} {path}"
                assert "429" in answers, f"{method} {path}"


def test_the_interactive_docs_are_served(api: ApiServer) -> None:
    answer = api.request("GET", "/docs")

    assert answer.status_code == 200
    assert "/openapi.json" in answer.text


def test_a_method_a_path_does_not_serve_is_405_naming_those_it_does(api: ApiServer) -> None:
    token = api.token("methods")

    answer = api.request("DELETE", "/v1/runs", token=token)

    assert answer.status_code == 405
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["Allow"] == "GET, POST"
