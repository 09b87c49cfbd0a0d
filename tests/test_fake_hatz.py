"""Tests of the fake Hatz server (worker.fake_hatz), through real HTTP with ``requests``.

Job progress and URL expiry run on a ManualClock, so no test depends on how
fast the machine is; where real time matters (latency, hangs, the real-clock
run) tests wait on a condition with a deadline, never on a bare sleep.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from worker.fake_hatz import (
    ALWAYS_FAILS_ID,
    CODING_APP_ID,
    OVERAGE_DETAIL,
    REPORT_SUMMARIZER_ID,
    TOPIC_BRIEF_ID,
    FakeApp,
    FakeHatz,
    FakeInput,
    FakeStep,
    FaultConfig,
    ManualClock,
    seed_default_apps,
)
from worker.fake_hatz.body import PayloadTooLarge
from worker.fake_hatz.multipart import MultipartError, parse_multipart
from worker.local.stack import wait_until

API_KEY = "test-key"
T0 = 1_736_935_200.0  # 2025-01-15T10:00:00Z, the instant of the documentation's example
PENDING = 0.2
DURATION = 0.6  # Topic Brief: three steps of 0.2 s
REPO = Path(__file__).resolve().parents[1]
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=T0)


@pytest.fixture
def fake(clock: ManualClock) -> Iterator[FakeHatz]:
    with FakeHatz(api_key=API_KEY, seed=0, clock=clock) as server:
        seed_default_apps(server, duration=DURATION, pending_seconds=PENDING)
        yield server


@pytest.fixture
def api(fake: FakeHatz) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["X-API-Key"] = API_KEY
        yield session


def submit(api: requests.Session, fake: FakeHatz, app_id: str, inputs: dict[str, Any]) -> str:
    response = api.post(f"{fake.url}/workflows/run", json={"app_id": app_id, "inputs": inputs})
    assert response.status_code == 200, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def poll(api: requests.Session, fake: FakeHatz, job_id: str) -> dict[str, Any]:
    response = api.get(f"{fake.url}/workflows/{job_id}")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def upload(api: requests.Session, fake: FakeHatz, content: bytes, name: str = "r.csv") -> str:
    response = api.post(f"{fake.url}/files/upload", files={"file": (name, content)})
    assert response.status_code == 200, response.text
    file_uuid: str = response.json()["file_uuid"]
    return file_uuid


def multipart_body(boundary: str, content: bytes, filename: str = "a.txt") -> bytes:
    return (
        b"preamble to ignore\r\n"
        + f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="scope_type"\r\n\r\nworkflow\r\n'
        + f"--{boundary}\r\n".encode()
        + f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'.encode()
        + b"Content-Type: text/plain\r\n\r\n"
        + content
        + f"\r\n--{boundary}--\r\nepilogue".encode()
    )


# --- auth and routing -----------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}])
def test_missing_or_wrong_api_key_is_401(fake: FakeHatz, headers: dict[str, str]) -> None:
    response = requests.get(f"{fake.url}/app/list", headers=headers, timeout=5)

    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid or missing API key"}


def test_unknown_route_is_404_not_found(api: requests.Session, fake: FakeHatz) -> None:
    response = api.get(f"{fake.url}/nope")

    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


def test_wrong_method_is_405_with_allow_header(api: requests.Session, fake: FakeHatz) -> None:
    response = api.delete(f"{fake.url}/workflows/run")

    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}
    assert response.headers["Allow"] == "POST, GET"


def test_get_on_run_path_is_a_job_lookup_like_fastapi(
    api: requests.Session, fake: FakeHatz
) -> None:
    response = api.get(f"{fake.url}/workflows/run")

    assert response.status_code == 404
    assert response.json() == {"detail": "Job not found"}


# --- uploads -----------------------------------------------------------------------------


def test_upload_returns_file_uuid_and_echoes_scope(api: requests.Session, fake: FakeHatz) -> None:
    response = api.post(
        f"{fake.url}/files/upload",
        files={"file": ("report.csv", b"a,b\n1,2\n", "text/csv")},
        data={"scope_type": "workflow", "scope_id": REPORT_SUMMARIZER_ID},
    )

    assert response.status_code == 200
    body = response.json()
    assert re.fullmatch(r"[0-9a-f-]{36}", body.pop("file_uuid"))
    assert body == {
        "filename": "report.csv",
        "size": 8,
        "scope_type": "workflow",
        "scope_id": REPORT_SUMMARIZER_ID,
    }


def test_upload_without_file_part_is_422(api: requests.Session, fake: FakeHatz) -> None:
    response = api.post(f"{fake.url}/files/upload", files={"other": ("x.txt", b"x")})

    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {"type": "missing", "loc": ["body", "file"], "msg": "Field required", "input": None}
        ]
    }


def test_upload_with_broken_multipart_is_400(api: requests.Session, fake: FakeHatz) -> None:
    response = api.post(
        f"{fake.url}/files/upload",
        data=b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\ntruncated',
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )

    assert response.status_code == 400
    assert response.json() == {"detail": "There was an error parsing the body"}


def test_upload_streams_a_large_file_and_keeps_its_digest(
    api: requests.Session, fake: FakeHatz
) -> None:
    content = bytes(range(256)) * (5 * 4096)  # 5 MiB

    file_uuid = upload(api, fake, content, "big.bin")

    info = fake.upload_info(file_uuid)
    assert info is not None
    assert info["size"] == len(content)
    assert info["sha256"] == hashlib.sha256(content).hexdigest()


def test_upload_accepts_a_chunked_body(api: requests.Session, fake: FakeHatz) -> None:
    body = multipart_body("XyZ", b"hello chunks" * 1000)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 999):
            yield body[start : start + 999]

    response = api.post(
        f"{fake.url}/files/upload",
        data=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
    )

    assert response.status_code == 200
    assert response.json()["size"] == 12_000
    assert response.json()["scope_type"] == "workflow"


def test_upload_over_the_cap_is_413_and_the_session_continues(clock: ManualClock) -> None:
    with (
        FakeHatz(api_key=API_KEY, clock=clock, max_upload_bytes=1024) as small,
        requests.Session() as api,
    ):
        api.headers["X-API-Key"] = API_KEY

        response = api.post(f"{small.url}/files/upload", files={"file": ("x", b"x" * 10_000)})

        assert response.status_code == 413
        assert api.get(f"{small.url}/app/list").status_code == 200


def test_multipart_parser_handles_delimiters_split_across_reads() -> None:
    content = b"line\r\n--Xy\r\n-XyZ\r\n" * 50  # near-misses of the delimiter
    stream = io.BytesIO(multipart_body("XyZ", content))

    parts = parse_multipart(lambda n: stream.read(1), "XyZ", max_file_bytes=10_000)

    assert [(p.name, p.filename) for p in parts] == [("scope_type", None), ("file", "a.txt")]
    assert parts[0].text() == "workflow"
    assert parts[1].size == len(content)
    assert parts[1].sha256 == hashlib.sha256(content).hexdigest()


def test_multipart_parser_rejects_truncated_and_oversized_bodies() -> None:
    body = multipart_body("XyZ", b"x" * 100)

    with pytest.raises(MultipartError):
        parse_multipart(io.BytesIO(body[:-30]).read, "XyZ", max_file_bytes=1000)
    with pytest.raises(PayloadTooLarge):
        parse_multipart(io.BytesIO(body).read, "XyZ", max_file_bytes=99)


# --- running workflows -----------------------------------------------------------------------


def test_run_answers_workflow_job_invoked(api: requests.Session, fake: FakeHatz) -> None:
    response = api.post(
        f"{fake.url}/workflows/run",
        json={"app_id": TOPIC_BRIEF_ID, "inputs": {"topic": "tides"}, "is_draft_app": False},
    )

    assert response.status_code == 200
    assert response.json()["status"] == "Workflow Job Invoked"
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
        response.json()["job_id"],
    )


def test_run_unknown_app_is_404(api: requests.Session, fake: FakeHatz) -> None:
    response = api.post(f"{fake.url}/workflows/run", json={"app_id": "nope", "inputs": {}})

    assert response.status_code == 404
    assert response.json() == {"detail": "App not found"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b"not json",
            [
                {
                    "type": "json_invalid",
                    "loc": ["body", 0],
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": "Expecting value"},
                }
            ],
        ),
        (
            b'{"inputs": {}}',
            [
                {
                    "type": "missing",
                    "loc": ["body", "app_id"],
                    "msg": "Field required",
                    "input": {"inputs": {}},
                }
            ],
        ),
        (
            b'{"app_id": "x", "inputs": ["a"]}',
            [
                {
                    "type": "dict_type",
                    "loc": ["body", "inputs"],
                    "msg": "Input should be a valid dictionary",
                    "input": ["a"],
                }
            ],
        ),
    ],
)
def test_run_with_invalid_body_is_fastapi_422(
    api: requests.Session, fake: FakeHatz, body: bytes, expected: list[dict[str, Any]]
) -> None:
    response = api.post(
        f"{fake.url}/workflows/run", data=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422
    assert response.json() == {"detail": expected}


def test_run_without_required_input_is_400(api: requests.Session, fake: FakeHatz) -> None:
    response = api.post(
        f"{fake.url}/workflows/run", json={"app_id": TOPIC_BRIEF_ID, "inputs": {"audience": "kids"}}
    )

    assert response.status_code == 400
    assert "topic" in response.json()["detail"]
    assert fake.stats()["jobs_created"] == 0


def test_run_file_input_must_be_an_uploaded_file(api: requests.Session, fake: FakeHatz) -> None:
    bogus = api.post(
        f"{fake.url}/workflows/run",
        json={
            "app_id": REPORT_SUMMARIZER_ID,
            "inputs": {"report_file": "8fb5bc1d-5a8d-4015-86a6-b0ca394e7793"},
        },
    )
    file_uuid = upload(api, fake, b"quarterly numbers")

    job_id = submit(api, fake, REPORT_SUMMARIZER_ID, {"report_file": file_uuid})

    assert bogus.status_code == 400
    assert "report_file" in bogus.json()["detail"]
    assert fake.job_status(job_id) is not None


def test_run_of_an_app_builder_app_is_400(api: requests.Session, fake: FakeHatz) -> None:
    response = api.post(f"{fake.url}/workflows/run", json={"app_id": CODING_APP_ID, "inputs": {}})

    assert response.status_code == 400


# --- job status --------------------------------------------------------------------------------


def test_job_goes_pending_running_complete_as_time_passes(
    api: requests.Session, fake: FakeHatz, clock: ManualClock
) -> None:
    job_id = submit(api, fake, TOPIC_BRIEF_ID, {"topic": "tides", "audience": "kids"})

    pending = poll(api, fake, job_id)
    clock.advance(PENDING + 0.3)  # inside step 2 of 3
    running = poll(api, fake, job_id)
    clock.advance(1.0)
    complete = poll(api, fake, job_id)

    assert (pending["status"], pending["step_outputs"], pending["end_time"]) == (
        "pending",
        [],
        None,
    )
    assert running["status"] == "running"
    assert [s["status"] for s in running["step_outputs"]] == ["complete", "running"]
    in_progress = running["step_outputs"][1]
    assert (in_progress["end_time"], in_progress["duration"], in_progress["output_data"]) == (
        None,
        None,
        None,
    )
    assert complete["status"] == "complete"
    assert [s["output_data"] for s in complete["step_outputs"]] == [
        "Key facts about tides.",
        "Outline of tides for kids.",
        "Brief: tides, written for kids.",
    ]
    assert complete["end_time"] == int((T0 + PENDING + DURATION) * 1000)


def test_job_status_has_the_documented_shape(
    api: requests.Session, fake: FakeHatz, clock: ManualClock
) -> None:
    job_id = submit(api, fake, TOPIC_BRIEF_ID, {"topic": "tides"})
    clock.advance(5)

    job = poll(api, fake, job_id)

    assert set(job) == {
        "job_id", "app_id", "tenant_id", "user_id", "created_at", "updated_at", "start_time",
        "end_time", "number_of_steps", "status", "user_inputs", "app_data", "step_outputs",
    }  # fmt: skip
    assert (job["job_id"], job["app_id"], job["number_of_steps"]) == (job_id, TOPIC_BRIEF_ID, 3)
    assert (job["user_inputs"], job["app_data"]) == ({"topic": "tides"}, {})
    assert job["created_at"] == "2025-01-15T10:00:00Z"
    assert job["start_time"] == int(T0 * 1000)
    assert ISO_Z.match(job["updated_at"])
    for step in job["step_outputs"]:
        assert set(step) == {
            "step_id", "job_id", "step_type", "status", "output_type", "created_at", "updated_at",
            "start_time", "end_time", "duration", "output_data", "payload",
        }  # fmt: skip
        assert (step["job_id"], step["step_type"], step["output_type"]) == (
            job_id,
            "prompt",
            "dump",
        )
        assert step["duration"] == step["end_time"] - step["start_time"] == 200
        assert ISO_Z.match(step["created_at"])
        assert ISO_Z.match(step["updated_at"])
        assert step["payload"] == {}


def test_failing_app_ends_failed_at_its_failing_step(
    api: requests.Session, fake: FakeHatz, clock: ManualClock
) -> None:
    job_id = submit(api, fake, ALWAYS_FAILS_ID, {})
    clock.advance(5)

    job = poll(api, fake, job_id)

    assert job["status"] == "failed"
    assert [s["status"] for s in job["step_outputs"]] == ["complete", "failed"]
    assert job["step_outputs"][1]["output_data"].startswith("Error:")
    assert job["end_time"] == job["step_outputs"][1]["end_time"]


def test_unknown_job_is_404(api: requests.Session, fake: FakeHatz) -> None:
    response = api.get(f"{fake.url}/workflows/a1b2c3d4-e5f6-7890-abcd-ef1234567890")

    assert response.status_code == 404
    assert response.json() == {"detail": "Job not found"}


def test_job_completes_on_the_real_clock() -> None:
    with FakeHatz(api_key=API_KEY) as fake, requests.Session() as api:
        api.headers["X-API-Key"] = API_KEY
        fake.add_app(
            FakeApp(id="quick", steps=[FakeStep(), FakeStep()], duration=0.2, pending_seconds=0.05)
        )
        job_id = submit(api, fake, "quick", {})
        seen: list[str] = []

        def done() -> bool:
            seen.append(poll(api, fake, job_id)["status"])
            return seen[-1] == "complete"

        wait_until(done, timeout=5.0, message="job completion")

    order = ["pending", "running", "complete"]
    assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen)


# --- presigned URLs and downloads ------------------------------------------------------------


def finished_report(api: requests.Session, fake: FakeHatz, clock: ManualClock) -> dict[str, Any]:
    file_uuid = upload(api, fake, b"a,b\n", "q3.csv")
    job_id = submit(
        api, fake, REPORT_SUMMARIZER_ID, {"report_file": file_uuid, "summary_style": "brief"}
    )
    clock.advance(5)
    return poll(api, fake, job_id)


def presign(api: requests.Session, fake: FakeHatz, **body: Any) -> requests.Response:
    return api.post(f"{fake.url}/workflows/presigned-url", json=body)


def test_presigned_url_downloads_the_step_document(
    api: requests.Session, fake: FakeHatz, clock: ManualClock
) -> None:
    job = finished_report(api, fake, clock)
    document_step = job["step_outputs"][1]

    response = presign(
        api, fake, job_id=job["job_id"], step_id=document_step["step_id"], expires_in=60
    )
    download = requests.get(response.json()["url"], timeout=5)  # no API key: the URL is the key

    assert response.status_code == 200
    assert response.json()["expires_in"] == 60
    assert re.match(
        rf"^{re.escape(fake.root_url)}/_fake/files/[^?]+\?X-Amz-Expires=60&X-Amz-Signature=[0-9a-f]{{64}}$",
        response.json()["url"],
    )
    assert download.status_code == 200
    assert download.headers["Content-Type"] == "application/pdf"
    assert download.content.startswith(b"%PDF-1.4")
    assert download.content.rstrip().endswith(b"%%EOF")
    assert job["job_id"].encode() in download.content


def test_presign_of_a_dump_step_is_400(
    api: requests.Session, fake: FakeHatz, clock: ManualClock
) -> None:
    job = finished_report(api, fake, clock)

    response = presign(api, fake, job_id=job["job_id"], step_id=job["step_outputs"][0]["step_id"])

    assert response.status_code == 400
    assert response.json() == {"detail": "Step output is not a document"}


def test_presign_before_the_document_exists_is_400(api: requests.Session, fake: FakeHatz) -> None:
    file_uuid = upload(api, fake, b"x")
    job_id = submit(api, fake, REPORT_SUMMARIZER_ID, {"report_file": file_uuid})
    document_step_id = fake.apps()[0].steps[1].id

    response = presign(api, fake, job_id=job_id, step_id=document_step_id)

    assert response.status_code == 400


def test_presign_of_unknown_job_or_step_is_404(
    api: requests.Session, fake: FakeHatz, clock: ManualClock
) -> None:
    job = finished_report(api, fake, clock)

    no_job = presign(api, fake, job_id="nope", step_id="x")
    no_step = presign(api, fake, job_id=job["job_id"], step_id="nope")

    assert (no_job.status_code, no_job.json()) == (404, {"detail": "Job not found"})
    assert (no_step.status_code, no_step.json()) == (404, {"detail": "Step not found"})


@pytest.mark.parametrize(
    ("expires_in", "error_type"), [(0, "greater_than_equal"), ("soon", "int_parsing")]
)
def test_presign_validates_expires_in(
    api: requests.Session, fake: FakeHatz, expires_in: object, error_type: str
) -> None:
    response = presign(api, fake, job_id="j", step_id="s", expires_in=expires_in)

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == error_type
    assert response.json()["detail"][0]["loc"] == ["body", "expires_in"]


def test_presigned_url_expires_with_an_s3_style_403(
    api: requests.Session, fake: FakeHatz, clock: ManualClock
) -> None:
    job = finished_report(api, fake, clock)
    url = presign(
        api, fake, job_id=job["job_id"], step_id=job["step_outputs"][1]["step_id"], expires_in=10
    ).json()["url"]

    clock.advance(11)
    response = requests.get(url, timeout=5)

    assert response.status_code == 403
    assert response.headers["Content-Type"] == "application/xml"
    assert "<Error><Code>AccessDenied</Code><Message>Request has expired</Message>" in response.text


def test_presigned_url_with_a_bad_signature_is_403(
    api: requests.Session, fake: FakeHatz, clock: ManualClock
) -> None:
    job = finished_report(api, fake, clock)
    url = presign(
        api, fake, job_id=job["job_id"], step_id=job["step_outputs"][1]["step_id"]
    ).json()["url"]

    response = requests.get(url.replace("X-Amz-Expires=3600", "X-Amz-Expires=999999"), timeout=5)

    assert response.status_code == 403
    assert "<Code>SignatureDoesNotMatch</Code>" in response.text


# --- App Builder ------------------------------------------------------------------------------


def test_app_list_returns_workflows_and_apps_in_documented_shape(
    api: requests.Session, fake: FakeHatz
) -> None:
    data = api.get(f"{fake.url}/app/list").json()["data"]

    by_id = {item["id"]: item for item in data}
    assert list(by_id) == [REPORT_SUMMARIZER_ID, TOPIC_BRIEF_ID, ALWAYS_FAILS_ID, CODING_APP_ID]
    workflow, app = by_id[REPORT_SUMMARIZER_ID], by_id[CODING_APP_ID]
    assert set(workflow) == {
        "id",
        "name",
        "files",
        "constants",
        "user_inputs",
        "steps",
        "dependencies",
    }
    assert set(workflow["steps"][0]) == {
        "id",
        "config",
        "position",
        "step_type",
        "display_name",
        "prompt_sections",
        "output_type",
    }
    assert [s["output_type"] for s in workflow["steps"]] == ["dump", "document"]
    assert workflow["user_inputs"][0] == {
        "position": 0,
        "required": True,
        "object_id": workflow["user_inputs"][0]["object_id"],
        "description": "",
        "display_name": "report_file",
        "variable_name": "report_file",
        "variable_type": "file_upload",
    }
    assert set(app) == {
        "id",
        "name",
        "description",
        "default_model",
        "files",
        "constants",
        "user_inputs",
        "prompt_sections",
    }
    assert app["default_model"] == "gemini-1.5-pro"


def test_app_list_filters_by_name_case_insensitively(api: requests.Session, fake: FakeHatz) -> None:
    data = api.get(f"{fake.url}/app/list", params={"name": "BRIEF"}).json()["data"]

    assert [item["id"] for item in data] == [TOPIC_BRIEF_ID]


def test_app_list_paginates_after_the_filter(api: requests.Session, fake: FakeHatz) -> None:
    fake.add_app(FakeApp(id="extra", name="Another Report"))

    page = api.get(f"{fake.url}/app/list", params={"name": "report", "limit": "1", "offset": "1"})

    assert [item["id"] for item in page.json()["data"]] == ["extra"]


def bound_error(field: str, raw: str, op: str, bound: int) -> dict[str, Any]:
    words = {"ge": "greater_than_equal", "le": "less_than_equal"}
    relation = {"ge": "greater than or equal to", "le": "less than or equal to"}[op]
    return {
        "type": words[op],
        "loc": ["query", field],
        "msg": f"Input should be {relation} {bound}",
        "input": raw,
        "ctx": {op: bound},
    }


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"limit": "0"}, bound_error("limit", "0", "ge", 1)),
        ({"limit": "1001"}, bound_error("limit", "1001", "le", 1000)),
        ({"offset": "-1"}, bound_error("offset", "-1", "ge", 0)),
        (
            {"limit": "ten"},
            {
                "type": "int_parsing",
                "loc": ["query", "limit"],
                "msg": "Input should be a valid integer, unable to parse string as an integer",
                "input": "ten",
            },
        ),
    ],
)
def test_app_list_rejects_bad_pagination_with_422(
    api: requests.Session, fake: FakeHatz, params: dict[str, str], error: dict[str, Any]
) -> None:
    response = api.get(f"{fake.url}/app/list", params=params)

    assert response.status_code == 422
    assert response.json() == {"detail": [error]}


def test_app_get_returns_one_app_or_404(api: requests.Session, fake: FakeHatz) -> None:
    found = api.get(f"{fake.url}/app/{TOPIC_BRIEF_ID}")
    missing = api.get(f"{fake.url}/app/nope")

    assert found.json()["name"] == "Topic Brief"
    assert (missing.status_code, missing.json()) == (404, {"detail": "App not found"})


def test_app_query_answers_from_the_inputs(api: requests.Session, fake: FakeHatz) -> None:
    response = api.post(
        f"{fake.url}/app/{CODING_APP_ID}/query",
        json={"inputs": {"language": "rust"}, "stream": False},
    )

    assert response.status_code == 200
    assert response.json() == {
        "app_id": CODING_APP_ID,
        "model": "gemini-1.5-pro",
        "response": "Response to: write me hello world in the programming language of rust",
    }


@pytest.mark.parametrize(
    ("app_id", "body", "status"),
    [
        (CODING_APP_ID, {"inputs": {}, "stream": True}, 400),
        ("nope", {"inputs": {}}, 404),
        (TOPIC_BRIEF_ID, {"inputs": {"topic": "x"}}, 400),
        (CODING_APP_ID, {"stream": False}, 422),
    ],
)
def test_app_query_errors(
    api: requests.Session, fake: FakeHatz, app_id: str, body: dict[str, Any], status: int
) -> None:
    response = api.post(f"{fake.url}/app/{app_id}/query", json=body)

    assert response.status_code == status


# --- faults ----------------------------------------------------------------------------------


def test_overage_answers_the_documented_429_and_creates_no_job(
    api: requests.Session, fake: FakeHatz
) -> None:
    fake.set_overage(True)

    response = api.post(
        f"{fake.url}/workflows/run", json={"app_id": TOPIC_BRIEF_ID, "inputs": {"topic": "x"}}
    )

    assert response.status_code == 429
    assert response.json() == {"detail": OVERAGE_DETAIL}
    assert response.json()["detail"] == (
        "Workflows have been rate limited for your organization due to a credit overage."
    )
    assert fake.stats()["jobs_created"] == 0


def test_overage_spares_other_endpoints_by_default(api: requests.Session, fake: FakeHatz) -> None:
    job_id = submit(api, fake, TOPIC_BRIEF_ID, {"topic": "x"})
    fake.set_overage(True)

    assert api.get(f"{fake.url}/workflows/{job_id}").status_code == 200
    fake.set_overage(False)
    assert submit(api, fake, TOPIC_BRIEF_ID, {"topic": "x"})


def test_overage_rate_one_hits_every_submit(api: requests.Session, fake: FakeHatz) -> None:
    fake.configure(FaultConfig(overage_rate=1.0))

    response = api.post(
        f"{fake.url}/workflows/run", json={"app_id": TOPIC_BRIEF_ID, "inputs": {"topic": "x"}}
    )

    assert (response.status_code, response.json()["detail"]) == (429, OVERAGE_DETAIL)


def test_rate_limit_is_a_plain_429_with_retry_after(api: requests.Session, fake: FakeHatz) -> None:
    fake.configure(FaultConfig(rate_limit_rate=1.0))

    response = api.get(f"{fake.url}/app/list")

    assert response.status_code == 429
    assert response.json() == {"detail": "Rate limit exceeded"}
    assert response.headers["Retry-After"] == "1"


def test_errors_on_run_create_no_job_and_vary_in_shape(
    api: requests.Session, fake: FakeHatz
) -> None:
    fake.configure(FaultConfig(error_rate=1.0, endpoints={"run"}))
    body = {"app_id": TOPIC_BRIEF_ID, "inputs": {"topic": "x"}}

    responses = [api.post(f"{fake.url}/workflows/run", json=body) for _ in range(12)]

    assert {r.status_code for r in responses} <= {500, 502, 503}

    def is_json(r: requests.Response) -> bool:
        try:
            r.json()
        except ValueError:
            return False
        return True

    assert any(not is_json(r) for r in responses)
    assert any("text/html" in r.headers["Content-Type"] for r in responses)
    assert fake.stats()["jobs_created"] == 0
    assert fake.stats()["faults"] == {"error": 12}
    assert api.get(f"{fake.url}/app/list").status_code == 200  # not in `endpoints`


def test_timeout_holds_the_request_then_closes_without_response(fake: FakeHatz) -> None:
    fake.configure(FaultConfig(timeout_rate=1.0, hang_seconds=0.3))
    started = time.monotonic()

    with pytest.raises(requests.ConnectionError):
        requests.get(f"{fake.url}/app/list", headers={"X-API-Key": API_KEY}, timeout=10)

    assert time.monotonic() - started >= 0.3
    assert [(c["status"], c["fault"]) for c in fake.calls()] == [(0, "timeout")]


def test_stop_returns_promptly_while_a_request_hangs(fake: FakeHatz) -> None:
    fake.configure(FaultConfig(timeout_rate=1.0, hang_seconds=60))
    errors: list[BaseException] = []

    def client() -> None:
        try:
            requests.get(f"{fake.url}/app/list", headers={"X-API-Key": API_KEY}, timeout=60)
        except requests.RequestException as exc:
            errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    wait_until(lambda: bool(fake.calls()), timeout=5.0, message="the hung request")
    started = time.monotonic()

    fake.stop()

    assert time.monotonic() - started < 2
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert len(errors) == 1


def test_fault_after_create_creates_the_job_but_answers_502(
    api: requests.Session, fake: FakeHatz
) -> None:
    fake.configure(FaultConfig(fault_after_create_rate=1.0))

    response = api.post(
        f"{fake.url}/workflows/run", json={"app_id": TOPIC_BRIEF_ID, "inputs": {"topic": "x"}}
    )

    assert response.status_code == 502
    [call] = fake.calls("run")
    assert call["fault"] == "error_after_create"
    assert fake.job_status(call["job_id"]) is not None
    assert fake.stats()["jobs_created"] == 1


def test_lost_jobs_answer_404(api: requests.Session, fake: FakeHatz) -> None:
    job_id = submit(api, fake, TOPIC_BRIEF_ID, {"topic": "x"})
    fake.lose_job(job_id)
    fake.configure(FaultConfig(lose_jobs=True))
    vanished = submit(api, fake, TOPIC_BRIEF_ID, {"topic": "y"})

    for lost in (job_id, vanished):
        response = api.get(f"{fake.url}/workflows/{lost}")
        assert (response.status_code, response.json()) == (404, {"detail": "Job not found"})


def test_an_apps_own_faults_replace_the_global_ones(api: requests.Session, fake: FakeHatz) -> None:
    fake.add_app(FakeApp(id="flaky", faults=FaultConfig(error_rate=1.0)))

    flaky = api.post(f"{fake.url}/workflows/run", json={"app_id": "flaky", "inputs": {}})

    assert flaky.status_code >= 500
    assert submit(api, fake, TOPIC_BRIEF_ID, {"topic": "x"})


def test_latency_delays_each_response(api: requests.Session, fake: FakeHatz) -> None:
    fake.configure(FaultConfig(latency=0.2))
    started = time.monotonic()

    api.get(f"{fake.url}/app/list")

    assert time.monotonic() - started >= 0.2


def test_seeded_faults_repeat(clock: ManualClock) -> None:
    def statuses() -> list[int]:
        faults = FaultConfig(error_rate=0.3, rate_limit_rate=0.3)
        with FakeHatz(api_key=API_KEY, seed=7, clock=clock, faults=faults) as fake:
            headers = {"X-API-Key": API_KEY}
            return [
                requests.get(f"{fake.url}/app/list", headers=headers, timeout=5).status_code
                for _ in range(20)
            ]

    first = statuses()

    assert statuses() == first
    assert {200, 429} <= set(first)


# --- stats and call log ----------------------------------------------------------------------


def test_stats_count_requests_per_endpoint_and_status(
    api: requests.Session, fake: FakeHatz
) -> None:
    job_id = submit(api, fake, TOPIC_BRIEF_ID, {"topic": "x"})
    poll(api, fake, job_id)
    api.get(f"{fake.url}/workflows/nope")
    api.get(f"{fake.url}/app/list", params={"limit": 0})

    stats = fake.stats()

    assert stats["requests"] == 4
    assert stats["by_endpoint"] == {"run": 1, "status": 2, "app_list": 1}
    assert stats["by_endpoint_status"] == {
        "run": {"200": 1},
        "status": {"200": 1, "404": 1},
        "app_list": {"422": 1},
    }
    assert stats["jobs_created"] == 1


def test_stats_give_polls_and_the_computed_completion_time(
    api: requests.Session, fake: FakeHatz, clock: ManualClock
) -> None:
    job_id = submit(api, fake, TOPIC_BRIEF_ID, {"topic": "x"})
    poll(api, fake, job_id)
    unfinished = fake.stats()["jobs"][job_id]

    clock.advance(30)  # polled long after it finished
    poll(api, fake, job_id)
    finished = fake.stats()["jobs"][job_id]

    assert unfinished["first_complete_at"] is None
    assert finished["created_at"] == T0
    assert finished["first_complete_at"] == pytest.approx(T0 + PENDING + DURATION)
    assert (finished["status"], finished["status_polls"]) == ("complete", 2)


def test_call_log_records_run_inputs_and_is_a_bounded_ring(clock: ManualClock) -> None:
    with FakeHatz(api_key=API_KEY, clock=clock, call_log_size=2) as fake:
        seed_default_apps(fake)
        headers = {"X-API-Key": API_KEY}
        body = {"app_id": TOPIC_BRIEF_ID, "inputs": {"topic": "tides"}}
        for _ in range(3):
            requests.post(f"{fake.url}/workflows/run", json=body, headers=headers, timeout=5)

        calls = fake.calls()

        assert len(calls) == 2
        assert fake.stats()["by_endpoint"] == {"run": 3}
        assert calls[-1]["inputs"] == {"topic": "tides"}
        assert set(calls[-1]) == {
            "ts",
            "endpoint",
            "method",
            "path",
            "status",
            "job_id",
            "app_id",
            "fault",
            "inputs",
        }
        assert (calls[-1]["method"], calls[-1]["path"], calls[-1]["app_id"]) == (
            "POST",
            "/v1/workflows/run",
            TOPIC_BRIEF_ID,
        )


def test_reset_stats_zeroes_counters_but_keeps_jobs(api: requests.Session, fake: FakeHatz) -> None:
    job_id = submit(api, fake, TOPIC_BRIEF_ID, {"topic": "x"})

    fake.reset_stats()

    assert (fake.stats()["requests"], fake.stats()["jobs"], fake.calls()) == (0, {}, [])
    assert poll(api, fake, job_id)["job_id"] == job_id


# --- admin API -------------------------------------------------------------------------------


def admin(fake: FakeHatz, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(method, f"{fake.root_url}/_fake/{path}", json=body, timeout=5)


def test_admin_health_and_stats_need_no_key_and_are_not_counted(fake: FakeHatz) -> None:
    health = admin(fake, "GET", "health")
    stats = admin(fake, "GET", "stats")

    assert health.json() == {"status": "ok", "url": fake.url, "apps": 4, "jobs": 0}
    assert stats.json()["requests"] == 0


def test_admin_config_sets_global_and_per_app_faults(api: requests.Session, fake: FakeHatz) -> None:
    admin(fake, "POST", "config", {"rate_limit_rate": 1.0, "endpoints": ["app_get"]})
    admin(fake, "POST", "config", {"app_id": TOPIC_BRIEF_ID, "error_rate": 1.0})

    config = admin(fake, "GET", "config").json()

    assert config["faults"]["endpoints"] == ["app_get"]
    assert config["apps"][TOPIC_BRIEF_ID]["error_rate"] == 1.0
    assert api.get(f"{fake.url}/app/{CODING_APP_ID}").status_code == 429
    assert api.get(f"{fake.url}/app/{TOPIC_BRIEF_ID}").status_code >= 500
    assert api.get(f"{fake.url}/app/list").status_code == 200


def test_admin_rejects_unknown_fault_settings(fake: FakeHatz) -> None:
    response = admin(fake, "POST", "config", {"error_rate": 2})
    unknown = admin(fake, "POST", "config", {"eror_rate": 0.1})

    assert response.status_code == 400
    assert unknown.status_code == 400


def test_admin_adds_an_app_that_can_then_run(
    api: requests.Session, fake: FakeHatz, clock: ManualClock
) -> None:
    created = admin(
        fake,
        "POST",
        "apps",
        {
            "id": "remote",
            "name": "Remote",
            "user_inputs": [{"variable_name": "q", "required": True}],
            "steps": [{"output_type": "dump"}, {"output_type": "document", "filename": "out.txt"}],
            "duration": 0.1,
            "pending_seconds": 0,
        },
    )
    job_id = submit(api, fake, "remote", {"q": "why"})
    clock.advance(1)
    job = poll(api, fake, job_id)
    url = presign(api, fake, job_id=job_id, step_id=job["step_outputs"][1]["step_id"]).json()["url"]
    document = requests.get(url, timeout=5)

    assert created.status_code == 200
    assert created.json()["id"] == "remote"
    assert job["status"] == "complete"
    assert document.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "q: why" in document.text


def test_admin_toggles_overage_and_loses_jobs(api: requests.Session, fake: FakeHatz) -> None:
    job_id = submit(api, fake, TOPIC_BRIEF_ID, {"topic": "x"})

    admin(fake, "POST", "overage", {"on": True})
    overage = api.post(
        f"{fake.url}/workflows/run", json={"app_id": TOPIC_BRIEF_ID, "inputs": {"topic": "x"}}
    )
    admin(fake, "POST", "overage", {"on": False})
    lose = admin(fake, "POST", f"jobs/{job_id}/lose")

    assert overage.status_code == 429
    assert lose.json() == {"job_id": job_id, "lost": True}
    assert api.get(f"{fake.url}/workflows/{job_id}").status_code == 404
    assert admin(fake, "GET", f"jobs/{job_id}").json()["lost"] is True


def test_admin_calls_filter_and_reset(api: requests.Session, fake: FakeHatz) -> None:
    submit(api, fake, TOPIC_BRIEF_ID, {"topic": "x"})
    api.get(f"{fake.url}/app/list")

    runs = admin(fake, "GET", "calls?endpoint=run").json()["calls"]
    admin(fake, "POST", "reset", {"scope": "all"})

    assert [c["endpoint"] for c in runs] == ["run"]
    assert admin(fake, "GET", "health").json()["jobs"] == 0
    assert admin(fake, "GET", "stats").json()["requests"] == 0


# --- server behaviour ---------------------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(fake: FakeHatz) -> None:
    connection = http.client.HTTPConnection(fake.root_url.removeprefix("http://"), timeout=5)
    try:
        statuses = []
        for _ in range(5):
            connection.request("GET", "/v1/app/list?limit=1", headers={"X-API-Key": API_KEY})
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
            sock = connection.sock
        assert statuses == [200] * 5
        assert connection.sock is sock  # never reconnected
    finally:
        connection.close()


def test_concurrent_pollers_are_all_served(api: requests.Session, fake: FakeHatz) -> None:
    job_id = submit(api, fake, TOPIC_BRIEF_ID, {"topic": "x"})
    statuses: list[int] = []
    lock = threading.Lock()

    def poller() -> None:
        with requests.Session() as session:
            session.headers["X-API-Key"] = API_KEY
            for _ in range(25):
                status = session.get(f"{fake.url}/workflows/{job_id}").status_code
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=poller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert statuses == [200] * 200
    assert fake.stats()["jobs"][job_id]["status_polls"] == 200


def test_restart_keeps_jobs_and_address(api: requests.Session, fake: FakeHatz) -> None:
    job_id = submit(api, fake, TOPIC_BRIEF_ID, {"topic": "x"})
    url = fake.url

    fake.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/workflows/{job_id}", headers={"X-API-Key": API_KEY}, timeout=5)
    fake.start()

    assert fake.url == url
    assert poll(api, fake, job_id)["job_id"] == job_id


def test_cli_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "worker.fake_hatz", "--port", "0", "--api-key", "cli-key"]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        try:
            line = process.stdout.readline()
            url = re.search(r"http://\S+/v1", line)
            assert url is not None, line
            listed = requests.get(
                f"{url.group(0)}/app/list", headers={"X-API-Key": "cli-key"}, timeout=5
            )
            assert len(listed.json()["data"]) == 4
        finally:
            process.send_signal(signal.SIGTERM)
            returncode = process.wait(timeout=10)
            process.stdout.read()

    assert returncode == 0


# --- definitions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: FakeApp(steps=[FakeStep()], fail_at_step=2),
        lambda: FakeApp(kind="chat"),  # type: ignore[arg-type]
        lambda: FakeApp(user_inputs=[FakeInput("a"), FakeInput("a")]),
        lambda: FaultConfig(error_rate=1.5),
        lambda: FaultConfig(endpoints={"runn"}),
        lambda: FaultConfig(endpoints="run"),
    ],
)
def test_invalid_definitions_are_rejected(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        make()


def test_app_from_json_matches_the_python_definition() -> None:
    data = json.loads(
        '{"id": "a", "steps": [{"output_type": "document"}], "faults": {"error_rate": 0.5}}'
    )

    app = FakeApp.from_dict(data)

    assert app.steps[0].is_document
    assert app.faults == FaultConfig(error_rate=0.5)
    assert app.steps[0].id == FakeApp(id="a").steps[0].id  # ids derive from the app id


# --- request parsing (the server's own header reading, worker.fake_hatz.headers) --------------


def address(fake: FakeHatz) -> tuple[str, int]:
    parts = urlsplit(fake.root_url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def raw_exchange(fake: FakeHatz, *requests_: bytes) -> tuple[bytes, bool]:
    """Send the raw requests on one connection; return all that came back and whether
    the server closed the connection afterwards (EOF before the 10 s deadline)."""
    with socket.create_connection(address(fake), timeout=10) as sock:
        for request in requests_:
            sock.sendall(request)
        received = b""
        sock.settimeout(0.5)
        closed = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if received.count(b"HTTP/1.") >= len(requests_):
                    break  # every answer is in and the connection stays open
                continue
            if not chunk:
                closed = True
                break
            received += chunk
    return received, closed


def get_models(version: bytes = b"HTTP/1.1", extra: bytes = b"") -> bytes:
    return (
        b"GET /v1/app/list HTTP/1.1\r\nHost: x\r\nX-API-Key: " + API_KEY.encode() + b"\r\n" + extra
    ).replace(b"HTTP/1.1", version, 1) + b"\r\n"


def test_keep_alive_serves_several_requests_on_one_connection(fake: FakeHatz) -> None:
    received, closed = raw_exchange(fake, get_models(), get_models())

    assert received.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert not closed


def test_http_1_0_and_connection_close_end_the_connection(fake: FakeHatz) -> None:
    for request in (get_models(b"HTTP/1.0"), get_models(extra=b"Connection: close\r\n")):
        received, closed = raw_exchange(fake, request)

        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
        assert closed


def test_http_1_0_with_keep_alive_keeps_the_connection(fake: FakeHatz) -> None:
    request = get_models(b"HTTP/1.0", b"Connection: keep-alive\r\n")
    received, closed = raw_exchange(fake, request, request)

    assert received.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert not closed


def test_headers_are_read_case_insensitively_and_folded_lines_join(fake: FakeHatz) -> None:
    request = (
        b"GET /v1/app/list HTTP/1.1\r\nhost: x\r\nx-api-key:\r\n " + API_KEY.encode() + b"\r\n\r\n"
    )
    received, _ = raw_exchange(fake, request)

    assert received.startswith(b"HTTP/1.1 401 ")  # the folded key is "\r\n test-key": wrong


def test_expect_100_continue_gets_an_interim_answer_before_the_body(fake: FakeHatz) -> None:
    body = b'{"app_id": "x", "inputs": {}}'
    head = (
        b"POST /v1/workflows/run HTTP/1.1\r\nHost: x\r\nX-API-Key: "
        + API_KEY.encode()
        + b"\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection(address(fake), timeout=10) as sock:
        sock.sendall(head)
        interim = sock.recv(65536)
        sock.sendall(body)
        final = sock.recv(65536)

    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
    assert final.startswith(b"HTTP/1.1 ")
    assert not final.startswith(b"HTTP/1.1 100")


def test_too_many_header_lines_is_431_and_closes(fake: FakeHatz) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(100))
    received, closed = raw_exchange(fake, get_models(extra=many))

    assert received.startswith(b"HTTP/1.1 431 ")
    assert closed


@pytest.mark.parametrize(
    ("line", "status"),
    [(b"GET /v1/app/list HTTP/2.0", b"505"), (b"GET /v1/app/list HTTP/1.x", b"400")],
)
# (http.server answers these in HTTP/0.9 style, an error page without a status line.)
def test_other_request_lines_are_answered_as_http_server_does(
    fake: FakeHatz, line: bytes, status: bytes
) -> None:
    received, closed = raw_exchange(fake, line + b"\r\nHost: x\r\n\r\n")

    assert b"Error code: " + status in received
    assert closed


def test_an_app_with_durations_runs_them_in_turn(
    fake: FakeHatz, api: requests.Session, clock: ManualClock
) -> None:
    fake.add_app(FakeApp(id="wf", duration=9.0, pending_seconds=0.0, durations=[1.0, 3.0]))

    jobs = [submit(api, fake, "wf", {}) for _ in range(3)]
    clock.advance(5.0)

    spans = [(lambda j: j["end_time"] - j["start_time"])(poll(api, fake, job)) for job in jobs]
    assert spans == [1000, 3000, 1000]
    with pytest.raises(ValueError, match="list of numbers"):
        FakeApp.from_dict({"durations": [1, "x"]})
