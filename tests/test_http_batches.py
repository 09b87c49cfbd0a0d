"""The batches and apps endpoints end to end: a real ``hatz-worker serve`` (uvicorn), a real
Celery worker and the fake Hatz server, all on loopback."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.http_stack import ApiServer, running_api
from tests.stack import Stack, running_stack
from worker.fake_hatz import FakeInput
from worker.local.stack import wait_until

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
UPLOAD_CAP = 64 * 1024
WORKER_SETTINGS: dict[str, Any] = {
    "poll_initial_delay": 0.1,
    "poll_interval": 0.1,
    "poll_max_interval": 0.3,
    "poll_backoff": 1.0,
    "http_retries": 1,
    "http_retry_base_delay": 0.05,
    "http_retry_max_delay": 0.2,
    "app_cache_ttl": 0,
}


class Apis:
    """The stack, the API process and three clients' tokens."""

    def __init__(self, stack: Stack, api: ApiServer) -> None:
        self.stack = stack
        self.api = api
        self.alice = api.token("alice")
        self.bob = api.token("bob")
        self.admin = api.token("root", admin=True)

    def post_batch(self, token: str, body: dict[str, Any], **kwargs: Any) -> Any:
        """``POST /v1/batches`` with a JSON body."""
        return self.api.request("POST", "/v1/batches", token=token, json=body, **kwargs)

    def finished(self, token: str, batch_id: str, timeout: float = 30) -> dict[str, Any]:
        """The batch once finished."""
        seen: dict[str, Any] = {}

        def done() -> bool:
            answer = self.api.request("GET", f"/v1/batches/{batch_id}", token=token)
            assert answer.status_code == 200, answer.text
            seen.update(answer.json())
            return bool(seen["state"] == "finished")

        wait_until(done, timeout=timeout, interval=0.1, message=f"batch {batch_id} to finish")
        return seen


@pytest.fixture(scope="module")
def apis() -> Iterator[Apis]:
    """One stack and one API process (app definitions cached for a minute) for the module."""
    with running_stack(values=WORKER_SETTINGS) as stack:
        settings = {
            **stack.values,
            "upload_max_bytes": UPLOAD_CAP,
            "client_rate_burst": 1000,
            "app_cache_ttl": 60,
        }
        with running_api(settings) as api:
            yield Apis(stack, api)


def _topic_app(apis: Apis, **kwargs: Any) -> Any:
    return apis.stack.app(user_inputs=[FakeInput("topic", required=True)], **kwargs)


def test_json_rows_run_as_a_batch_with_results_as_csv_or_json_lines(apis: Apis) -> None:
    # Given an app taking a topic
    app = _topic_app(apis)

    # When a client sends three rows as JSON
    answer = apis.post_batch(
        apis.alice,
        {"app_id": app.id, "rows": [{"topic": "a"}, {"topic": "b"}, {"topic": "c"}]},
    )

    # Then the batch starts, recorded as the client's, and finishes with every row completed
    assert answer.status_code == 201, answer.text
    batch = answer.json()
    assert batch["client"] == "alice"
    assert batch["total"] == 3
    assert answer.headers["Location"] == f"/v1/batches/{batch['batch_id']}"
    done = apis.finished(apis.alice, batch["batch_id"])
    assert done["counts"]["completed"] == 3, done
    path = f"/v1/batches/{batch['batch_id']}/results"

    # And its results come as CSV or as JSON Lines by Accept
    as_csv = apis.api.request("GET", path, token=apis.alice, headers={"Accept": "text/csv"})
    assert as_csv.status_code == 200, as_csv.text
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [json.loads(r["inputs"])["topic"] for r in rows] == ["a", "b", "c"]
    assert {r["status"] for r in rows} == {"COMPLETED"}
    as_lines = apis.api.request(
        "GET", path, token=apis.alice, headers={"Accept": "application/x-ndjson"}
    )
    assert as_lines.status_code == 200, as_lines.text
    assert as_lines.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in as_lines.text.splitlines()]
    assert [line["row"] for line in lines] == [1, 2, 3]
    assert [line["run_id"] for line in lines] == [r["run_id"] for r in rows]

    # And the batch's runs are the client's own runs
    run = apis.api.request("GET", f"/v1/runs/{rows[0]['run_id']}", token=apis.alice)
    assert run.status_code == 200, run.text
    assert run.json()["client"] == "alice"


def test_a_csv_file_in_a_multipart_body_runs_as_a_batch(apis: Apis) -> None:
    app = _topic_app(apis)
    content = "topic\nnorth\nsouth\n"

    answer = apis.api.request(
        "POST",
        "/v1/batches",
        token=apis.alice,
        data={"request": json.dumps({"app_id": app.id, "max_in_flight": 1})},
        files={"file": ("topics.csv", content.encode(), "text/csv")},
    )

    assert answer.status_code == 201, answer.text
    batch = answer.json()
    assert batch["max_in_flight"] == 1
    done = apis.finished(apis.alice, batch["batch_id"])
    assert done["counts"]["completed"] == 2, done
    path = f"/v1/batches/{batch['batch_id']}/results"
    lines = apis.api.request("GET", path, token=apis.alice).text.splitlines()
    assert [json.loads(line)["inputs"]["topic"] for line in lines] == ["north", "south"]


def test_bad_rows_are_422_listing_each_by_number_and_nothing_runs(apis: Apis) -> None:
    app = _topic_app(apis)
    runs_before = len(apis.stack.calls("run", app.id))
    content = b'{"topic": "ok"}\n{"other": 1}\nnot json\n'

    answer = apis.api.request(
        "POST",
        "/v1/batches",
        token=apis.alice,
        data={"request": json.dumps({"app_id": app.id})},
        files={"file": ("rows.jsonl", content, "application/x-ndjson")},
    )

    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == PROBLEM
    errors = answer.json()["errors"]
    assert [e.split(":")[0] for e in errors] == ["row 2", "row 3"], errors
    assert "hatz-batch-" not in answer.text  # no server path in the answer
    assert len(apis.stack.calls("run", app.id)) == runs_before


def test_skipped_bad_rows_are_listed_on_the_batch(apis: Apis) -> None:
    app = _topic_app(apis)

    answer = apis.post_batch(
        apis.alice,
        {"app_id": app.id, "rows": [{"topic": "x"}, {"nope": "y"}], "on_bad_rows": "skip"},
    )

    assert answer.status_code == 201, answer.text
    batch = answer.json()
    assert batch["total"] == 1
    assert batch["skipped"] == 1
    assert batch["bad_rows"][0]["row"] == 2


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"app_id": "x", "source": "/etc/passwd"}, 422, "never accepted"),
        ({"app_id": "x", "rows": [{"a": 1}], "file_input": "doc"}, 422, "never accepted"),
        ({"app_id": "x", "rows": []}, 422, "rows"),
        ({"app_id": "x", "rows": [{"a": 1}], "max_in_flight": 0}, 422, "max_in_flight"),
        ({"app_id": "x", "rows": [{"a": 1}], "on_bad_rows": "maybe"}, 422, "on_bad_rows"),
        ({"rows": [{"a": 1}]}, 422, "app_id"),
    ],
)
def test_bad_batch_requests_are_4xx_problems(
    apis: Apis, body: dict[str, Any], status: int, needle: str
) -> None:
    answer = apis.post_batch(apis.alice, body)

    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    assert needle in answer.text


def test_an_unknown_app_is_a_422_problem(apis: Apis) -> None:
    answer = apis.post_batch(apis.alice, {"app_id": str(uuid.uuid4()), "rows": [{"a": "1"}]})

    assert answer.status_code == 422, answer.text
    assert "unknown app_id" in answer.json()["errors"][0]


def test_a_rows_file_over_the_cap_is_413(apis: Apis) -> None:
    answer = apis.api.request(
        "POST",
        "/v1/batches",
        token=apis.alice,
        data={"request": json.dumps({"app_id": "x"})},
        files={"file": ("big.csv", b"topic\n" + b"x\n" * UPLOAD_CAP, "text/csv")},
    )

    assert answer.status_code == 413, answer.text
    assert answer.headers["content-type"] == PROBLEM


def test_two_clients_cannot_see_each_others_batches(apis: Apis) -> None:
    app = _topic_app(apis)
    answer = apis.post_batch(apis.alice, {"app_id": app.id, "rows": [{"topic": "mine"}]})
    assert answer.status_code == 201, answer.text
    batch_id = answer.json()["batch_id"]

    for path in (f"/v1/batches/{batch_id}", f"/v1/batches/{batch_id}/results"):
        theirs = apis.api.request("GET", path, token=apis.bob)
        unknown = apis.api.request("GET", path.replace(batch_id, "f" * 32), token=apis.bob)
        assert theirs.status_code == unknown.status_code == 404, theirs.text
        assert theirs.headers["content-type"] == PROBLEM
        assert apis.api.request("GET", path, token=apis.admin).status_code == 200


def test_results_in_a_type_neither_csv_nor_json_lines_is_406(apis: Apis) -> None:
    app = _topic_app(apis)
    batch_id = apis.post_batch(apis.alice, {"app_id": app.id, "rows": [{"topic": "t"}]}).json()[
        "batch_id"
    ]

    answer = apis.api.request(
        "GET",
        f"/v1/batches/{batch_id}/results",
        token=apis.alice,
        headers={"Accept": "image/png"},
    )

    assert answer.status_code == 406, answer.text
    assert answer.headers["content-type"] == PROBLEM


def test_the_same_batch_key_is_each_clients_own(apis: Apis) -> None:
    app = _topic_app(apis)
    body = {"app_id": app.id, "rows": [{"topic": "k"}], "batch_key": "nightly"}
    first = apis.post_batch(apis.alice, body).json()
    apis.finished(apis.alice, first["batch_id"])

    again = apis.post_batch(apis.alice, body).json()
    other = apis.post_batch(apis.bob, body).json()

    assert again["batch_key"] == other["batch_key"] == "nightly"
    assert again["counts"]["reused"] == 1  # alice's row already completed under her key
    assert other["counts"]["reused"] == 0  # bob's key of the same name is his own


def test_apps_are_listed_filtered_paged_and_cached(apis: Apis) -> None:
    tag = uuid.uuid4().hex[:8]
    for n in range(3):
        apis.stack.app(name=f"Report {tag} {n}", user_inputs=[FakeInput("topic")])
    apis.stack.context.redis.delete(apis.stack.context.keys.app_list)
    calls_before = len(apis.stack.calls("app_list"))

    first = apis.api.request("GET", f"/v1/apps?name=REPORT+{tag}&limit=2", token=apis.alice)
    second = apis.api.request(
        "GET", f"/v1/apps?name=report+{tag}&limit=2&offset=2", token=apis.alice
    )

    assert first.status_code == 200, first.text
    page = first.json()
    assert page["total"] == 3
    assert [a["name"] for a in page["apps"]] == [f"Report {tag} 0", f"Report {tag} 1"]
    assert page["next_offset"] == 2
    assert page["apps"][0]["user_inputs"][0]["variable_name"] == "topic"
    assert [a["name"] for a in second.json()["apps"]] == [f"Report {tag} 2"]
    assert second.json()["next_offset"] is None
    assert len(apis.stack.calls("app_list")) - calls_before == 1  # the second page was cached


def test_one_app_and_an_unknown_one(apis: Apis) -> None:
    app = _topic_app(apis, name="One app")

    found = apis.api.request("GET", f"/v1/apps/{app.id}", token=apis.alice)
    missing = apis.api.request("GET", f"/v1/apps/{uuid.uuid4()}", token=apis.alice)

    assert found.status_code == 200, found.text
    assert found.json()["name"] == "One app"
    assert found.json()["is_workflow"] is True
    assert missing.status_code == 404, missing.text
    assert missing.headers["content-type"] == PROBLEM


def test_batches_and_apps_need_a_token(apis: Apis) -> None:
    for method, path in (("GET", "/v1/apps"), ("GET", "/v1/batches/x"), ("POST", "/v1/batches")):
        answer = apis.api.request(method, path)
        assert answer.status_code == 401, (path, answer.text)
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_rows_file_format_comes_from_the_request_when_its_name_says_nothing(apis: Apis) -> None:
    app = _topic_app(apis)
    files = {"file": ("export.txt", b"topic\nalpha\n", "text/plain")}

    unnamed = apis.api.request(
        "POST",
        "/v1/batches",
        token=apis.alice,
        data={"request": json.dumps({"app_id": app.id})},
        files=files,
    )
    named = apis.api.request(
        "POST",
        "/v1/batches",
        token=apis.alice,
        data={"request": json.dumps({"app_id": app.id, "format": "csv"})},
        files=files,
    )

    assert unnamed.status_code == 422, unnamed.text
    assert "format" in unnamed.json()["errors"][0]
    assert named.status_code == 201, named.text
    assert named.json()["total"] == 1


def test_a_batch_body_neither_json_nor_multipart_is_415(apis: Apis) -> None:
    answer = apis.api.request(
        "POST",
        "/v1/batches",
        token=apis.alice,
        data=b"topic\nx\n",
        headers={"Content-Type": "text/csv"},
    )

    assert answer.status_code == 415, answer.text
    assert answer.headers["content-type"] == PROBLEM
