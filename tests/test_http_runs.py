"""The runs endpoints end to end: a real ``hatz-worker serve`` (uvicorn), a real Celery
worker, the fake Hatz server and a callback receiver, all on loopback."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks

from tests.http_stack import ApiServer, running_api
from tests.stack import Stack, running_stack
from worker.fake_hatz import FakeInput, FakeStep
from worker.local.stack import wait_until

pytestmark = pytest.mark.integration

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
UPLOAD_CAP = 256 * 1024
PROBLEM = "application/problem+json"
WORKER_SETTINGS: dict[str, Any] = {
    "poll_initial_delay": 0.1,
    "poll_interval": 0.1,
    "poll_max_interval": 0.3,
    "poll_backoff": 1.0,
    "http_retries": 1,
    "http_retry_base_delay": 0.05,
    "http_retry_max_delay": 0.2,
    "app_cache_ttl": 0,
    "webhook_secret": SECRET,
    "callback_allow_private": True,
    "callback_retry_delays": "0,0.2,0.5",
}


class Apis:
    """The stack, the API process (with its own temporary directory) and three clients."""

    def __init__(self, stack: Stack, api: ApiServer, tmp: Path) -> None:
        self.stack = stack
        self.api = api
        self.tmp = tmp
        self.alice = api.token("alice")
        self.bob = api.token("bob")
        self.admin = api.token("root", admin=True)

    def post_run(self, token: str, body: dict[str, Any], **kwargs: Any) -> Any:
        """``POST /v1/runs`` with a JSON body."""
        return self.api.request("POST", "/v1/runs", token=token, json=body, **kwargs)


@pytest.fixture(scope="module")
def apis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apis]:
    """One stack and one API process for the module."""
    tmp = tmp_path_factory.mktemp("api-tmp")
    with running_stack(values=WORKER_SETTINGS) as stack:
        settings = {**stack.values, "upload_max_bytes": UPLOAD_CAP, "client_rate_burst": 1000}
        with running_api(settings, env={"TMPDIR": str(tmp)}) as api:
            yield Apis(stack, api, tmp)


def test_a_multipart_run_with_a_file_completes_and_its_callback_verifies(apis: Apis) -> None:
    # Given a workflow with a file input and a document step
    app = apis.stack.app(
        user_inputs=[FakeInput("report", variable_type="file_upload", required=True)],
        steps=[FakeStep(output_type="dump"), FakeStep(output_type="document")],
    )
    content = b"region,sales\n" + b"north,10\n" * 20_000  # ~180 KB: several chunks
    request = {"app_id": app.id, "callback_url": apis.stack.receiver.url, "metadata": {"o": 7}}

    # When a client sends it as multipart with the file, waiting for the end
    answer = apis.api.request(
        "POST",
        "/v1/runs",
        token=apis.alice,
        data={"request": json.dumps(request)},
        files={"report": ("sales 2026.csv", content, "text/csv")},
        headers={"Prefer": "wait=30"},
    )

    # Then the run completed with the file uploaded intact, and one verified callback came
    assert answer.status_code == 201, answer.text
    run = answer.json()
    assert run["state"] == "COMPLETED", run
    assert run["client"] == "alice"
    assert answer.headers["Preference-Applied"] == "wait=30"
    assert answer.headers["Location"] == f"/v1/runs/{run['run_id']}"
    uploaded = apis.stack.fake.upload_info(run["inputs"]["report"])
    assert uploaded is not None
    assert uploaded["sha256"] == hashlib.sha256(content).hexdigest()
    assert uploaded["filename"] == "sales 2026.csv"
    assert len(run["documents"]) == 1
    assert list(apis.tmp.iterdir()) == []  # the received file is gone
    wait_until(lambda: apis.stack.deliveries_for(run["run_id"]), timeout=10, message="callback")
    (delivery,) = apis.stack.deliveries_for(run["run_id"])
    payload = standardwebhooks.Webhook(SECRET).verify(delivery["body"], delivery["headers"])
    assert payload["type"] == "workflow_run.completed"
    assert payload["data"]["metadata"] == {"o": 7}
    wait_until(
        lambda: (
            apis.api.request("GET", f"/v1/runs/{run['run_id']}", token=apis.alice).json()[
                "callback_state"
            ]
            == "delivered"
        ),
        timeout=10,
        message="callback recorded as delivered",
    )
    after = apis.api.request("GET", f"/v1/runs/{run['run_id']}", token=apis.alice).json()
    assert [a.get("status") for a in after["callback_attempts"]] == [200]


def test_a_file_over_the_cap_is_413_and_nothing_is_enqueued(apis: Apis) -> None:
    app = apis.stack.app(user_inputs=[FakeInput("report", variable_type="file_upload")])
    uploads_before = len(apis.stack.calls("upload"))

    answer = apis.api.request(
        "POST",
        "/v1/runs",
        token=apis.alice,
        data={"request": json.dumps({"app_id": app.id})},
        files={"report": ("big.bin", b"x" * (UPLOAD_CAP + 1), "application/octet-stream")},
    )

    assert answer.status_code == 413
    assert answer.headers["Content-Type"] == PROBLEM
    assert "HATZ_UPLOAD_MAX_BYTES" in answer.json()["detail"]
    assert list(apis.tmp.iterdir()) == []
    assert len(apis.stack.calls("upload")) == uploads_before
    listed = apis.api.request("GET", f"/v1/runs?app_id={app.id}", token=apis.alice).json()
    assert listed["runs"] == []


def test_a_server_path_is_never_accepted(apis: Apis) -> None:
    app = apis.stack.app()

    answer = apis.post_run(apis.alice, {"app_id": app.id, "files": {"report": "/etc/passwd"}})

    assert answer.status_code == 422
    assert "never accepted over HTTP" in " ".join(answer.json()["errors"])


def test_one_input_as_both_a_part_and_a_url_is_refused_before_any_upload(apis: Apis) -> None:
    app = apis.stack.app(user_inputs=[FakeInput("report", variable_type="file_upload")])
    uploads_before = len(apis.stack.calls("upload"))
    request = {"app_id": app.id, "files": {"report": "https://files.example.com/r.csv"}}

    answer = apis.api.request(
        "POST",
        "/v1/runs",
        token=apis.alice,
        data={"request": json.dumps(request)},
        files={"report": ("r.csv", b"a,b\n", "text/csv")},
    )

    assert answer.status_code == 422
    assert answer.json()["errors"] == ["files: 'report' is given both as a part and as a URL"]
    assert len(apis.stack.calls("upload")) == uploads_before
    assert list(apis.tmp.iterdir()) == []


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{not json", "application/json", 422),
        (b'{"app_id": ""}', "application/json", 422),
        (b'{"app_id": "a", "inputs": []}', "application/json", 422),
        (b"app_id=a", "application/x-www-form-urlencoded", 415),
        (b"--x\r\n", "multipart/form-data; boundary=x", 422),
        (b"", "multipart/form-data", 422),
    ],
)
def test_bad_requests_are_4xx_problems(
    apis: Apis, body: bytes, content_type: str, status: int
) -> None:
    answer = apis.api.request(
        "POST", "/v1/runs", token=apis.alice, data=body, headers={"Content-Type": content_type}
    )

    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == PROBLEM


def test_an_invalid_run_lists_every_problem(apis: Apis) -> None:
    answer = apis.post_run(
        apis.alice,
        {"app_id": "x", "callback_url": "ftp://example.invalid/", "events": ["nope"]},
    )

    assert answer.status_code == 422
    errors = answer.json()["errors"]
    assert any("callback" in e for e in errors), errors
    assert any("unknown callback events" in e for e in errors), errors


def test_two_clients_cannot_see_each_others_runs(apis: Apis) -> None:
    app = apis.stack.app(duration=30)
    mine = apis.post_run(apis.alice, {"app_id": app.id}).json()["run_id"]
    theirs = apis.post_run(apis.bob, {"app_id": app.id}).json()["run_id"]

    def ids(token: str) -> set[str]:
        answer = apis.api.request("GET", f"/v1/runs?app_id={app.id}", token=token)
        return {r["run_id"] for r in answer.json()["runs"]}

    assert ids(apis.alice) == {mine}
    assert ids(apis.bob) == {theirs}
    assert ids(apis.admin) == {mine, theirs}
    assert apis.api.request("GET", f"/v1/runs/{theirs}", token=apis.alice).status_code == 404
    unknown = apis.api.request("GET", "/v1/runs/0123456789abcdef", token=apis.alice)
    other = apis.api.request("GET", f"/v1/runs/{theirs}", token=apis.alice)
    assert other.json()["detail"].replace(theirs, "ID") == unknown.json()["detail"].replace(
        "0123456789abcdef", "ID"
    )
    assert (
        apis.api.request("POST", f"/v1/runs/{theirs}/cancel", token=apis.alice).status_code == 404
    )
    assert apis.api.request("GET", f"/v1/runs/{theirs}", token=apis.admin).status_code == 200
    for run_id, token in ((mine, apis.alice), (theirs, apis.admin)):
        assert apis.api.request("POST", f"/v1/runs/{run_id}/cancel", token=token).ok


def test_the_201_answer_is_the_run_as_recorded(apis: Apis) -> None:
    app = apis.stack.app(duration=30)
    body = {
        "app_id": app.id,
        "inputs": {"topic": "ml"},
        "metadata": {"order": 7},
        "events": ["workflow_run.completed"],
        "timeout": 120,
    }

    made = apis.post_run(apis.alice, body, headers={"Idempotency-Key": "as-recorded"})
    read = apis.api.request("GET", f"/v1/runs/{made.json()['run_id']}", token=apis.alice)

    assert made.status_code == 201, made.text
    assert made.headers["Location"] == f"/v1/runs/{made.json()['run_id']}"
    assert made.json()["state"] == "QUEUED"
    unchanging = (
        "run_id", "app_id", "client", "inputs", "metadata", "events", "timeout",
        "idempotency_key", "is_draft_app", "created_at", "queued_at",
    )  # fmt: skip
    assert {f: made.json()[f] for f in unchanging} == {f: read.json()[f] for f in unchanging}
    assert made.json()["idempotency_key"] == "as-recorded"
    assert made.json()["client"] == "alice"


def test_the_same_idempotency_key_and_body_give_the_same_run(apis: Apis) -> None:
    app = apis.stack.app()
    body = {"app_id": app.id, "inputs": {"topic": "ml"}}
    key = {"Idempotency-Key": "order-42"}

    first = apis.post_run(apis.alice, body, headers=key)
    again = apis.post_run(apis.alice, body, headers=key)
    other_body = apis.post_run(apis.alice, {**body, "inputs": {"topic": "go"}}, headers=key)
    other_client = apis.post_run(apis.bob, body, headers=key)

    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["run_id"] == first.json()["run_id"]
    assert again.json()["idempotency_key"] == "order-42"
    assert other_body.status_code == 409
    assert other_body.headers["Content-Type"] == PROBLEM
    assert other_client.status_code == 201  # keys are per client
    assert other_client.json()["run_id"] != first.json()["run_id"]


def test_prefer_wait_answers_when_the_run_ends(apis: Apis) -> None:
    app = apis.stack.app(duration=0.3, pending_seconds=0.1)

    answer = apis.post_run(apis.alice, {"app_id": app.id}, headers={"Prefer": "wait=20"})

    assert answer.status_code == 201
    assert answer.json()["state"] == "COMPLETED"
    assert answer.headers["Preference-Applied"] == "wait=20"


def test_prefer_wait_answers_after_n_seconds_if_the_run_goes_on(apis: Apis) -> None:
    app = apis.stack.app(duration=30)
    started = time.monotonic()

    answer = apis.post_run(apis.alice, {"app_id": app.id}, headers={"Prefer": "wait=1"})

    took = time.monotonic() - started
    assert answer.status_code == 201
    assert answer.json()["state"] not in {"COMPLETED", "FAILED", "TIMED_OUT"}
    assert answer.headers["Preference-Applied"] == "wait=1"
    assert took >= 1.0
    no_wait = apis.post_run(apis.alice, {"app_id": app.id})
    assert "Preference-Applied" not in no_wait.headers
    for run in (answer.json(), no_wait.json()):
        apis.api.request("POST", f"/v1/runs/{run['run_id']}/cancel", token=apis.alice)


def test_cancel_stops_a_run_once(apis: Apis) -> None:
    app = apis.stack.app(duration=30)
    run_id = apis.post_run(apis.alice, {"app_id": app.id}).json()["run_id"]

    first = apis.api.request("POST", f"/v1/runs/{run_id}/cancel", token=apis.alice)
    second = apis.api.request("POST", f"/v1/runs/{run_id}/cancel", token=apis.alice)

    assert first.status_code == 200
    assert first.json()["state"] == "CANCELED"
    assert second.status_code == 409
    assert "already ended" in second.json()["detail"]


def test_runs_list_newest_first_in_pages(apis: Apis) -> None:
    app = apis.stack.app(duration=30)
    made = [apis.post_run(apis.bob, {"app_id": app.id}).json()["run_id"] for _ in range(5)]
    path = f"/v1/runs?app_id={app.id}&limit=2"

    seen: list[str] = []
    cursor = ""
    for _ in range(5):
        page = apis.api.request("GET", path + cursor, token=apis.bob).json()
        seen += [r["run_id"] for r in page["runs"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"

    assert seen == made[::-1]
    queued = apis.api.request("GET", f"/v1/runs?app_id={app.id}&state=CANCELED", token=apis.bob)
    assert queued.json()["runs"] == []
    for run_id in made:
        apis.api.request("POST", f"/v1/runs/{run_id}/cancel", token=apis.bob)
    canceled = apis.api.request("GET", f"/v1/runs?app_id={app.id}&state=CANCELED", token=apis.bob)
    assert len(canceled.json()["runs"]) == 5


@pytest.mark.parametrize("query", ["cursor=nope", "cursor=WzEsMl0", "limit=0", "state=DONE"])
def test_a_bad_list_query_is_422(apis: Apis, query: str) -> None:
    answer = apis.api.request("GET", f"/v1/runs?{query}", token=apis.alice)

    assert answer.status_code == 422
    assert answer.headers["Content-Type"] == PROBLEM


def test_a_revoked_token_gets_401(apis: Apis) -> None:
    token = apis.api.token("leaver")
    app = apis.stack.app()
    assert apis.post_run(token, {"app_id": app.id}).status_code == 201
    store = apis.api.clients()
    store.revoke("leaver")
    store.redis.close()

    answer = apis.post_run(token, {"app_id": app.id})

    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_multipart_retry_with_the_same_key_uploads_nothing_again(apis: Apis) -> None:
    app = apis.stack.app(
        user_inputs=[FakeInput("report", variable_type="file_upload", required=True)]
    )

    def send(content: bytes) -> Any:
        return apis.api.request(
            "POST",
            "/v1/runs",
            token=apis.alice,
            data={"request": json.dumps({"app_id": app.id})},
            files={"report": ("r.csv", content, "text/csv")},
            headers={"Idempotency-Key": f"upload-{app.id}"},
        )

    first = send(b"a,b\n1,2\n")
    uploads = len(apis.stack.calls("upload"))
    again = send(b"a,b\n1,2\n")
    changed = send(b"a,b\n3,4\n")

    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["run_id"] == first.json()["run_id"]
    assert changed.status_code == 409
    assert len(apis.stack.calls("upload")) == uploads


def test_uploads_by_the_api_count_in_the_shared_metrics(apis: Apis) -> None:
    app = apis.stack.app(user_inputs=[FakeInput("report", variable_type="file_upload")])
    metrics = apis.stack.context.keys.metrics

    def uploads_counted() -> int:
        fields: dict[str, str] = apis.stack.context.redis.hgetall(metrics)  # type: ignore[assignment]
        return sum(int(v) for k, v in fields.items() if "upload" in k and k.startswith("api"))

    before = uploads_counted()
    answer = apis.api.request(
        "POST",
        "/v1/runs",
        token=apis.alice,
        data={"request": json.dumps({"app_id": app.id})},
        files={"report": ("r.csv", b"x", "text/csv")},
    )

    assert answer.status_code == 201
    assert uploads_counted() == before + 1


@pytest.mark.parametrize(
    ("request_fields", "problem"),
    [
        ({"callback_url": "ftp://example.invalid/"}, "callback_url"),
        ({"inputs": {"report": "a value"}}, "given both as a value and as a file"),
        ({"events": ["workflow_run.exploded"]}, "unknown callback events"),
    ],
)
def test_a_bad_multipart_run_is_refused_before_any_upload(
    apis: Apis, request_fields: dict[str, Any], problem: str
) -> None:
    app = apis.stack.app(user_inputs=[FakeInput("report", variable_type="file_upload")])
    uploads = len(apis.stack.calls("upload"))

    answer = apis.api.request(
        "POST",
        "/v1/runs",
        token=apis.alice,
        data={"request": json.dumps({"app_id": app.id, **request_fields})},
        files={"report": ("r.csv", b"a,b\n", "text/csv")},
    )

    assert answer.status_code == 422
    assert problem in " ".join(answer.json()["errors"])
    assert len(apis.stack.calls("upload")) == uploads
